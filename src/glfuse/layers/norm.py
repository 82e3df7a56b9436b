"""Normalisation layers shared by the glfuse models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm2d"]


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm: normalises ``[B, C, H, W]`` over C (biased variance), per-channel affine.

    Same math as the ConvNeXt-style "channels_first" LayerNorm ``(x - mean_c) / sqrt(var_c + eps) * w + b``, computed with
    the fused ``F.layer_norm`` on an NHWC view; for a channels-last input the view is free and the output stays
    channels-last.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
