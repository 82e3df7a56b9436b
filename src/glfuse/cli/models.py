"""`glfuse models`: table of registered models with parameter counts and FLOPs."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list registered models with params and FLOPs",
                       description="List registered models (timm-style names) with parameter counts and FLOPs.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'hifuse*'")
    p.add_argument("--num-classes", type=int, default=2, help="classes for classifier heads (default 2)")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting (faster)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the table as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from glfuse.files import save_json
    from glfuse.profile import model_summary
    from glfuse.registry import list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no registered model matches {args.pattern!r}")
    table = Table(title="glfuse models")
    for col in ("name", "input", "params", "GFLOP"):
        table.add_column(col, justify="left" if col in ("name", "input") else "right")
    rows = []
    with Console(stderr=True).status("counting parameters and FLOPs…"):
        for name in names:
            info = model_summary(name, num_classes=args.num_classes, flops=not args.no_flops)
            rows.append(info)
            gf = "-" if info["gflops"] is None else f"{info['gflops']:.2f}"
            table.add_row(name, info["input"], f"{info['params']:,}", gf)
    Console().print(table)
    if args.json_out:
        save_json(rows, args.json_out)
    return 0
