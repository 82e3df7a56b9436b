"""A/B forward-pass timing of two glfuse source trees, interleaved in one session (e.g. before/after a refactor).

    mkdir -p /tmp/base && git archive 97d1994 src | tar -x -C /tmp/base
    python benchmarks/ab_compare.py --a /tmp/base/src --b src [--rounds 4] [--models hifuse vdpf mactfusion]

Each measurement runs in a fresh subprocess with ``PYTHONPATH`` set to one tree, and the trees alternate (round r runs
A then B for even r, B then A for odd r) so that slow phases of the shared machine hit both alike. A worker builds the
model (seed 0), prepares it for inference the way that tree's inference code does (``glfuse.models.prepare_inference(
model, "fast")`` where it exists, otherwise ``eval()``: the older trees switched their fast path on by themselves under
``no_grad``), runs one warm-up and ``--iters`` timed forward passes under ``torch.inference_mode()``, and times a fixed
float32 GEMM (``_vmprobe.py``) right before and after. Reported per tree and model: the median (and min–max) seconds
per forward pass over all rounds, and the model's FLOP rate (FLOPs counted by ``FlopCounterMode`` on the plain-op
path; FFTs are not counted) as a fraction of the GEMM rate measured in the same worker, which takes out much of the
machine's drift.

Workloads (defaults): HiFuse-Tiny batch 8 at 224², VDPF (ViT-B/16) batch 4 at 224², MACTFusion one 256² pair.
Results: a table on stdout and JSON in ``benchmarks/results/ab_compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
WORKLOADS = {
    "hifuse": ("hifuse_tiny", 8, 224),
    "vdpf": ("vdpf", 4, 224),
    "mactfusion": ("mactfusion", 1, 256),
}


def _inputs(model: str, batch: int, size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    if model == "hifuse":
        return (torch.randn(batch, 3, size, size, generator=g),)
    if model == "vdpf":
        mask = torch.zeros(batch, 1, size, size)
        mask[:, :, size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
        return torch.rand(batch, 1, size, size, generator=g), mask
    return torch.rand(batch, 1, size, size, generator=g), torch.rand(batch, 1, size, size, generator=g)


def _worker(model_key: str, iters: int, threads: int, count_flops: bool) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    import glfuse.models
    from glfuse.registry import create_model
    from glfuse.runtime import tune_cpu_allocator

    sys.path.insert(0, str(HERE))
    from _vmprobe import gemm_gflops

    tune_cpu_allocator()
    arch, batch, size = WORKLOADS[model_key]
    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "img_size": size} if model_key == "vdpf" else {}
    model = create_model(arch, **kwargs).eval()
    x = _inputs(model_key, batch, size)
    res: dict = {"model": model_key, "arch": arch, "batch": batch, "size": size, "threads": threads}
    if count_flops:  # a separate, untimed worker; plain-op path (autograd on): FlopCounterMode does not see oneDNN ops
        with FlopCounterMode(display=False) as fc:
            model(*x)
        return {**res, "flops": fc.get_total_flops()}
    prepare = getattr(glfuse.models, "prepare_inference", None)
    model = prepare(model, "fast") if prepare is not None else model
    res.update(prepared=prepare is not None, probe_before=gemm_gflops(threads))
    with torch.inference_mode():
        model(*x)  # warm-up
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            model(*x)
            times.append(time.perf_counter() - t)
    res["probe_after"] = gemm_gflops(threads)
    res["times"] = times
    return res


def _run_worker(src: Path, model: str, args: argparse.Namespace, count_flops: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    cmd = [sys.executable, __file__, "--worker", model, "--iters", str(args.iters), "--threads", str(args.threads)]
    if count_flops:
        cmd.append("--count-flops")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"worker {model} on {src} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def _summary(runs: list[dict], flops: float | None) -> dict:
    times = [t for r in runs for t in r["times"]]
    med = statistics.median(times)
    probe = statistics.median([p for r in runs for p in (r["probe_before"], r["probe_after"])])
    out = {"median_s": med, "min_s": min(times), "max_s": max(times), "n": len(times), "probe_gflops": probe}
    if flops:
        # per-worker fraction: the model's FLOP rate over that worker's own GEMM rate
        fr = [flops / statistics.median(r["times"]) / 1e9 / ((r["probe_before"] + r["probe_after"]) / 2) for r in runs]
        out.update(gflop=flops / 1e9, gemm_fraction=statistics.median(fr), gemm_fraction_min=min(fr),
                   gemm_fraction_max=max(fr))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, default=Path("/tmp/base/src"), help="source tree A (the PYTHONPATH entry)")
    ap.add_argument("--b", type=Path, default=REPO / "src", help="source tree B")
    ap.add_argument("--models", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3, help="timed forward passes per worker")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ab_compare.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(_worker(args.worker, args.iters, args.threads, args.count_flops)), flush=True)
        return

    trees = {"A": args.a, "B": args.b}
    runs: dict[tuple[str, str], list[dict]] = {(t, m): [] for t in trees for m in args.models}
    flops = {m: _run_worker(trees["B"], m, args, count_flops=True)["flops"] for m in args.models}  # untimed
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for model in args.models:
            for tree in ("A", "B") if r % 2 == 0 else ("B", "A"):
                res = _run_worker(trees[tree], model, args, count_flops=False)
                runs[(tree, model)].append(res)
                print(f"round {r} {tree} {model}: median {statistics.median(res['times']):.3f} s "
                      f"(GEMM {res['probe_before']:.0f}/{res['probe_after']:.0f} GFLOP/s)", flush=True)
        load.append(os.getloadavg()[0])
    table = {m: {t: _summary(runs[(t, m)], flops.get(m)) for t in trees} for m in args.models}
    print(f"\nA = {args.a}\nB = {args.b}\n{args.threads} threads, {args.rounds} interleaved rounds × {args.iters} passes;"
          f" 1-min load average {min(load):.1f}–{max(load):.1f}\n")
    print(f"{'model':<11} {'tree':<4} {'median s':>9} {'min–max s':>15} {'GEMM GF/s':>9} {'fraction of GEMM':>22}  B/A")
    for m in args.models:
        for t in trees:
            s = table[m][t]
            frac = (f"{s['gemm_fraction']:.3f} ({s['gemm_fraction_min']:.3f}–{s['gemm_fraction_max']:.3f})"
                    if "gemm_fraction" in s else "-")
            ratio = f"{s['median_s'] / table[m]['A']['median_s']:.3f}" if t == "B" else ""
            print(f"{m:<11} {t:<4} {s['median_s']:>9.3f} {s['min_s']:>7.3f}–{s['max_s']:<7.3f} {s['probe_gflops']:>9.1f} "
                  f"{frac:>22}  {ratio}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"a": str(args.a), "b": str(args.b), "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
               "loadavg": load, "workloads": {m: WORKLOADS[m] for m in args.models}, "summary": table,
               "runs": {f"{t}/{m}": v for (t, m), v in runs.items()}}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
