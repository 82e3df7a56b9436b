"""Grad-CAM on any module's output, for any classifier (HiFuse branches, CNN baselines, token maps).

``grad_cam(model, x, layers)`` hooks each module in ``layers`` (``{name: module}``), runs one forward and one backward
pass of the chosen class score (default: the predicted class), and returns for each layer a heatmap ``[B, H, W]`` in
[0, 1], upsampled (bilinear) to the input size: ``relu(sum_c mean_hw(dScore/dA_c) · A_c)``, min–max normalised per image.

A hooked output may be

* a map ``[B, C, h, w]`` (CNN stages, HiFuse ``cam_layers()``),
* tokens ``[B, N, C]`` (ViT blocks): leading extra tokens (class/register tokens) are dropped so that the rest form a
  square grid, then reshaped to ``[B, C, s, s]``,
* anything else, via ``reshape={name: fn}`` mapping the output to ``[B, C, h, w]`` (e.g. VDPF token maps).

:func:`default_cam_layers` picks ``model.cam_layers()`` when the model has it, else the last ``nn.Conv2d``.
:func:`save_cam_figure` writes a PNG: input | one overlay per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["default_cam_layers", "grad_cam", "overlay", "save_cam_figure", "tokens_to_map"]


def default_cam_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``model.cam_layers()`` if defined and not empty, else ``{"last_conv": <last nn.Conv2d>}``."""
    if hasattr(model, "cam_layers"):
        layers = dict(model.cam_layers())
        if layers:
            return layers
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            last = (name, m)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no cam_layers() and no Conv2d; pass layers= explicitly")
    return {"last_conv": last[1]}


def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
    """``[B, N, C]`` tokens → ``[B, C, s, s]``, dropping the first ``N - s²`` tokens (class/register tokens)."""
    if t.ndim != 3:
        raise ValueError(f"expected tokens [B, N, C], got shape {tuple(t.shape)}")
    n = t.shape[1]
    s = math.isqrt(n)
    if s == 0:
        raise ValueError("no tokens")
    if n - s * s > 8 and s > 1:  # too many extra tokens: the grid is probably not square
        raise ValueError(f"{n} tokens do not form a square grid; pass reshape= for this layer")
    grid = t[:, n - s * s :]
    return grid.transpose(1, 2).reshape(t.shape[0], t.shape[2], s, s)


def _first_tensor(out: Any, name: str) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"CAM layer {name!r}: output is {type(out).__name__}, not a tensor")
    return out


def _as_map(t: torch.Tensor, name: str, reshape: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    if reshape is not None:
        t = reshape(t)
    elif t.ndim == 3:
        t = tokens_to_map(t)
    if t.ndim != 4:
        raise ValueError(f"CAM layer {name!r}: expected a [B, C, H, W] map, got shape {tuple(t.shape)}; pass reshape=")
    return t


def grad_cam(model: nn.Module, x: torch.Tensor, layers: Mapping[str, nn.Module] | None = None,
             target: int | Sequence[int] | torch.Tensor | None = None, *,
             reshape: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
             forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Grad-CAM heatmaps for a batch ``x [B, C, H, W]``.

    Args:
        model: returns logits ``[B, K]`` (or pass ``forward(model, x) -> logits``).
        layers: ``{name: module}``; default :func:`default_cam_layers`.
        target: class per image (int for all, or a sequence/tensor of B ints); default the predicted class.
        reshape: per-layer function turning the hooked output into ``[B, C, h, w]``.

    Returns ``({name: heatmap [B, H, W] in [0, 1]}, logits [B, K] (detached))``.
    """
    layers = dict(layers) if layers is not None else default_cam_layers(model)
    reshape = dict(reshape or {})
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            a = _first_tensor(out, name)
            _as_map(a.detach(), name, reshape.get(name))  # fail early on a bad shape
            if not a.requires_grad:
                raise ValueError(f"CAM layer {name!r}: output does not require grad (frozen or under no_grad)")
            acts[name] = a
            # hook the tensor the model goes on using (a reshaped view would receive no gradient)
            a.register_hook(lambda g: grads.__setitem__(name, g))
        return hook

    for name, module in layers.items():
        handles.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = forward(model, x) if forward is not None else model(x)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            b = logits.shape[0]
            if target is None:
                tgt = logits.argmax(1)
            elif isinstance(target, int):
                tgt = torch.full((b,), target, dtype=torch.long, device=logits.device)
            else:
                tgt = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(b)
            missing = [n for n in layers if n not in acts]
            if missing:
                raise ValueError(f"CAM layer(s) {missing} were not run in the forward pass")
            score = logits.gather(1, tgt[:, None]).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    maps: dict[str, torch.Tensor] = {}
    size = tuple(x.shape[-2:])
    for name in layers:
        if name not in grads:
            raise ValueError(f"CAM layer {name!r}: no gradient reached it (is its output used for the logits?)")
        fn = reshape.get(name)
        a = _as_map(acts[name].detach().float(), name, fn)
        g = _as_map(grads[name].float(), name, fn)
        weights = g.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]
        lo = cam.flatten(1).min(1).values[:, None, None]
        hi = cam.flatten(1).max(1).values[:, None, None]
        span = hi - lo
        maps[name] = torch.where(span > 0, (cam - lo) / torch.where(span > 0, span, 1.0), 0.0).cpu()
    return maps, logits.detach()


def overlay(image: Any, heatmap: Any, alpha: float = 0.45, cmap: str = "jet") -> Any:
    """RGB float array ``[H, W, 3]`` in [0, 1]: ``image`` (``[H, W]``, ``[H, W, 3]`` or ``[C, H, W]`` in [0, 1]) blended
    with the colour-mapped ``heatmap [H, W]``."""
    import numpy as np
    from matplotlib import colormaps

    img = torch.as_tensor(np.asarray(image, dtype=np.float32)) if not isinstance(image, torch.Tensor) else image
    img = img.detach().float().cpu()
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.permute(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = img.expand(*img.shape[:2], 3)
    img = img.clamp(0, 1).numpy()
    h = torch.as_tensor(heatmap).detach().float().cpu().clamp(0, 1).numpy()
    colour = colormaps[cmap](h)[..., :3]
    return np.clip((1 - alpha) * img + alpha * colour, 0.0, 1.0)  # float rounding can exceed 1 by 1e-8


def save_cam_figure(path: str | Path, image: Any, maps: Mapping[str, Any], *, title: str | None = None,
                    alpha: float = 0.45) -> Path:
    """Write a PNG with the input and one heatmap overlay per entry of ``maps`` (``{name: [H, W]}``), atomically."""
    import numpy as np
    from matplotlib.figure import Figure

    from glfuse.files import atomic_write

    img = torch.as_tensor(np.asarray(image, dtype=np.float32)) if not isinstance(image, torch.Tensor) else image
    base = overlay(img, torch.zeros(img.shape[-2:] if img.ndim == 3 and img.shape[0] in (1, 3) else img.shape[:2]),
                   alpha=0.0)
    n = 1 + len(maps)
    fig = Figure(figsize=(3 * n, 3.3), dpi=100)
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(base)
    axes[0].set_title("input")
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(overlay(img, m, alpha=alpha))
        ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
