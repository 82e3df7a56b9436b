"""CPU throughput and peak memory of HiFuse versus the official implementation's measured figures.

    python benchmarks/bench_hifuse.py                   # Tiny, batch 8, 224², 2 threads, fp32, forward + fwd/bwd
    python benchmarks/bench_hifuse.py --iters 3 --no-channels-last

Each mode runs in its own subprocess so that the peak RSS is per mode. Per mode: model build, ``--warmup`` untimed
iterations, then ``--iters`` timed ones; we report the median seconds/batch and images/s, the range, CPU/wall of each
iteration (≈ threads when the machine is not contended; lower means other processes took the cores) and the load
average. Results go to ``benchmarks/results/hifuse.json``.
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

# Official HiFuse-Tiny (7 classes), same machine kind, batch 8, 224², 2 threads, fp32 (spec § 4).
OFFICIAL = {
    "fwd": {"img_s": 2.51, "s_batch": 3.19, "peak_rss_gib": 1.32},
    "fwdbwd": {"img_s": 0.86, "s_batch": 9.32, "peak_rss_gib": 3.54},
}
RESULTS = Path(__file__).resolve().parent / "results" / "hifuse.json"


def _worker(args: argparse.Namespace) -> dict:
    import torch

    import glfuse

    torch.set_num_threads(args.threads)
    from glfuse.models import prepare_inference as glfuse_prepare
    tuned = glfuse.tune_cpu_allocator()  # as the CLI and the engine do; GLFUSE_ALLOCATOR_TUNING=0 turns it off
    torch.manual_seed(0)
    model = glfuse.create_model(args.model, num_classes=args.num_classes, channels_last=not args.no_channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, args.num_classes, (args.batch,))

    if args.mode == "fwd":
        glfuse_prepare(model, "fast")  # eval mode + CPU-inference variants (none for this model today)

        def step() -> None:
            with torch.no_grad():
                model(x)
    else:
        model.train()
        loss_fn = torch.nn.CrossEntropyLoss()

        def step() -> None:
            loss_fn(model(x), y).backward()
            model.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    walls, cpus = [], []
    for _ in range(args.iters):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    med = statistics.median(walls)
    return {
        "mode": args.mode,
        "allocator_tuned": tuned,
        "s_batch": med,
        "img_s": args.batch / med,
        "s_batch_all": walls,
        "cpu_over_wall": [c / w for c, w in zip(cpus, walls)],
        "cpu_s_batch": statistics.median(cpus),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "loadavg_end": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hifuse_tiny")
    p.add_argument("--num-classes", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = p.parse_args(argv)

    if args.mode:
        print(json.dumps(_worker(args)))
        return

    passthrough = list(argv if argv is not None else sys.argv[1:])  # the worker ignores --modes
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load_start = os.getloadavg()
    results = {}
    for mode in args.modes.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, *passthrough, "--mode", mode], capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode:
            sys.exit(f"{mode} worker failed:\n{proc.stderr}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])

    import torch
    from rich.console import Console
    from rich.table import Table

    cfg = {k: getattr(args, k) for k in ("model", "num_classes", "batch", "size", "threads", "warmup", "iters")}
    cfg["channels_last"] = not args.no_channels_last
    title = f"{args.model}: batch {args.batch}, {args.size}², {args.threads} threads, fp32 (torch {torch.__version__}"
    title += f", glibc heap kept: {all(r.get('allocator_tuned') for r in results.values())})"
    table = Table(title=title)
    for col in ("mode", "s/batch (median)", "range", "images/s", "official images/s", "speed-up", "peak RSS GiB",
                "official RSS GiB", "CPU/wall", "CPU s/batch"):  # fmt: skip
        table.add_column(col, justify="right")
    for mode, r in results.items():
        off = OFFICIAL.get(mode, {}) if args.model == "hifuse_tiny" and args.batch == 8 and args.size == 224 else {}
        r["official"] = off
        r["speedup"] = r["img_s"] / off["img_s"] if off else None
        table.add_row(
            mode,
            f"{r['s_batch']:.2f}",
            f"{min(r['s_batch_all']):.2f}–{max(r['s_batch_all']):.2f}",
            f"{r['img_s']:.2f}",
            f"{off['img_s']:.2f}" if off else "—",
            f"{r['speedup']:.2f}×" if off else "—",
            f"{r['peak_rss_gib']:.2f}",
            f"{off['peak_rss_gib']:.2f}" if off else "—",
            f"{statistics.median(r['cpu_over_wall']):.2f}",
            f"{r['cpu_s_batch']:.2f}",
        )
    console = Console(width=150)
    console.print(table)
    load_end = os.getloadavg()
    console.print(f"load average (1/5/15 min) at start {load_start}, at end {load_end}; {os.cpu_count()} CPUs. "
                  "CPU/wall well below the thread count means other processes competed for the cores.")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": cfg, "loadavg_start": load_start, "loadavg_end": load_end, "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "results": results}  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
