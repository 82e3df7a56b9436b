"""``glfuse classify compare``: the HiFuse paper's comparison table (its Table 5 shape) over registered models.

Every model is trained with the same config (``model.args`` only for the config's own model), evaluated on the same
split, and gets one row: Acc / F1 / Prec / Recall (%) with bootstrap 95 % CIs, params (M), GFLOPs at the input size
used, training throughput (mean images/s over the logged epochs) and inference throughput (images/s, eval mode, no
grad, batch ``eval batch size``, after one warm-up batch). Writes ``classify_compare.csv``, ``classify_compare.md``
and ``report.html``; each model's run is ``OUT/<model>/`` (with ``eval/``). The caption states the recipe, so a
CPU-shortened run (fewer epochs, smaller input, capped steps) is never mistaken for the paper's.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["compare_models", "inference_throughput"]

_COLS = (("acc", "Acc (%)"), ("f1", "F1 (%)"), ("precision", "Prec (%)"), ("recall", "Recall (%)"))


def inference_throughput(model: torch.nn.Module, in_chans: int, size: int, batch: int = 16, reps: int = 3) -> float:
    """Images per second of ``model`` in eval mode on random inputs (one warm-up batch, then ``reps`` batches)."""
    dev = next(model.parameters()).device
    x = torch.randn(batch, in_chans, size, size, device=dev)
    was = model.training
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        dt = time.perf_counter() - t0
    model.train(was)
    return batch * reps / max(dt, 1e-9)


def _recipe(cfg: Any) -> str:
    t, d = cfg.train, cfg.data
    steps = f", at most {t.max_steps_per_epoch} steps/epoch" if t.max_steps_per_epoch else ""
    return (f"{t.epochs} epoch(s){steps}, batch {t.batch_size}, lr {t.lr:g}, input {d.img_size}², "
            f"best checkpoint by validation {t.monitor}, seed {t.seed}")


def _row(name: str, ev: dict[str, Any], run: Path, cfg: Any) -> dict[str, Any]:
    import json

    from glfuse.classify.api import load_classifier

    log = json.loads((run / "log.json").read_text()) if (run / "log.json").is_file() else []
    tps = [r["train_samples_per_s"] for r in log if r.get("train_samples_per_s")]
    model, _, _ = load_classifier(run, "cpu")
    row: dict[str, Any] = {"model": name}
    for k, _ in _COLS:
        ci = ev.get("ci", {}).get(k, {})
        row.update({k: ev.get(k), f"{k}_low": ci.get("low"), f"{k}_high": ci.get("high")})
    row.update({"auc": ev.get("auc"), "balanced_acc": ev.get("balanced_acc"), "params_M": ev["params"] / 1e6,
                "gflops": ev.get("gflops"), "train_img_s": sum(tps) / len(tps) if tps else None,
                "infer_img_s": inference_throughput(model, cfg.data.in_chans, cfg.data.img_size,
                                                    cfg.train.eval_batch_size or cfg.train.batch_size)})
    return row


def _markdown(rows: list[dict[str, Any]], cfg: Any, where: str) -> str:
    def pct(r: dict[str, Any], k: str) -> str:
        if r.get(k) is None:
            return "–"
        ci = "" if r.get(f"{k}_low") is None else f" [{100 * r[f'{k}_low']:.1f}, {100 * r[f'{k}_high']:.1f}]"
        return f"{100 * r[k]:.2f}{ci}"

    def num(v: Any, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    hdr = ["Method", *[c for _, c in _COLS], "Params (M)", "FLOPs (G)", "Train (img/s)", "Inference (img/s)"]
    lines = [f"# Model comparison on {where}", "",
             f"Recipe (all models): {_recipe(cfg)}. Values: test split, % with bootstrap 95 % CIs (1000 resamples of "
             "images); FLOPs at the input size used; throughput on this machine.", "",
             "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], *[pct(r, k) for k, _ in _COLS], num(r["params_M"], ".2f"),
                                         num(r["gflops"], ".3f"), num(r["train_img_s"], ".1f"),
                                         num(r["infer_img_s"], ".1f")]) + " |")
    return "\n".join(lines) + "\n"


def compare_models(models: list[str], cfg: Any, out_dir: str | Path, *, overwrite: bool = False, reuse: bool = False,
                   n_boot: int = 1000, progress: bool = True) -> list[dict[str, Any]]:
    """Train + evaluate every model in ``models`` with ``cfg`` (a ``ClassifyConfig``); returns the table rows.

    Args:
        models: registered model names (``glfuse models``).
        reuse: keep a model whose ``OUT/<model>/best`` exists instead of training it again.
        overwrite: replace existing runs and tables.
    """
    import csv

    from glfuse.checkpoint import atomic_write
    from glfuse.classify.api import evaluate, train

    out = Path(out_dir)
    if not models:
        raise ValueError("classify compare: no models given")
    if (out / "classify_compare.csv").exists() and not (overwrite or reuse):
        raise FileExistsError(f"{out / 'classify_compare.csv'} exists; pass --overwrite or --reuse")
    rows = []
    for name in models:
        c = copy.deepcopy(cfg)
        c.model.name = name
        c.model.args = dict(cfg.model.args) if name == cfg.model.name else {}
        run = out / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        if not (reuse and (run / "best" / "config.json").is_file()):
            train(c, run, overwrite=overwrite or reuse)
        ev = evaluate(run, run / "eval", split="test", overwrite=True, cams=0, n_boot=n_boot, print_row=False,
                      progress=progress)
        rows.append(_row(name, ev, run, c))
    where = f"{cfg.data.root} [{cfg.data.test}]"
    keys = list(rows[0])

    def w(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=keys)
            wr.writeheader()
            wr.writerows(rows)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "classify_compare.csv", w)
    md = _markdown(rows, cfg, where)
    atomic_write(out / "classify_compare.md", lambda tmp: Path(tmp).write_text(md))
    from glfuse.reports import build_report

    build_report(out)
    return rows
