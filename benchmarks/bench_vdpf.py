"""CPU throughput and peak memory of VDPF, beside the official implementation's measured figures.

Each mode (forward; forward+backward) runs in its own subprocess so that its peak RSS is its own. Defaults match the
spec's measurement: batch 8 slice pairs, 224x224, 2 threads, fp32. "pairs/s" = batch / median seconds per batch (each pair
runs the encoder twice). Usage::

    python benchmarks/bench_vdpf.py                     # vdpf, both modes, 5 timed repeats
    python benchmarks/bench_vdpf.py --model vdpf_resnet --repeats 3

Writes ``benchmarks/results/<model>.json``. The machine's load average is recorded: other processes sharing the CPU
slow the figures down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# Official my_model2 on the same machine kind (shared/specs/vdpf.md §4): s/batch median, pairs/s, peak RSS GiB.
OFFICIAL = {
    "fwd": {"s_per_batch": 6.25, "pairs_per_s": 1.28, "peak_rss_gib": 0.91},
    "fwdbwd": {"s_per_batch": 14.19, "pairs_per_s": 0.56, "peak_rss_gib": 4.08},
}
LABELS = {"fwd": "forward", "fwdbwd": "forward+backward"}


def _worker(args: argparse.Namespace) -> dict:
    import resource

    import torch

    torch.set_num_threads(args.threads)
    from glfuse.models import prepare_inference as glfuse_prepare
    from glfuse.registry import create_model
    from glfuse.runtime import tune_cpu_allocator

    tuned = tune_cpu_allocator()  # as the CLI and the engine do; GLFUSE_ALLOCATOR_TUNING=0 turns it off

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=3, img_size=args.size)
    image = torch.rand(args.batch, 1, args.size, args.size)
    mask = torch.zeros_like(image)
    s = args.size
    mask[:, :, s // 4 : s // 2, s // 3 : 2 * s // 3] = 1  # one lesion box per slice
    target = torch.randint(0, 3, (args.batch,))

    if args.mode == "fwd":
        glfuse_prepare(model, "fast")  # eval mode + CPU-inference variants (none for this model today)

        def step() -> None:
            with torch.inference_mode():
                model(image, mask)
    else:
        model.train()
        loss_fn = torch.nn.CrossEntropyLoss()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            loss_fn(model(image, mask), target).backward()

    for _ in range(args.warmup):
        step()
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    cpu_med = statistics.median(cpu)
    return {
        "mode": args.mode,
        "allocator_tuned": tuned,
        "s_per_batch": med,
        "s_min": min(times),
        "s_max": max(times),
        "times": times,
        "pairs_per_s": args.batch / med,
        # CPU seconds of this process per batch / threads: less sensitive to other processes taking the cores (spin-
        # waiting threads still count, so it is conservative); an estimate of the uncontended wall time.
        "cpu_s_per_batch": cpu_med,
        "pairs_per_s_cpu_est": args.batch / (cpu_med / args.threads),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vdpf")
    ap.add_argument("--modes", default="fwd,fwdbwd", help="comma list of fwd, fwdbwd")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<model>.json)")
    ap.add_argument("--worker", choices=["fwd", "fwdbwd"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        args.mode = args.worker
        print(json.dumps(_worker(args)))
        return 0

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in LABELS:
            ap.error(f"unknown mode {m!r}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load_before = os.getloadavg()
    results = {}
    for m in modes:
        cmd = [sys.executable, __file__, "--worker", m, "--model", args.model, "--batch", str(args.batch)]
        cmd += ["--size", str(args.size), "--threads", str(args.threads), "--warmup", str(args.warmup)]
        cmd += ["--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        results[m] = json.loads(proc.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()

    import torch
    from rich.console import Console
    from rich.table import Table

    comparable = args.model == "vdpf" and args.batch == 8 and args.size == 224 and args.threads == 2
    table = Table(
        title=f"{args.model}: batch {args.batch} slice pairs, {args.size}², {args.threads} threads, fp32 "
        f"(load avg {load_before[0]:.1f} → {load_after[0]:.1f}; glfuse.tune_cpu_allocator(): "
        f"{all(r.get('allocator_tuned') for r in results.values())})"
    )
    cols = ("mode", "s/batch median [range]", "pairs/s", "pairs/s CPU-time est.", "peak RSS GiB", "official pairs/s")
    cols += ("official RSS GiB", "speed-up (wall)")
    for col in cols:
        table.add_column(col, justify="left" if col == "mode" else "right")
    for m, r in results.items():
        off = OFFICIAL[m]
        table.add_row(
            LABELS[m],
            f"{r['s_per_batch']:.2f} [{r['s_min']:.2f}–{r['s_max']:.2f}]",
            f"{r['pairs_per_s']:.2f}",
            f"{r['pairs_per_s_cpu_est']:.2f}",
            f"{r['peak_rss_gib']:.2f}",
            f"{off['pairs_per_s']:.2f}" if comparable else "–",
            f"{off['peak_rss_gib']:.2f}" if comparable else "–",
            f"{r['pairs_per_s'] / off['pairs_per_s']:.2f}×" if comparable else "–",
        )
    Console(width=160).print(table)

    out = args.out or RESULTS / f"{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": args.model,
        "config": {k: getattr(args, k) for k in ("batch", "size", "threads", "warmup", "repeats")},
        "results": results,
        "official": OFFICIAL if comparable else None,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "torch": torch.__version__,
        "note": "CPU shared with other processes; see loadavg",
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
