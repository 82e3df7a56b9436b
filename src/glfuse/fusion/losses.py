"""Training losses for two-input image fusion (MACTFusion presets), on the raw fused Y and the two sources in [0, 1].

``build_fusion_loss(name)`` returns an ``nn.Module`` whose ``forward(fused, vis_y, ir)`` gives ``(total, terms)``:

* ``"official"`` — the loss MACTFusion's released checkpoint was trained with (``loss.py``), with the MS-SSIM fixed::

      total = 10·L_ssim + 20·L_int + 10·L_grad
      L_ssim = η·(1 − MSSSIM(F, Y)) + (1 − η)·(1 − MSSSIM(F, I)),   η = 0.5
      L_int  = MSE(F, max(Y, I))                  (element-wise max)
      L_grad = L1(S(F), max(S(Y), S(I))),          S = |Sobel_x| + |Sobel_y| (fixed 3×3 kernels, zero padding 1)

  MS-SSIM is Wang et al.'s (2003): Gaussian window 11, σ 1.5 (shrunk to the image at coarse levels), valid filtering,
  C1 = (0.01·L)², C2 = (0.03·L)², 5 levels with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2×2 average pooling,
  ``Π_{i<5} cs_i^{w_i} · ssim_5^{w_5}``; each level's cs / ssim mapped to (v + 1)/2 first (``normalize="simple"``, as
  the official code does, so that negative values cannot make the fractional powers NaN).
  Documented differences from the official implementation (bundled ``pytorch_msssim``), deliberately *not* reproduced:
  (1) its combination multiplies ``ssim_5^{w_5}`` into each of the four cs factors, i.e.
  ``Π_{i<5} cs_i^{w_i} · (ssim_5^{w_5})⁴``; (2) it guesses the dynamic range L from the fused image (L = 255 if
  max > 128, L = 2 if min < −0.5, else 1) — here L = ``data_range`` (default 1); (3) it averages cs/ssim over the whole
  batch before combining — here MS-SSIM is computed per image and then averaged.

* ``"paper"`` — the form on the MACTFusion slides, ``δ1·L_ssim + δ2·L_grad + δ3·L_int`` with single-scale SSIM and an
  L1 intensity term (target max(Y, I), gradient term as above). The slides give no values for δ; the code's weights are
  used (δ1 = 10, δ2 = 10, δ3 = 20).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ssim", "ms_ssim", "sobel_gradient", "FusionLoss", "build_fusion_loss", "FUSION_LOSSES",
           "MS_SSIM_WEIGHTS"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).to(like)
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, win_size: int, sigma: float, data_range: float,
             k1: float = 0.01, k2: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and contrast-structure term ``[B]`` (valid Gaussian filtering)."""
    c = x.shape[1]
    size = min(win_size, x.shape[-2], x.shape[-1])
    win = _gaussian_window(size, sigma, c, x)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x * mu_x
    syy = filt(y * y) - mu_y * mu_y
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs_map
    return ssim_map.flatten(1).mean(1), cs_map.flatten(1).mean(1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5
         ) -> torch.Tensor:
    """Per-image SSIM ``[B]`` of ``[B, C, H, W]`` images (Gaussian 11/1.5 window, valid filtering)."""
    return _ssim_cs(x, y, win_size, sigma, data_range)[0]


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
            weights: tuple[float, ...] = MS_SSIM_WEIGHTS, normalize: str | None = "simple") -> torch.Tensor:
    """Per-image multi-scale SSIM ``[B]`` (Wang et al. 2003): ``Π_{i<M} cs_i^{w_i} · ssim_M^{w_M}``.

    ``normalize``: ``"simple"`` maps each level's value v to (v + 1)/2 (as the official MACTFusion training did),
    ``"relu"`` clamps at 0, ``None`` uses the raw values (may be NaN for negative cs).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ms_ssim: expected two [B, C, H, W] tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    w = torch.tensor(weights, dtype=x.dtype, device=x.device)
    vals = []
    for level in range(len(weights)):
        s, cs = _ssim_cs(x, y, win_size, sigma, data_range)
        vals.append(cs if level < len(weights) - 1 else s)
        if level < len(weights) - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    v = torch.stack(vals, dim=1)  # [B, levels]
    if normalize == "simple":
        v = (v + 1) / 2
    elif normalize == "relu":
        v = v.clamp_min(0)
    elif normalize is not None:
        raise ValueError(f"ms_ssim: normalize must be 'simple', 'relu' or None, got {normalize!r}")
    return (v**w).prod(dim=1)


def sobel_gradient(x: torch.Tensor) -> torch.Tensor:
    """``|Sobel_x * x| + |Sobel_y * x|`` per channel (fixed kernels, zero padding 1)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    ky = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    gx = F.conv2d(x, kx.expand(c, 1, 3, 3), padding=1, groups=c)
    gy = F.conv2d(x, ky.expand(c, 1, 3, 3), padding=1, groups=c)
    return gx.abs() + gy.abs()


class FusionLoss(nn.Module):
    """``w_ssim·L_ssim + w_int·L_int + w_grad·L_grad`` for a fused image and its two sources (see module docstring)."""

    def __init__(self, similarity: str = "ms_ssim", intensity: str = "mse", w_ssim: float = 10.0, w_int: float = 20.0,
                 w_grad: float = 10.0, eta: float = 0.5, data_range: float = 1.0, normalize: str | None = "simple"
                 ) -> None:
        super().__init__()
        if similarity not in ("ms_ssim", "ssim"):
            raise ValueError(f"similarity must be 'ms_ssim' or 'ssim', got {similarity!r}")
        if intensity not in ("mse", "l1"):
            raise ValueError(f"intensity must be 'mse' or 'l1', got {intensity!r}")
        self.similarity, self.intensity = similarity, intensity
        self.w_ssim, self.w_int, self.w_grad, self.eta = w_ssim, w_int, w_grad, eta
        self.data_range, self.normalize = data_range, normalize

    def _sim(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.similarity == "ms_ssim":
            return ms_ssim(a, b, self.data_range, normalize=self.normalize).mean()
        return ssim(a, b, self.data_range).mean()

    def forward(self, fused: torch.Tensor, vis_y: torch.Tensor, ir: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total, {"ssim", "intensity", "gradient"})`` (terms unweighted and detached)."""
        if not (fused.shape == vis_y.shape == ir.shape):
            raise ValueError(f"FusionLoss: shapes differ: fused {tuple(fused.shape)}, vis_y {tuple(vis_y.shape)}, "
                             f"ir {tuple(ir.shape)}")
        l_ssim = self.eta * (1 - self._sim(fused, vis_y)) + (1 - self.eta) * (1 - self._sim(fused, ir))
        target = torch.maximum(vis_y, ir)
        l_int = F.mse_loss(fused, target) if self.intensity == "mse" else F.l1_loss(fused, target)
        l_grad = F.l1_loss(sobel_gradient(fused), torch.maximum(sobel_gradient(vis_y), sobel_gradient(ir)))
        total = self.w_ssim * l_ssim + self.w_int * l_int + self.w_grad * l_grad
        return total, {"ssim": l_ssim.detach(), "intensity": l_int.detach(), "gradient": l_grad.detach()}


FUSION_LOSSES: dict[str, dict[str, Any]] = {
    "official": {"similarity": "ms_ssim", "intensity": "mse", "w_ssim": 10.0, "w_int": 20.0, "w_grad": 10.0},
    "paper": {"similarity": "ssim", "intensity": "l1", "w_ssim": 10.0, "w_int": 20.0, "w_grad": 10.0},
}


def build_fusion_loss(name: str, **overrides: Any) -> FusionLoss:
    """Fusion loss preset ``"official"`` or ``"paper"`` (keyword overrides, e.g. ``eta=0.7``, are passed through)."""
    if name not in FUSION_LOSSES:
        raise KeyError(f"unknown fusion loss {name!r}; available: {', '.join(sorted(FUSION_LOSSES))}")
    return FusionLoss(**{**FUSION_LOSSES[name], **overrides})
