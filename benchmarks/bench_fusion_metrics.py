"""Timing of ``glfuse.metrics.fusion.evaluate`` on the 24 golden Harvard CT–MRI pairs (total and per metric).

    python benchmarks/bench_fusion_metrics.py                  # 3 repeats, default conventions, golden check
    python benchmarks/bench_fusion_metrics.py --repeats 1 --torchmetrics --no-check

Images are read once (reading is timed separately).  ``evaluate`` (all 15 metrics, default conventions) is timed per
image for ``--repeats`` passes over the 24 pairs after one warm-up call; per-metric times come from
``evaluate(..., metrics=[name])`` on every pair.  CPU/wall (≈ threads used when the machine is not contended; lower
means other processes took the cores) and the load average are recorded.  ``--check`` (default) also recomputes the
golden columns with the reference conventions and reports the max relative error per column.  ``--torchmetrics``
additionally times the torchmetrics backends of VIF and MS-SSIM on one pair.  Results go to
``benchmarks/results/fusion_metrics.json``.  Needs ``../shared``; exits with a message when it is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLFUSE_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden" / "fusion-metrics"
SOURCES = SHARED / "data" / "havard-fusion" / "CT-MRI" / "test"
RESULTS = REPO / "benchmarks" / "results" / "fusion_metrics.json"

# golden column -> (metric key, conventions beyond REFERENCE_CONVENTIONS)
GOLDEN_COLUMNS = {
    "EN": ("EN", {}), "SD": ("SD", {}), "SF": ("SF", {}), "AG": ("AG", {}), "MI": ("MI", {}), "MSE": ("MSE", {}),
    "CC": ("CC", {}), "PSNR": ("PSNR", {}), "SCD": ("SCD", {}), "VIF": ("VIF", {}), "Qabf": ("Qabf", {}),
    "SSIM": ("SSIM", {}), "SSIM_dr255": ("SSIM", {"ssim_data_range": 255.0}), "MSSSIM_tm_mean": ("MS_SSIM", {}),
    "Qw_piella_sw2": ("Qw", {}),
}  # fmt: skip


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (only the torchmetrics backends use torch)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--torchmetrics", action="store_true", help="also time the torchmetrics VIF / MS-SSIM backends")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    csv_path = GOLDEN / "golden_ctmri_harvard.csv"
    if not csv_path.exists() or not SOURCES.exists():
        console.print(f"[yellow]skipped: golden fusion-metrics data not found under {SHARED} (../shared is absent)")
        return 0

    import torch

    from glfuse.fusion.io_metrics import read_grey
    from glfuse.metrics import fusion as M

    torch.set_num_threads(args.threads)
    with open(csv_path, newline="") as fh:
        golden = {r["image"]: r for r in csv.DictReader(fh)}
    names = sorted(golden)

    t0 = time.perf_counter()
    pairs = {n: (read_grey(GOLDEN / "fused" / n), read_grey(SOURCES / "CT" / n), read_grey(SOURCES / "MRI" / n)) for n in names}
    read_s = time.perf_counter() - t0
    shape = next(iter(pairs.values()))[0].shape

    M.evaluate(*pairs[names[0]])  # warm-up (imports, caches)

    # full evaluate, per image
    per_image: list[float] = []
    passes: list[float] = []
    cpu0, wall0 = _cpu(), time.perf_counter()
    for _ in range(args.repeats):
        tp = time.perf_counter()
        for n in names:
            t = time.perf_counter()
            M.evaluate(*pairs[n])
            per_image.append(time.perf_counter() - t)
        passes.append(time.perf_counter() - tp)
    cpu_wall = (_cpu() - cpu0) / (time.perf_counter() - wall0)

    # per metric (one pass)
    per_metric: dict[str, float] = {}
    for m in M.METRIC_NAMES:
        t = time.perf_counter()
        for n in names:
            M.evaluate(*pairs[n], metrics=[m])
        per_metric[m] = time.perf_counter() - t

    result: dict = {
        "n_pairs": len(names),
        "image_shape": list(shape),
        "repeats": args.repeats,
        "read_s_total": read_s,
        "evaluate_s_per_pass": {"median": statistics.median(passes), "min": min(passes), "max": max(passes)},
        "evaluate_ms_per_image": {
            "median": 1e3 * statistics.median(per_image),
            "min": 1e3 * min(per_image),
            "max": 1e3 * max(per_image),
        },
        "per_metric_s_per_pass": per_metric,
        "cpu_over_wall": cpu_wall,
        "loadavg_1m": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "conventions": M.describe_conventions(),
        "environment": {
            "python": platform.python_version(),
            "numpy": __import__("numpy").__version__,
            "scipy": __import__("scipy").__version__,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
        },  # fmt: skip
    }

    if args.torchmetrics:
        f, a, b = pairs[names[0]]
        tm = {}
        for label, fn in (("VIF", M.vif), ("MS_SSIM", M.ms_ssim)):
            t = time.perf_counter()
            fn(f, a, b, backend="numpy")
            t1 = time.perf_counter()
            fn(f, a, b, backend="torchmetrics")
            tm[label] = {"numpy_s": t1 - t, "torchmetrics_s": time.perf_counter() - t1}
        result["backend_one_pair"] = tm

    if args.check:
        errs: dict[str, float] = {}
        for n in names:
            f, a, b = pairs[n]
            ref = M.evaluate(f, a, b, metrics=sorted({m for m, _ in GOLDEN_COLUMNS.values()}), **M.REFERENCE_CONVENTIONS)
            ref["SSIM_dr255"] = M.ssim(f, a, b, data_range=255.0)
            for col, (m, extra) in GOLDEN_COLUMNS.items():
                ours = ref["SSIM_dr255"] if extra else ref[m]
                g = float(golden[n][col])
                errs[col] = max(errs.get(col, 0.0), abs(ours - g) / abs(g))
        result["golden_max_rel_error"] = errs

    table = Table(title=f"evaluate() on {len(names)} CT–MRI pairs {shape[0]}×{shape[1]} (default conventions)")
    table.add_column("metric")
    table.add_column("s / 24 pairs", justify="right")
    table.add_column("ms / pair", justify="right")
    table.add_column("share", justify="right")
    if args.check:
        table.add_column("golden max rel err", justify="right")
    metric_total = sum(per_metric.values())
    col_of = {m: c for c, (m, extra) in GOLDEN_COLUMNS.items() if not extra}
    for m, s in sorted(per_metric.items(), key=lambda kv: -kv[1]):
        row = [m, f"{s:.3f}", f"{1e3 * s / len(names):.1f}", f"{100 * s / metric_total:.1f}%"]
        if args.check:
            row.append(f"{result['golden_max_rel_error'][col_of[m]]:.1e}" if m in col_of else "—")
        table.add_row(*row)
    med = result["evaluate_s_per_pass"]["median"]
    row = ["[bold]evaluate (all)", f"[bold]{med:.3f}", f"[bold]{result['evaluate_ms_per_image']['median']:.1f}", ""]
    table.add_row(*(row + ([""] if args.check else [])))
    console.print(table)
    if args.check:
        console.print(f"SSIM_dr255 golden max rel err {result['golden_max_rel_error']['SSIM_dr255']:.1e}")
    if "backend_one_pair" in result:
        for k, v in result["backend_one_pair"].items():
            console.print(f"{k} one pair: numpy {v['numpy_s']:.3f} s, torchmetrics {v['torchmetrics_s']:.3f} s")
    console.print(f"reading 72 images: {read_s:.2f} s; CPU/wall {cpu_wall:.2f}; load average {result['loadavg_1m']:.1f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
