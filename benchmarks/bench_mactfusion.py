"""Benchmark MACTFusion on CPU: forward seconds per 256² pair, max |Δ| vs the official golden output, training step.

Each measurement runs in its own subprocess (so peak RSS is per mode), with ``--threads`` (default 2) torch threads:

* ``forward``: eval, no grad, one 256² pair, median over ``--iters`` after one warm-up; the official CT–MRI checkpoint
  and golden pair are used when ``../shared`` exists (max |Δ| is reported), random weights/inputs otherwise;
* ``train``: batch 4 of 256² pairs, Adam (lr 1e-3), ``official`` loss, forward + backward + step, median over
  ``--train-iters`` after one warm-up, with activation checkpointing (``train_nockpt``: without, optional).

Each worker also times a fixed float32 GEMM before and after (``_vmprobe.py``, "machine speed probe"): this VM's speed
drifts by ±15–25 % over minutes, and the probe shows how fast it was running during the measurement.

Official figures (spec, same machine kind, 2 threads): 10.3 s per pair forward, 86.9 s and 14.5 GiB per training step.
Results go to ``benchmarks/results/mactfusion.json``. Other processes sharing the CPU inflate the times; the 1-minute
load average at start and end is recorded.

    python benchmarks/bench_mactfusion.py [--iters 5] [--train-iters 2] [--modes forward train train_nockpt]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLFUSE_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden" / "mactfusion"
OFFICIAL = {"forward_s": 10.3, "forward_rss_gib": 0.87, "train_s": 86.9, "train_rss_gib": 14.5}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # ru_maxrss is KiB on Linux


def _worker(mode: str, iters: int, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from glfuse.registry import create_model, load_official
    from glfuse.runtime import tune_cpu_allocator

    ckpt = GOLDEN / "mactfusion_ct_mri_official.pth"
    goldens = sorted(GOLDEN.glob("harvard_ctmri_*.npz")) if GOLDEN.is_dir() else []
    res: dict = {"mode": mode, "threads": threads, "torch": torch.__version__}
    # as fuse_folder does for inference; training follows the preset (train.tune_allocator: false, heap fragmentation)
    res["allocator_tuned"] = tune_cpu_allocator() if mode == "forward" else False
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _vmprobe import gemm_gflops

    res["probe_gflops_before"] = gemm_gflops(threads)
    if mode == "forward":
        if ckpt.is_file() and goldens:
            model = load_official("mactfusion", ckpt)
            d = np.load(goldens[0])
            vis, ir, ref = (torch.from_numpy(d[k]) for k in ("vis_y", "ir", "fused_y"))
            res["golden"] = goldens[0].name
        else:
            model = create_model("mactfusion").eval()
            vis, ir, ref = torch.rand(1, 1, 256, 256), torch.rand(1, 1, 256, 256), None
        from glfuse.models import prepare_inference

        prepare_inference(model, "fast")  # eval mode + the CPU-inference variants, as fuse_folder does
        times, cpu = [], []
        with torch.no_grad():
            out = model(vis, ir)  # warm-up
            for _ in range(iters):
                t, c = time.perf_counter(), time.process_time()
                out = model(vis, ir)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        res["forward_s"] = statistics.median(times)
        res["forward_s_all"] = times
        res["forward_cpu_s"] = statistics.median(cpu)
        res["max_abs_diff"] = None if ref is None else (out - ref).abs().max().item()
    else:
        from glfuse.fusion.losses import build_fusion_loss

        torch.manual_seed(0)
        model = create_model("mactfusion").train()
        model.set_grad_checkpointing(mode == "train")
        res["grad_checkpointing"] = mode == "train"
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = build_fusion_loss("official")
        vis, ir = torch.rand(4, 1, 256, 256), torch.rand(4, 1, 256, 256)
        times = []
        for i in range(iters + 1):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_fn(model(vis, ir), vis, ir)
            loss.backward()
            opt.step()
            if i:  # the first step is warm-up
                times.append(time.perf_counter() - t)
        res["train_s"] = statistics.median(times)
        res["train_s_all"] = times
        res["loss"] = float(loss)
    res["probe_gflops_after"] = gemm_gflops(threads)
    res["peak_rss_gib"] = _peak_rss_gib()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5, help="timed forward passes")
    ap.add_argument("--train-iters", type=int, default=2, help="timed training steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train", "train_nockpt"])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mactfusion.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        iters = args.iters if args.worker == "forward" else args.train_iters
        print("RESULT " + json.dumps(_worker(args.worker, iters, args.threads)), flush=True)
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results: dict = {"load_avg_start": os.getloadavg()[0], "cpu_count": os.cpu_count(), "official": OFFICIAL}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--worker", mode, "--iters", str(args.iters),
               "--train-iters", str(args.train_iters), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:  # e.g. killed for memory (no-checkpointing training); keep the others
            print(f"{mode} worker failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            results[f"{mode}_failed"] = {"returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
            continue
        results[mode] = json.loads(line[-1][len("RESULT "):])
    results["load_avg_end"] = os.getloadavg()[0]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))

    from rich.console import Console
    from rich.table import Table

    tuned = {m: r["allocator_tuned"] for m, r in results.items() if isinstance(r, dict) and "allocator_tuned" in r}
    table = Table(title=f"MACTFusion on CPU ({args.threads} threads; load avg {results['load_avg_start']:.1f} → "
                        f"{results['load_avg_end']:.1f}, shared machine; glfuse.tune_cpu_allocator(): "
                        f"{tuned})")
    table.add_column("measurement")
    table.add_column("glfuse", justify="right")
    table.add_column("official", justify="right")
    table.add_column("speed-up / ratio", justify="right")
    if "forward" in results:
        f = results["forward"]
        table.add_row("forward, s per 256² pair (median)", f"{f['forward_s']:.2f}", f"{OFFICIAL['forward_s']:.1f}",
                      f"{OFFICIAL['forward_s'] / f['forward_s']:.1f}×")
        table.add_row("forward, CPU s per pair (median)", f"{f['forward_cpu_s']:.2f}", "—", "")
        table.add_row("forward, max |Δ| vs golden", "—" if f["max_abs_diff"] is None else f"{f['max_abs_diff']:.2e}",
                      "0", f.get("golden", "no ../shared"))
        table.add_row("forward, peak RSS GiB", f"{f['peak_rss_gib']:.2f}", f"{OFFICIAL['forward_rss_gib']:.2f}", "")
    for mode in ("forward", "train", "train_nockpt"):
        if mode in results:
            r = results[mode]
            table.add_row(f"machine speed probe, GFLOP/s ({mode}: before / after)",
                          f"{r['probe_gflops_before']:.0f} / {r['probe_gflops_after']:.0f}", "—",
                          "fp32 GEMM, see _vmprobe.py")
    for mode in ("train", "train_nockpt"):
        if mode in results:
            t = results[mode]
            tag = "ckpt" if t["grad_checkpointing"] else "no ckpt"
            table.add_row(f"train step, batch 4 × 256², s ({tag})", f"{t['train_s']:.1f}", f"{OFFICIAL['train_s']:.1f}",
                          f"{OFFICIAL['train_s'] / t['train_s']:.1f}×")
            table.add_row(f"train step, peak RSS GiB ({tag})", f"{t['peak_rss_gib']:.2f}",
                          f"{OFFICIAL['train_rss_gib']:.1f}", f"{OFFICIAL['train_rss_gib'] / t['peak_rss_gib']:.1f}× less")
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
