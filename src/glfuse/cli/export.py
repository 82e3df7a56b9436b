"""`glfuse export MODEL_DIR -o FILE --format onnx|torchscript|exported`: a saved model as a deployable file."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a saved model to ONNX / TorchScript / torch.export",
                       description="Export a glfuse model folder with portable ops only (no oneDNN post-op kernels, no FFT "
                                   "ops), dynamic batch (MACTFusion: also height/width, multiples of 8); the inputs and "
                                   "the preprocessing are written beside it as FILE.json, and the file is checked against "
                                   "the eager model (ONNX: with onnxruntime, pip install 'glfuse[export]').")
    p.add_argument("model_dir", help="model folder (model.safetensors + config.json)")
    p.add_argument("-o", "--output", required=True, help="output file (.onnx / .pt / .pt2 added when no suffix)")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "exported"])
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |exported - eager| (default 1e-4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glfuse.export import export_model

    meta = export_model(args.model_dir, args.output, args.format, overwrite=args.overwrite, atol=args.atol)
    check = meta["check"]
    how = (f"max |Δ| vs eager {check['max_abs_diff']:.2g} (batch {check['batch']})" if "max_abs_diff" in check
           else f"not checked: {check['skipped']}")
    print(f"exported {meta['arch']} to {meta['file']} ({meta['format']}); {how}")
    return 0
