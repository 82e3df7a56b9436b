"""Inference preparation: swap paper blocks for their inference variants, in the spirit of RepVGG's re-parameterisation.

Every block in :mod:`glfuse.layers` and :mod:`glfuse.models` has **one** forward, written as the paper's equations (the
*reference path*): training runs it, the golden tests check it. CPU-inference speed-ups are kept apart as *variants*:
subclasses of a block that keep its parameters, buffers and state-dict keys and replace only ``forward`` (folded
BatchNorms, oneDNN kernels with the bias / activation / residual add fused in, in-place updates of fresh tensors,
chunked token partitions, the two MACTFusion branches in two threads). A variant is registered with
:func:`register_variant` and switched in by :func:`prepare_modules` (``glfuse.models.prepare_inference`` is the public
entry point), which only reassigns each module's class: no copy, no new weights, undone with mode ``"reference"``.

Modes:

* ``"fast"``: every block with a registered fast variant becomes that variant. The fast variants assume no autograd
  (they update tensors in place and run branches in threads), so a forward pre-hook on the prepared model refuses calls
  with autograd enabled: run it under ``torch.no_grad()`` / ``torch.inference_mode()``.
* ``"portable"``: reference blocks, and blocks with a *portable* variant take it (e.g. the FFT convolution becomes a
  plain ``nn.Conv2d``): plain PyTorch ops only, no oneDNN post-op kernels and no FFT ops (what export uses).
* ``"reference"``: every block back to its reference class (what training needs).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["MODES", "PrepareMode", "prepare_modules", "register_variant", "variants"]

PrepareMode = Literal["fast", "portable", "reference"]
MODES: tuple[str, ...] = ("fast", "portable", "reference")

_VARIANTS: dict[str, dict[type[nn.Module], type[nn.Module]]] = {"fast": {}, "portable": {}}
_REF_ATTR = "_glfuse_reference_class"
_HOOK_ATTR = "_glfuse_no_grad_hook"


def register_variant(reference: type[nn.Module], mode: str = "fast"):
    """Class decorator: register the decorated class as the ``mode`` variant of ``reference`` (exact type).

    A fast variant must subclass ``reference`` and add no parameters or buffers; a portable variant may be any class
    with the same parameters (e.g. ``nn.Conv2d`` for :class:`~glfuse.layers.conv.FFTConv2d`).
    """
    if mode not in _VARIANTS:
        raise ValueError(f"register_variant: mode must be one of {tuple(_VARIANTS)}, got {mode!r}")

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        _VARIANTS[mode][reference] = cls
        return cls

    return deco


def variants(mode: str) -> dict[type[nn.Module], type[nn.Module]]:
    """The registered ``reference class → variant class`` map of ``mode`` ("fast" or "portable")."""
    return dict(_VARIANTS[mode])


def _require_no_grad(module: nn.Module, args: tuple) -> None:
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{type(module).__name__} was prepared for fast inference (glfuse.models.prepare_inference): call it under "
            "torch.no_grad() / torch.inference_mode(), or undo with prepare_inference(model, 'reference') to train "
            "or take gradients (e.g. Grad-CAM)")


def prepare_modules(model: nn.Module, mode: str) -> dict[str, int]:
    """Set every submodule of ``model`` to its ``mode`` class (see the module docstring); returns ``{class: count}``
    of the modules now running a variant. Idempotent; ``model`` is changed in place."""
    if mode not in MODES:
        raise ValueError(f"prepare mode must be one of {MODES}, got {mode!r}")
    table = _VARIANTS.get(mode, {})
    swapped: dict[str, int] = {}
    for m in model.modules():
        ref = m.__dict__.get(_REF_ATTR, type(m))
        target = table.get(ref, ref)
        if type(m) is not target:
            m.__class__ = target
        if target is ref:
            m.__dict__.pop(_REF_ATTR, None)
        else:
            m.__dict__[_REF_ATTR] = ref
            swapped[target.__name__] = swapped.get(target.__name__, 0) + 1
    hook = model.__dict__.pop(_HOOK_ATTR, None)
    if hook is not None:
        hook.remove()
    if mode == "fast":
        model.__dict__[_HOOK_ATTR] = model.register_forward_pre_hook(_require_no_grad)
    return swapped
