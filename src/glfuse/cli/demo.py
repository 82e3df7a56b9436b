"""`glfuse demo`: synthetic data → train HiFuse briefly → evaluate → Grad-CAM → one-page summary."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run a small real job on built-in synthetic data (no downloads)",
                       description="Generate a small labelled synthetic image set, train a HiFuse variant briefly at a "
                                   "small input size, evaluate it and write metrics, a confusion matrix, Grad-CAM "
                                   "pictures and summary.html. About 2-3 minutes on 2 CPU cores.")
    p.add_argument("-o", "--output", default="glfuse-demo", help="output folder (default ./glfuse-demo)")
    p.add_argument("--model", default="hifuse_tiny", help="registered model (default hifuse_tiny)")
    p.add_argument("--img-size", type=int, default=64, help="input side, a multiple of 32 (default 64)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glfuse.demo import run_demo

    run_demo(args.output, model=args.model, img_size=args.img_size, epochs=args.epochs, overwrite=args.overwrite,
             seed=args.seed)
    return 0
