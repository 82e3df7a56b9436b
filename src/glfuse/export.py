"""Export a saved glfuse model for use outside Python / outside glfuse: ONNX, TorchScript or a ``torch.export`` program.

    from glfuse.export import export_model
    export_model("models/mactfusion_ctmri", "mact.onnx", format="onnx")

The model folder is loaded (:func:`glfuse.checkpoint.load_model`) and prepared with
``glfuse.models.prepare_inference(model, "portable")``: plain PyTorch ops only, no oneDNN post-op kernels and no FFT
ops. The batch dimension is dynamic in every format; MACTFusion's height and width are dynamic too (multiples of 8 in
the exported graph; pad before). The inputs, outputs and the preprocessing the model was trained with are written beside
the file as ``<file>.json``. The export is checked against the eager model on a batch of another size: with onnxruntime
for ONNX (optional extra ``glfuse[export]``; without it the check is skipped and the JSON says so), by loading the file
back for the other formats; a difference over ``atol`` (default 1e-4) is an error.

Formats: ``onnx`` (``torch.onnx.export(dynamo=True)``, needs ``onnx`` and ``onnxscript``), ``torchscript``
(``torch.jit.trace``; the batch size stays dynamic, spatial size is fixed) and ``exported`` (``torch.export.save``, a
``.pt2`` file to be loaded with ``torch.export.load``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glfuse.checkpoint import load_model, save_json

__all__ = ["FORMATS", "export_model", "input_spec"]

FORMATS = ("onnx", "torchscript", "exported")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported": ".pt2"}


def input_spec(model: nn.Module, cfg: dict[str, Any]) -> dict[str, Any]:
    """Names and shapes of ``model``'s inputs / outputs (``"batch"`` marks the dynamic dimension) and its spatial size."""
    from glfuse.models.mactfusion import MACTFusion
    from glfuse.models.vdpf import VDPF

    if isinstance(model, MACTFusion):
        size = int(cfg.get("img_size") or 256)
        return {"inputs": {"vis_y": [1, size], "ir": [1, size]}, "outputs": ["fused_y"], "size": size, "dynamic_hw": True}
    chans = int(getattr(model, "in_chans", cfg.get("model_args", {}).get("in_chans", 3)))
    size = int(getattr(model, "img_size", None) or cfg.get("img_size") or cfg.get("model_args", {}).get("img_size", 224))
    if isinstance(model, VDPF):
        return {"inputs": {"image": [chans, size], "box_mask": [1, size]}, "outputs": ["logits"], "size": size,
                "dynamic_hw": False}
    return {"inputs": {"image": [chans, size]}, "outputs": ["logits"], "size": size, "dynamic_hw": False}


def _examples(spec: dict[str, Any], batch: int, size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, (chans, s) in spec["inputs"].items():
        s = size or s
        t = torch.rand(batch, chans, s, s, generator=g)
        out.append((t > 0.5).float() if name == "box_mask" else t)
    return tuple(out)


def _dynamic_shapes(spec: dict[str, Any]) -> tuple[dict[int, Any], ...]:
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=4096)
    axes: dict[int, Any] = {0: batch}
    if spec["dynamic_hw"]:  # multiples of 8 (MACTFusion partitions), so the padding branch is decided statically
        axes = {0: batch, 2: 8 * dim("h8", min=1, max=1024), 3: 8 * dim("w8", min=1, max=1024)}
    return tuple(dict(axes) for _ in spec["inputs"])


def _write(model: nn.Module, example: tuple[torch.Tensor, ...], spec: dict[str, Any], fmt: str, tmp: str) -> None:
    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise RuntimeError("ONNX export needs the optional extra: pip install 'glfuse[export]'") from e
        prog = torch.onnx.export(model, example, dynamo=True, input_names=list(spec["inputs"]),
                                 output_names=spec["outputs"], dynamic_shapes=_dynamic_shapes(spec), verbose=False)
        prog.save(tmp)
    elif fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, example, check_trace=False).save(tmp)
    else:
        torch.export.save(torch.export.export(model, example, dynamic_shapes=_dynamic_shapes(spec)), tmp)


def _run_exported(path: Path, fmt: str, spec: dict[str, Any], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The exported file's output on ``inputs`` (None when onnxruntime is missing)."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {name: t.numpy() for name, t in zip(spec["inputs"], inputs)}
        return torch.from_numpy(sess.run(None, feed)[0])
    loaded = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    with torch.no_grad():
        return loaded(*inputs)


def export_model(model_dir: str | Path, out: str | Path, format: str = "onnx", *, overwrite: bool = False,
                 atol: float = 1e-4, check_batch: int = 3) -> dict[str, Any]:
    """Export the model saved in ``model_dir`` to ``out`` and check it; returns the description also written beside it.

    Args:
        model_dir: a glfuse model folder (``model.safetensors`` + ``config.json``).
        out: output file (suffix added when missing: .onnx / .pt / .pt2); ``<out>.json`` describes it.
        format: "onnx", "torchscript" or "exported".
        overwrite: replace existing files (else ``FileExistsError`` before any work).
        atol: largest accepted ``max |exported − eager|`` on the check batch.
        check_batch: batch size of the check (≠ the export's example batch 2, so the dynamic batch is exercised).
    """
    from glfuse.models import prepare_inference

    if format not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {format!r}")
    out = Path(out)
    if not out.suffix:
        out = out.with_suffix(_SUFFIX[format])
    meta_path = out.with_name(out.name + ".json")
    for p in (out, meta_path):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass overwrite=True (--overwrite) to replace it")
    model, cfg = load_model(model_dir)
    model = prepare_inference(model, "portable")
    spec = input_spec(model, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write(model, _examples(spec, 2), spec, format, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    check_size = spec["size"] + 8 if spec["dynamic_hw"] else None
    inputs = _examples(spec, check_batch, check_size, seed=1)
    with torch.no_grad():
        ref = model(*inputs)
    got = _run_exported(out, format, spec, inputs)
    check: dict[str, Any] = {"batch": check_batch, "size": check_size or spec["size"], "atol": atol}
    if got is None:
        check["skipped"] = "onnxruntime is not installed (pip install 'glfuse[export]')"
    else:
        check["max_abs_diff"] = float((got - ref).abs().max())
        if not check["max_abs_diff"] <= atol:
            raise RuntimeError(f"{out}: exported model differs from eager by {check['max_abs_diff']:.3g} > {atol}")
    meta = {
        "file": out.name, "format": format, "arch": cfg.get("arch"), "model_args": cfg.get("model_args", {}),
        "inputs": [{"name": n, "shape": ["batch", c, "height" if spec["dynamic_hw"] else s, "width" if spec["dynamic_hw"]
                                         else s], "dtype": "float32"} for n, (c, s) in spec["inputs"].items()],
        "outputs": spec["outputs"], "dynamic": ["batch", "height", "width"] if spec["dynamic_hw"] else ["batch"],
        "spatial": "height and width: multiples of 8 (pad first)" if spec["dynamic_hw"] else f"{spec['size']}x{spec['size']}",
        "preprocessing": cfg.get("preprocessing"), "class_names": cfg.get("class_names"), "fusion": cfg.get("fusion"),
        "check": check, "glfuse_version": cfg.get("glfuse_version"),
    }
    save_json(meta, meta_path)
    return json.loads(json.dumps(meta))
