"""Paper reproduction in one resumable, time-budgeted sequence (ready for a GPU window; ``--smoke`` checks it on CPU).

    python benchmarks/reproduce.py --budget-min 9 --out runs/reproduce          # a GPU window (see gpu_check.sh)
    python benchmarks/reproduce.py --budget-min 9 --out runs/reproduce          # the next window: resumes
    python benchmarks/reproduce.py --smoke --out /tmp/repro-smoke               # whole sequence, tiny, CPU, minutes

Stages (each through glfuse's public Python APIs, in this order):

* ``throughput`` (d): img/s and peak GPU memory of HiFuse-Tiny (batch 32, 224²), VDPF (batch 24 slice pairs, 224²) and
  MACTFusion (batch 4 pairs, 256²) — the official training scripts' / papers' recipe settings — forward and training
  step, fp32 and bf16 autocast. Skipped with a stated reason without CUDA (``--smoke`` runs tiny models on the CPU
  only to exercise the code; those figures are not GPU figures).
* ``hifuse`` (a): HiFuse-Tiny (then Small, when Tiny is done and budget is left) trained from scratch on COVID-CT's
  official split with the full ``hifuse_covid_ct`` preset (100 epochs, 224²), evaluated on the test split: Acc, F1,
  Prec, Recall with 95 % bootstrap CIs beside the paper's Table 5 accuracy.
* ``vdpf`` (b): the LGG stand-in cache (``glfuse.staging.prepare``, a seeded case-level split), then ``vdpf``,
  ``vdpf_cat`` and the ResNet-50 lesion-crop baseline with the ``vdpf_lgg`` paper recipe; case-level test metrics with
  CIs (resampling cases).
* ``mactfusion`` (c): MACTFusion from scratch on Harvard CT–MRI with the ``mactfusion_ct_mri`` recipe, 2 epochs of up
  to 7,500 iterations (the official 15,000 at batch 4 / 30,000 samples per epoch) — iterations per epoch are cut to what
  the stage budget allows — then the fusion metrics on the 24 test pairs beside the official checkpoint's (recomputed
  here and the reference evaluator's values from ``golden/``).

Budget: ``--budget-min`` is this window's wall time. Each stage gets a share of what is left (unused time rolls over);
a training run runs in its own process and is stopped when its share is spent. Its ``last/`` checkpoint (the engine
writes it atomically after every epoch) lets the next invocation with the same ``--out`` resume it
(``train(..., resume=True)``); ``best/`` is evaluated after every window, so a partial run still gives numbers, marked
partial. ``state.json`` records per run: done / partial / failed / pending, epochs, metrics; ``summary.md`` and
``summary.json`` are rewritten at the end of every window. Data: ``--shared`` or ``$GLFUSE_SHARED`` or ``./shared`` or
``../shared`` (the ``data/`` and ``golden/`` folders).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("throughput", "hifuse", "vdpf", "mactfusion")
SHARE = {"throughput": 0.08, "hifuse": 0.37, "vdpf": 0.33, "mactfusion": 0.22}

# HiFuse paper Table 5, COVID-CT test accuracy (%), trained from scratch at 224² (spec data/README.md); the spec gives
# no F1/Prec/Recall for this table.
PAPER_HIFUSE_ACC = {"hifuse_tiny": 74.73, "hifuse_small": 76.88, "hifuse_base": 76.34}
# golden/fusion-metrics/golden_ctmri_harvard_means.csv column for each glfuse metric name
GOLDEN_COLUMNS = {"EN": "EN", "SD": "SD", "SF": "SF", "MI": "MI", "SCD": "SCD", "VIF": "VIF", "Qabf": "Qabf",
                  "MS_SSIM": "MSSSIM_tm_mean", "Qw": "Qw_piella_sw2"}
FUSION_METRICS = list(GOLDEN_COLUMNS)
MACT_RECIPE_ITERS = 15000  # official: 2 epochs x 7,500 iterations (30,000 samples / batch 4)
VDPF_RUNS = ("vdpf", "vdpf_cat", "resnet50")
TINY_HIFUSE = "model.args={dims: [16, 32, 64, 128], num_heads: [1, 2, 4, 8]}"
TINY_VDPF = "model.args={embed_dim: 32, depth: 1, num_heads: 2, cross_mlp_hidden: 32, fffn_hidden: 4}"


# ------------------------------------------------------------------------------------------------------------ helpers
def find_shared(arg: str | None) -> Path | None:
    """The shared folder (``data/``, ``golden/``): ``--shared``, ``$GLFUSE_SHARED``, ``REPO/shared``, ``REPO/../shared``."""
    cands = [arg, os.environ.get("GLFUSE_SHARED"), REPO / "shared", REPO.parent / "shared"]
    for c in cands:
        if c and (Path(c) / "data").is_dir():
            return Path(c).resolve()
    return None


def save_json(obj: Any, path: Path) -> None:
    from glfuse.checkpoint import save_json as _save

    _save(obj, path)


def bootstrap_ci(y: list[int], pred: list[int], n_classes: int, *, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap CIs of accuracy and macro precision / recall / F1 (classes present in targets or
    predictions, as :func:`glfuse.metrics.classification.classification_metrics`), resampling the given units."""
    import numpy as np

    y_a, p_a = np.asarray(y), np.asarray(pred)
    n = len(y_a)
    if n == 0:
        return {}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ys, ps = y_a[idx], p_a[idx]
    out = {"acc": (ys == ps).mean(1)}
    k = np.arange(n_classes)[None, :, None]
    tp = ((ys[:, None] == k) & (ps[:, None] == k)).sum(2).astype(float)
    sup = (ys[:, None] == k).sum(2).astype(float)
    prd = (ps[:, None] == k).sum(2).astype(float)
    prec = np.where(prd > 0, tp / np.maximum(prd, 1), 0.0)
    rec = np.where(sup > 0, tp / np.maximum(sup, 1), 0.0)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    present = (sup + prd) > 0
    for name, v in (("precision", prec), ("recall", rec), ("f1", f1)):
        out[name] = (v * present).sum(1) / present.sum(1)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {m: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for m, v in out.items()}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -------------------------------------------------------------------------------------------------------------- jobs
# Each job takes a JSON-able spec and returns a JSON-able result; it runs in its own process (``--worker``) unless
# ``--isolate no``. Imports of torch/glfuse live inside the jobs so the parent stays light.
def _threads(spec: dict[str, Any]) -> None:
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))


def job_classify_train(spec: dict[str, Any]) -> dict[str, Any]:
    from glfuse.classify.api import ClassifyConfig, train
    from glfuse.config import build_config

    _threads(spec)
    cfg = build_config(ClassifyConfig, "hifuse_covid_ct", spec["overrides"])
    return train(cfg, spec["run_dir"], resume=spec["resume"], overwrite=spec["overwrite"])


def job_classify_eval(spec: dict[str, Any]) -> dict[str, Any]:
    from glfuse.classify.api import evaluate

    _threads(spec)
    m = evaluate(spec["run_dir"], spec["out_dir"], split="test", batch_size=spec["batch_size"], device=spec["device"],
                 overwrite=True, progress=False, print_row=False, flops=False)
    rows = _read_csv(Path(spec["out_dir"]) / "predictions.csv")
    y, p = [int(r["target"]) for r in rows], [int(r["pred"]) for r in rows]
    point = {k: m[k] for k in ("acc", "f1", "precision", "recall", "auc", "n")}
    return {"metrics": point, "ci": bootstrap_ci(y, p, len(m["class_names"])), "unit": "image"}


def job_stage_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    from glfuse.staging.prepare import make_split, prepare

    cache = Path(spec["cache"])
    if not (cache / "cases.json").exists():
        prepare(spec["images"], spec["labels"], "grade_code", cache, size=spec["size"], cases=spec.get("cases"),
                progress=False, overwrite=True)
    split = cache / "split.json"
    if not split.exists():
        make_split(cache, split, val=0.15, test=0.2, seed=0)
    doc = json.loads(split.read_text())
    return {"cache": str(cache), "split": str(split), "n_train": len(doc["train"]), "n_val": len(doc["val"]),
            "n_test": len(doc["test"])}


def job_stage_train(spec: dict[str, Any]) -> dict[str, Any]:
    from glfuse.config import build_config
    from glfuse.staging.api import StageConfig, train

    _threads(spec)
    cfg = build_config(StageConfig, "vdpf_lgg", spec["overrides"])
    return train(cfg, spec["run_dir"], resume=spec["resume"], overwrite=spec["overwrite"], evaluate_test=False)


def job_stage_eval(spec: dict[str, Any]) -> dict[str, Any]:
    from glfuse.staging.api import evaluate

    _threads(spec)
    res = evaluate(spec["run_dir"], spec["cache"], spec["split"], spec["out_dir"], part="test", overwrite=True,
                   batch_size=spec["batch_size"], device=spec["device"], progress=False,
                   max_slices_per_case=spec.get("max_slices"))
    names = list(res["case"]["class_names"])
    rows = _read_csv(Path(spec["out_dir"]) / "case_predictions.csv")
    y, p = [names.index(r["label"]) for r in rows], [names.index(r["pred"]) for r in rows]
    point = {k: res["case"][k] for k in ("acc", "f1", "precision", "recall", "auc", "n")}
    point["slice_acc"], point["n_slices"] = res["slice"]["acc"], res["slice"]["n"]
    return {"metrics": point, "ci": bootstrap_ci(y, p, len(names)), "unit": "case"}


def job_fusion_train(spec: dict[str, Any]) -> dict[str, Any]:
    from glfuse.config import build_config
    from glfuse.fusion.train import FusionConfig, train

    _threads(spec)
    cfg = build_config(FusionConfig, "mactfusion_ct_mri", spec["overrides"])
    return train(cfg, spec["run_dir"], resume=spec["resume"], overwrite=spec["overwrite"])


def job_fusion_eval(spec: dict[str, Any]) -> dict[str, Any]:
    """Fusion metrics of the scratch model (and the official checkpoint, converted once) on the test pairs."""
    import shutil

    from glfuse.checkpoint import save_model
    from glfuse.fusion.compare import compare_methods
    from glfuse.registry import load_official

    _threads(spec)
    methods = [("scratch", str(Path(spec["run_dir"]) / "best"))]
    official = spec.get("official_pth")
    if official:
        odir = Path(spec["official_dir"])
        if not (odir / "config.json").exists():
            save_model(load_official("mactfusion", official), odir)
        methods.append(("official", str(odir)))
    out = Path(spec["out_dir"])
    shutil.rmtree(out, ignore_errors=True)  # the scratch model changes between windows: fuse again
    res = compare_methods(spec["a_dir"], spec["b_dir"], methods, out, metrics=FUSION_METRICS, progress=False,
                          grid_pairs=2)
    return {label: {"n": r["n"], "mean": r["mean"], "std": r["std"]} for label, r in res["results"].items()}


def _throughput_case(model, inputs, target, loss_fn, mode: str, dtype: str, device, warmup: int, iters: int):
    import torch

    use_amp = dtype == "bf16"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5) if mode == "train" else None
    model.train(mode == "train")

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            if mode == "forward":
                with torch.no_grad():
                    model(*inputs)
                return
            loss = loss_fn(model(*inputs), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def job_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """One model: forward and training step, fp32 and bf16 autocast; img/s and peak memory per case."""
    import resource

    import torch

    import glfuse
    from glfuse.fusion.losses import build_fusion_loss

    _threads(spec)
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    name, b, s = spec["model"], spec["batch"], spec["size"]
    model = glfuse.create_model(name, **spec["args"]).to(device)
    if device.type == "cuda" and getattr(model, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    if name.startswith("mactfusion"):
        if hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(spec.get("grad_checkpointing", True))
        inputs = (torch.rand(b, 1, s, s, device=device), torch.rand(b, 1, s, s, device=device))
        fusion_loss = build_fusion_loss("official")

        def loss_fn(out, _t):
            res = fusion_loss(out, *inputs)
            return res[0] if isinstance(res, tuple) else res
        target = None
    else:
        chans = 1 if name.startswith("vdpf") else 3
        inputs = (torch.randn(b, chans, s, s, device=device),)
        if name.startswith("vdpf"):
            inputs += ((torch.rand(b, 1, s, s, device=device) > 0.5).float(),)
        target = torch.randint(0, 2, (b,), device=device)
        loss_fn = torch.nn.functional.cross_entropy
    rows = []
    for mode in ("forward", "train"):
        for dtype in ("fp32", "bf16"):
            row = {"model": name, "batch": b, "size": s, "mode": mode, "dtype": dtype}
            try:
                dt = _throughput_case(model, inputs, target, loss_fn, mode, dtype, device, spec["warmup"], spec["iters"])
                row.update(img_s=b * spec["iters"] / dt, s_step=dt / spec["iters"])
                if device.type == "cuda":
                    row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                else:
                    row["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                    row["note"] = "CPU process peak RSS (smoke; not a GPU figure)"
            except Exception as e:  # noqa: BLE001 - one row per case; an OOM or a failing path is a result too
                row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
    return {"rows": rows, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


JOBS = {f.__name__[4:]: f for f in (job_classify_train, job_classify_eval, job_stage_prepare, job_stage_train,
                                    job_stage_eval, job_fusion_train, job_fusion_eval, job_throughput)}


def worker_main(kind: str, spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    res = JOBS[kind](spec)
    save_json(res, Path(result_path))
    return 0


# ------------------------------------------------------------------------------------------------------------ runner
class Runner:
    """Budget, state and job execution for one window."""

    def __init__(self, args: argparse.Namespace, out: Path, shared: Path | None) -> None:
        self.args, self.out, self.shared = args, out, shared
        self.t0 = time.monotonic()
        self.deadline = self.t0 + 60 * args.budget_min
        self.state_path = out / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"runs": {}, "stages": {}}
        if self.state.get("smoke", args.smoke) != args.smoke:
            raise SystemExit(f"{out}: holds a {'smoke' if self.state['smoke'] else 'full'} reproduction; "
                             "use another --out")
        self.state["smoke"] = args.smoke
        self.isolate = args.isolate == "yes" or (args.isolate == "auto" and not args.smoke)
        self.current: subprocess.Popen | None = None  # the job process running now (stopped with us on SIGTERM)
        self.workers = args.workers if args.workers is not None else (0 if args.smoke else min(8, os.cpu_count() or 1))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        save_json(self.state, self.state_path)

    def run(self, kind: str, name: str, spec: dict[str, Any], timeout: float | None) -> tuple[str, Any]:
        """``("done", result)``, ``("timeout", None)`` or ``("failed", message)``."""
        spec = {**spec, "threads": self.args.threads}
        if not self.isolate:
            import torch

            threads = torch.get_num_threads()
            try:
                return "done", JOBS[kind](spec)
            except Exception as e:  # noqa: BLE001 - recorded in the state and the summary
                return "failed", f"{type(e).__name__}: {e}"
            finally:
                torch.set_num_threads(threads)
        jobs = self.out / "jobs"
        jobs.mkdir(parents=True, exist_ok=True)
        name = name.replace("/", "_")
        spec_p, res_p, log_p = jobs / f"{name}.json", jobs / f"{name}.result.json", jobs / f"{name}.log"
        res_p.unlink(missing_ok=True)
        save_json(spec, spec_p)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        with open(log_p, "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {kind} timeout={timeout} "
                      f"resume={spec.get('resume')} overwrite={spec.get('overwrite')}\n")
            log.flush()
            p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(spec_p),
                                  str(res_p)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.current = p
            try:
                rc = p.wait(timeout=None if timeout is None else max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                _stop(p)
                return "timeout", None
            finally:
                self.current = None
        if rc != 0 or not res_p.exists():
            tail = log_p.read_text().strip().splitlines()[-1:] or ["(no output)"]
            return "failed", f"exit {rc}: {tail[0]} (log: {log_p})"
        return "done", json.loads(res_p.read_text())


def _stop(p: subprocess.Popen) -> None:
    """SIGTERM the job's own process group (it and its data-loader workers), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _epochs_done(run_dir: Path) -> int:
    p = run_dir / "log.json"
    return len(json.loads(p.read_text())) if p.exists() else 0


def train_and_eval(r: Runner, key: str, train_job: tuple[str, dict], eval_job: tuple[str, dict], budget_s: float,
                   epochs_total: int) -> dict[str, Any]:
    """One training run (fresh, or resumed from ``last/``) stopped at ``budget_s``, then its ``best/`` evaluated."""
    rec = r.state["runs"].setdefault(key, {"status": "pending"})
    rec["epochs_total"] = epochs_total
    run_dir = Path(train_job[1]["run_dir"])
    if rec["status"] == "done" and key not in r.args.redo:
        return rec
    if key in r.args.redo and rec["status"] == "done":
        rec.update(status="pending", trained=False)
    reserve = 0 if r.args.smoke else r.args.eval_reserve
    if not rec.get("trained"):
        resume = (run_dir / "last" / "training_state.pt").exists() and key not in r.args.redo
        if not resume and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # stopped before it wrote anything: not a run the APIs would agree to overwrite
        if budget_s - reserve < (0 if r.args.smoke else 30):
            rec.setdefault("reason", "no budget left in this window; rerun to start it")
            return rec
        spec = {**train_job[1], "resume": resume, "overwrite": not resume}
        t = time.monotonic()
        status, res = r.run(train_job[0], key + ".train", spec, None if not r.isolate else budget_s - reserve)
        rec["train_s"] = rec.get("train_s", 0.0) + time.monotonic() - t
        rec["epochs_done"], rec["epochs_total"] = _epochs_done(run_dir), epochs_total
        if status == "done":
            rec.update(trained=True, summary={k: v for k, v in res.items() if k != "last"}, reason=None)
        elif status == "timeout":
            rec["reason"] = (f"stopped at this window's budget after {rec['epochs_done']}/{epochs_total} epochs; "
                             "rerun with the same --out to resume")
        else:
            rec.update(status="failed", reason=res)
            return rec
    if not (run_dir / "best" / "config.json").exists():
        rec["status"] = "partial" if not rec.get("trained") else "failed"
        rec.setdefault("reason", "no completed epoch yet")
        return rec
    grace = 60 if r.state.get("cuda") else 180  # evaluation may overrun the window by this much
    status, res = r.run(eval_job[0], key + ".eval", eval_job[1], None if not r.isolate else max(r.left(), grace))
    if status != "done":
        rec.update(status="failed", reason=f"evaluation: {res or 'timed out'}")
        return rec
    rec["eval"] = res
    rec["status"] = "done" if rec.get("trained") else "partial"
    return rec


# ------------------------------------------------------------------------------------------------------------ stages
def _device(r: Runner) -> str:
    return r.args.device


def stage_hifuse(r: Runner, budget_s: float) -> dict[str, Any]:
    data = r.shared / "data" / "covid-ct"
    end = time.monotonic() + budget_s
    models = ["hifuse_tiny"] + ([] if r.args.smoke else ["hifuse_small"])
    for name in models:
        if name != "hifuse_tiny" and r.state["runs"].get("hifuse/hifuse_tiny", {}).get("status") != "done":
            r.state["runs"].setdefault(f"hifuse/{name}", {"status": "pending",
                                                          "reason": "waits until HiFuse-Tiny is done"})
            continue
        run_dir = r.out / "hifuse" / name
        ov = [f"data.root={data}", f"model.name={name}", f"train.num_workers={r.workers}", "train.progress=false",
              f"train.device={_device(r)}"]
        if r.args.smoke:
            ov += [f"data.split_dir={_covid_subset(r, data)}", TINY_HIFUSE, "data.img_size=64", "train.epochs=1",
                   "train.batch_size=8", "train.max_steps_per_epoch=2"]
        epochs = 1 if r.args.smoke else 100
        ev = {"run_dir": str(run_dir), "out_dir": str(run_dir / "test"), "batch_size": 64, "device": _device(r)}
        train_and_eval(r, f"hifuse/{name}", ("classify_train", {"run_dir": str(run_dir), "overrides": ov}),
                       ("classify_eval", ev), end - time.monotonic(), epochs)
        r.save()
    return {"status": "ran"}


def _covid_subset(r: Runner, data: Path, per_file: int = 8) -> Path:
    """Smoke: a copy of COVID-CT's split files keeping the first ``per_file`` names of each (short epochs and tests)."""
    out = r.out / "covid_split_smoke"
    for f in sorted((data / "Data-split").glob("*/*.txt")):
        dst = out / f.parent.name / f.name
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text("\n".join([x for x in f.read_text().splitlines() if x.strip()][:per_file]) + "\n")
    return out


def _lgg_cases(r: Runner) -> list[str] | None:
    if not r.args.smoke:
        return None
    rows = [x for x in _read_csv(r.shared / "data" / "lgg-mri" / "cases.csv") if x["grade_code"] in ("1", "2")]
    by = {g: [x["case_id"] for x in rows if x["grade_code"] == g] for g in ("1", "2")}
    return by["1"][:5] + by["2"][:5]


def stage_vdpf(r: Runner, budget_s: float) -> dict[str, Any]:
    end = time.monotonic() + budget_s
    size = 32 if r.args.smoke else 224
    lgg = r.shared / "data" / "lgg-mri"
    prep = {"images": str(lgg), "labels": str(lgg / "cases.csv"), "cache": str(r.out / "cache" / f"lgg{size}"),
            "size": size, "cases": _lgg_cases(r)}
    status, info = r.run("stage_prepare", "lgg.prepare", prep, None if not r.isolate else max(budget_s, 300))
    if status != "done":
        return {"status": "failed", "reason": f"cache: {info or 'timed out'}"}
    r.state["stages"]["vdpf_data"] = info
    pending = [m for m in VDPF_RUNS if r.state["runs"].get(f"vdpf/{m}", {}).get("status") != "done"]
    for name in VDPF_RUNS:
        run_dir = r.out / "vdpf" / name
        ov = [f"data.cache={info['cache']}", f"data.split={info['split']}", f"model.name={name}",
              f"train.num_workers={r.workers}", "train.progress=false", f"train.device={_device(r)}"]
        if r.args.smoke:
            ov += ([TINY_VDPF] if name.startswith("vdpf") else []) + [
                "train.epochs=1", "train.batch_size=4", "train.accum_steps=1", "train.max_steps_per_epoch=2",
                "data.max_slices_per_case=2", "data.eval_max_slices_per_case=2"]
        share = (end - time.monotonic()) / max(1, len(pending))
        if name in pending:
            pending.remove(name)
        ev = {"run_dir": str(run_dir), "cache": info["cache"], "split": info["split"], "out_dir": str(run_dir / "test"),
              "batch_size": 24, "device": _device(r), "max_slices": 2 if r.args.smoke else None}
        train_and_eval(r, f"vdpf/{name}", ("stage_train", {"run_dir": str(run_dir), "overrides": ov}),
                       ("stage_eval", ev), share, 1 if r.args.smoke else 100)
        r.save()
    return {"status": "ran"}


def _mact_step_s(r: Runner) -> float:
    """Seconds per training iteration (batch 4, 256²): measured in the throughput stage when it ran, else a guess."""
    for row in r.state["stages"].get("throughput", {}).get("rows", []):
        if row["model"] == "mactfusion" and row["mode"] == "train" and "s_step" in row and row["size"] == 256:
            if row["dtype"] == ("bf16" if r.state.get("cuda") else "fp32"):
                return float(row["s_step"])
    return 0.25 if r.state.get("cuda") else 45.0  # H200 guess / README's CPU figure (41.8 s)


def _test_pairs(r: Runner) -> tuple[Path, Path]:
    test = r.shared / "data" / "havard-fusion" / "CT-MRI" / "test"
    if not r.args.smoke:
        return test / "MRI", test / "CT"
    sub = r.out / "mactfusion" / "test_subset"  # two pairs keep the smoke run short
    for mod in ("MRI", "CT"):
        (sub / mod).mkdir(parents=True, exist_ok=True)
        for p in sorted((test / mod).glob("*.png"))[:2]:
            if not (sub / mod / p.name).exists():
                (sub / mod / p.name).symlink_to(p)
    return sub / "MRI", sub / "CT"


def stage_mactfusion(r: Runner, budget_s: float) -> dict[str, Any]:
    key = "mactfusion/scratch"
    run_dir = r.out / "mactfusion" / "scratch"
    rec = r.state["runs"].setdefault(key, {"status": "pending"})
    ov = [f"data.root={r.shared / 'data' / 'havard-fusion' / 'CT-MRI'}", "train.progress=false",
          f"train.device={_device(r)}", "train.epochs=2"]
    if r.args.smoke:
        iters = 1
        ov += ["data.crop=16", "data.val_crop=64", "data.val_fraction=0.02", "train.batch_size=1",
               "data.samples_per_epoch=1", "metrics=[EN, SD, SF, Qabf]", "model.grad_checkpointing=false"]
    else:
        fits = int(max(1, min(7500, (budget_s - r.args.eval_reserve - 60) / (2 * _mact_step_s(r)) * 0.85)))
        if rec.get("status") == "done" and fits >= 2 * rec.get("iters_per_epoch", 7500):
            r.args.redo.append(key)  # an earlier, shorter window finished a short run: this one affords 2x more
            rec["reason"] = f"restarted with {fits} iterations per epoch (was {rec['iters_per_epoch']})"
        started = (run_dir / "config.yaml").exists() and key not in r.args.redo
        iters = (started and rec.get("iters_per_epoch")) or fits  # fixed once started: it cannot change on resume
        ov += ["data.samples_per_epoch=30000", f"train.max_steps_per_epoch={iters}"]
    rec["iters_per_epoch"] = iters
    rec["recipe_iters"] = MACT_RECIPE_ITERS
    a_dir, b_dir = _test_pairs(r)
    golden = r.shared / "golden" / "mactfusion" / "mactfusion_ct_mri_official.pth"
    ev = {"run_dir": str(run_dir), "out_dir": str(r.out / "mactfusion" / "test"), "a_dir": str(a_dir),
          "b_dir": str(b_dir), "official_pth": str(golden) if golden.exists() else None,
          "official_dir": str(r.out / "mactfusion" / "official_model")}
    train_and_eval(r, key, ("fusion_train", {"run_dir": str(run_dir), "overrides": ov}), ("fusion_eval", ev),
                   budget_s, 2)
    r.save()
    return {"status": "ran"}


def stage_throughput(r: Runner, budget_s: float) -> dict[str, Any]:
    if not r.state.get("cuda") and not r.args.smoke:
        return {"status": "skipped", "reason": "no CUDA device: GPU throughput needs a GPU (CPU figures: benchmarks/"
                                               "bench_*.py)"}
    if r.args.smoke:
        cases = [("hifuse_tiny", {"num_classes": 2, "dims": (16, 32, 64, 128), "num_heads": (1, 2, 4, 8)}, 2, 64),
                 ("vdpf", {"num_classes": 2, "img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2,
                           "cross_mlp_hidden": 32, "fffn_hidden": 4}, 2, 32),
                 ("mactfusion", {}, 1, 16)]
        warmup, iters, device = 0, 1, "cpu"
    else:
        cases = [("hifuse_tiny", {"num_classes": 2}, 32, 224), ("vdpf", {"num_classes": 2}, 24, 224),
                 ("mactfusion", {}, 4, 256)]
        warmup, iters, device = 3, 10, "cuda"
    rows: list[dict[str, Any]] = []
    end = time.monotonic() + budget_s
    for name, args, b, s in cases:
        spec = {"model": name, "args": args, "batch": b, "size": s, "device": device, "warmup": warmup, "iters": iters,
                "grad_checkpointing": not r.args.smoke}  # the training preset's setting (off: smoke speed)
        status, res = r.run("throughput", f"throughput.{name}", spec,
                            None if not r.isolate else max(end - time.monotonic(), 60))
        if status == "done":
            rows += res["rows"]
            r.state["device_name"] = res["device_name"]
        else:
            rows.append({"model": name, "batch": b, "size": s, "error": str(res or "timed out")})
    return {"status": "done", "rows": rows, "smoke_cpu": device == "cpu"}


STAGE_FN = {"throughput": stage_throughput, "hifuse": stage_hifuse, "vdpf": stage_vdpf, "mactfusion": stage_mactfusion}


# ----------------------------------------------------------------------------------------------------------- summary
def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _with_ci(m: dict, ci: dict, k: str) -> str:
    if k not in m:
        return "–"
    lo_hi = ci.get(k)
    return _pct(m[k]) + (f" [{_pct(lo_hi[0])}–{_pct(lo_hi[1])}]" if lo_hi else "")


def _run_line(key: str, rec: dict) -> str:
    ep = f"{rec.get('epochs_done', 0)}/{rec.get('epochs_total', '?')}"
    return f"{ep} ({rec['status']})"


def _classification_table(state: dict, prefix: str, paper: dict[str, float] | None) -> list[str]:
    head = ["model", "epochs", "Acc (%)", "F1 (%)", "Prec (%)", "Recall (%)", "n"]
    if paper is not None:
        head.append("paper Acc (%)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, rec in state["runs"].items():
        if not key.startswith(prefix):
            continue
        name = key.split("/", 1)[1]
        m, ci = (rec.get("eval") or {}).get("metrics", {}), (rec.get("eval") or {}).get("ci", {})
        row = [name, _run_line(key, rec)] + [_with_ci(m, ci, k) for k in ("acc", "f1", "precision", "recall")]
        row.append(str(m.get("n", "–")))
        if paper is not None:
            row.append(f"{paper[name]:.2f}" if name in paper else "–")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _fusion_table(r: Runner) -> list[str]:
    rec = r.state["runs"].get("mactfusion/scratch", {})
    ev = rec.get("eval") or {}
    head = ["method", *FUSION_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    done = rec.get("epochs_done", 0) * rec.get("iters_per_epoch", 0)
    labels = {"scratch": f"glfuse from scratch ({done}/{MACT_RECIPE_ITERS} it., {rec.get('status')})",
              "official": "official checkpoint (recomputed here)"}
    for label, res in ev.items():
        lines.append("| " + " | ".join([labels.get(label, label)] + [f"{res['mean'].get(k, float('nan')):.4g}"
                                                                      for k in FUSION_METRICS]) + " |")
    means = r.shared / "golden" / "fusion-metrics" / "golden_ctmri_harvard_means.csv" if r.shared else None
    if means and means.exists():
        g = _read_csv(means)[0]
        lines.append("| official checkpoint (reference evaluator, golden, 24 pairs) | "
                     + " | ".join(f"{float(g[GOLDEN_COLUMNS[k]]):.4g}" for k in FUSION_METRICS) + " |")
    return lines


def _throughput_table(st: dict) -> list[str]:
    if st.get("status") != "done":
        return [f"Not run: {st.get('reason', 'stage not reached')}."]
    lines = ["| model | batch × size | mode | dtype | img/s | s/step | peak memory (GiB) |", "|---|---|---|---|---|---|---|"]
    for x in st["rows"]:
        if "error" in x:
            lines.append(f"| {x['model']} | {x.get('batch')} × {x.get('size')}² | {x.get('mode', '–')} | "
                         f"{x.get('dtype', '–')} | {x['error']} | | |")
            continue
        lines.append(f"| {x['model']} | {x['batch']} × {x['size']}² | {x['mode']} | {x['dtype']} | {x['img_s']:.2f} | "
                     f"{x['s_step']:.3f} | {x['peak_gib']:.2f} |")
    if st.get("smoke_cpu"):
        lines.append("\nSmoke: tiny models on the CPU (peak = process RSS); not GPU figures.")
    return lines


def write_summary(r: Runner) -> str:
    st = r.state
    win = st["windows"][-1]
    md = ["# glfuse paper reproduction" + (" — SMOKE (tiny sizes, CPU; not reproduction numbers)" if r.args.smoke else ""),
          "", f"- windows so far: {len(st['windows'])}; this one: {win['started']} UTC, budget {win['budget_min']} min, "
          f"device {st.get('device_name') or win['device']}, torch {win['torch']}",
          f"- data: `{r.shared}`", ""]
    md += ["## (a) HiFuse on COVID-CT (official split, test set; 95 % bootstrap CI over images)", ""]
    md += _classification_table(st, "hifuse/", PAPER_HIFUSE_ACC)
    md += ["", "Paper: HiFuse Table 5 (accuracy only in the spec).", ""]
    data = st["stages"].get("vdpf_data", {})
    md += [f"## (b) VDPF on the LGG stand-in (case level, test {data.get('n_test', '?')} cases; 95 % bootstrap CI "
           "over cases)", ""]
    md += _classification_table(st, "vdpf/", None)
    md += ["", "No paper row: the paper's DVT data is private; LGG grade is a stand-in task.", ""]
    md += ["## (c) MACTFusion on Harvard CT–MRI (test pairs, mean)", ""] + _fusion_table(r) + [""]
    md += ["## (d) GPU throughput (official recipe settings)", ""] + _throughput_table(st["stages"].get("throughput", {}))
    notes = [f"- `{k}`: {v['status']} — {v['reason']}" for k, v in st["runs"].items() if v.get("reason")]
    notes += [f"- stage `{k}`: {v['status']} — {v['reason']}" for k, v in st["stages"].items()
              if isinstance(v, dict) and v.get("reason")]
    if notes:
        md += ["", "## Not done / partial", "", *notes]
    text = "\n".join(md) + "\n"
    from glfuse.checkpoint import atomic_write

    atomic_write(r.out / "summary.md", lambda tmp: Path(tmp).write_text(text))
    save_json({"state": st, "paper_hifuse_acc": PAPER_HIFUSE_ACC}, r.out / "summary.json")
    return text


# -------------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "runs" / "reproduce"), help="output folder (state, runs, summary)")
    p.add_argument("--budget-min", type=float, default=None, help="this window's wall-clock budget in minutes "
                   "(default 9; --smoke: 15)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the whole sequence in minutes")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list, in run order (default {','.join(STAGES)})")
    p.add_argument("--shared", default=None, help="folder with data/ and golden/ (default $GLFUSE_SHARED, ./shared, "
                   "../shared)")
    p.add_argument("--device", default="auto", help="train/eval device: auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default min(8, CPUs); smoke 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in the jobs (default: torch's; smoke 1)")
    p.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                   help="run each job in its own process, stopped at its budget (auto: yes unless --smoke)")
    p.add_argument("--eval-reserve", type=float, default=45.0, help="seconds kept for evaluating after each training run")
    p.add_argument("--summary-only", action="store_true", help="rewrite summary.md/json from state.json; run nothing")
    p.add_argument("--redo", default="", help="comma list of run keys to restart from scratch (e.g. mactfusion/scratch)")
    a = p.parse_args(argv)
    a.budget_min = a.budget_min if a.budget_min is not None else (15.0 if a.smoke else 9.0)
    a.redo = [x for x in a.redo.split(",") if x]
    if a.smoke and a.device == "auto":
        a.device = "cpu"
    if a.smoke and a.threads is None:
        a.threads = 1  # tiny tensors: one thread is fastest, and on a busy machine OpenMP's spin-waits cost ~40x
    return a


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        return worker_main(*argv[1:4])
    args = parse_args(argv)
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    import torch

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared = find_shared(args.shared)
    r = Runner(args, out, shared)
    if args.summary_only:
        if not r.state.get("windows"):
            raise SystemExit(f"{out}: no state.json from an earlier run")
        print(write_summary(r), flush=True)
        return 0
    def on_term(signum: int, _frame: Any) -> None:  # stopped from outside (e.g. `timeout`): stop our job, keep state
        if r.current is not None:
            _stop(r.current)
        r.save()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    r.state["cuda"] = cuda
    r.state.setdefault("windows", []).append({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                                              "budget_min": args.budget_min, "device": "cuda" if cuda else "cpu",
                                              "torch": torch.__version__})
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"--stages: unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    for i, name in enumerate(stages):
        if shared is None and name != "throughput":
            r.state["stages"][name] = {"status": "skipped", "reason": "shared data folder not found (--shared)"}
            continue
        prev = r.state["stages"].get(name, {})
        if name == "throughput" and prev.get("status") == "done" and not prev.get("smoke_cpu") \
                and "throughput" not in args.redo:
            continue  # measured in an earlier window: leave the time to training (--redo throughput measures again)
        rest = sum(SHARE[s] for s in stages[i:])
        budget = max(0.0, r.left()) * SHARE[name] / rest
        print(f"[reproduce] stage {name}: {budget / 60:.1f} min of {max(0.0, r.left()) / 60:.1f} left", flush=True)
        t = time.monotonic()
        res = STAGE_FN[name](r, budget)
        res["wall_s"] = round(time.monotonic() - t, 1)
        if name == "throughput" and prev.get("status") == "done" and res.get("status") != "done":
            res = prev  # keep an earlier window's GPU figures
        r.state["stages"][name] = res
        r.save()
    r.state["windows"][-1]["wall_s"] = round(time.monotonic() - r.t0, 1)
    r.save()
    print(write_summary(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
