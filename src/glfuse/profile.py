"""Parameter and FLOP counts (``torch.utils.flop_counter.FlopCounterMode``; FLOP = 2 × MAC), built on the meta device
so that even the 130 M-parameter models are counted in seconds without allocating weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["count_params", "count_flops", "example_inputs", "model_summary"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def example_inputs(model: nn.Module, batch: int = 1, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """Inputs of the model's default size: ``model.example_inputs(batch)`` if defined, else one [B, C, 224, 224] image."""
    import inspect

    if hasattr(model, "example_inputs"):
        return tuple(t.to(device) for t in model.example_inputs(batch))
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) == 2:  # two-input models: VDPF (image, box mask), MACTFusion (vis_y, ir) — grey, 1 channel each
        size = getattr(model, "img_size", 256)
        size = size if isinstance(size, int) else size[0]
        return tuple(torch.zeros(batch, 1, size, size, device=device) for _ in range(2))
    in_chans = getattr(model, "in_chans", 3)
    size = getattr(model, "img_size", 224)
    size = size if isinstance(size, int) else size[0]
    return (torch.zeros(batch, in_chans, size, size, device=device),)


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...] | None = None) -> int:
    """Total FLOPs of one forward pass (eval mode, no grad).

    PyTorch's fused inference kernel for ``nn.TransformerEncoderLayer`` / ``nn.MultiheadAttention`` (the "fast path")
    is invisible to ``FlopCounterMode``; it is switched off while counting, so such models are counted in full."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(iter(model.parameters())).device
    inputs = inputs if inputs is not None else example_inputs(model, 1, device)
    was = model.training
    model.eval()
    mha = torch.backends.mha
    fast = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(*inputs)
    finally:
        mha.set_fastpath_enabled(fast)
        model.train(was)
    return int(fc.get_total_flops())


def model_summary(name: str, flops: bool = True, **kwargs: Any) -> dict[str, Any]:
    """``{"name", "params", "gflops", "input"}`` for a registered model, counted on the meta device."""
    import inspect

    from glfuse.registry import create_model, model_entrypoint

    fn = model_entrypoint(name)
    sig = inspect.signature(fn)
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    kw = {k: v for k, v in kwargs.items() if accepts_any or k in sig.parameters}
    with torch.device("meta"):
        try:
            model = create_model(name, **kw)
        except (TypeError, ValueError):  # e.g. num_classes for a model without a classifier head (mactfusion)
            model = create_model(name)
    params = count_params(model)
    inputs = example_inputs(model, 1, "meta")
    gflops = None
    if flops:
        try:
            gflops = count_flops(model, inputs) / 1e9
        except Exception:  # noqa: BLE001 - a model that cannot run on meta just shows '-'
            gflops = None
    shape = " + ".join("×".join(str(s) for s in t.shape[1:]) for t in inputs)
    return {"name": name, "params": params, "gflops": gflops, "input": shape}
