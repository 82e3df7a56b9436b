"""Baseline classifiers for the HiFuse comparison tables, built from MONAI networks (no downloads, random init).

Registered names: ``resnet50``, ``vit_base_patch16_224`` (plain torch, see
:class:`ViTClassifier`), ``efficientnet_b0`` — each ``(num_classes=2, in_chans=3, **kw)``
returns an ``nn.Module`` whose ``forward`` gives logits ``[B, num_classes]`` and whose ``cam_layers()`` names the module
to hook for Grad-CAM (``{"features": ...}``; for the ViT the last block's normalised input tokens ``[B, 1+N, C]``, which
:mod:`glfuse.cam` reshapes to a ``[B, C, h, w]`` map).

With the optional ``glfuse[timm]`` extra, ``timm:<name>`` (``timm:convnext_base``, ``timm:swin_base_patch4_window7_224``,
``timm:vgg19``, ...) builds ``timm.create_model(name, pretrained=False, ...)`` through :func:`create_timm_model`.
Pretrained weights are never downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from glfuse.models._registry import register_model

__all__ = ["TIMM_PREFIX", "EfficientNetB0", "MissingDependencyError", "ResNet50", "ViTClassifier", "create_timm_model"]

TIMM_PREFIX = "timm:"


class MissingDependencyError(ImportError, RuntimeError):
    """An optional dependency is not installed (a RuntimeError too, so the CLI prints it as one line)."""


class _Wrapped(nn.Module):
    """Common shell: ``self.net`` is the MONAI network; ``in_chans``/``img_size`` feed :mod:`glfuse.profile`."""

    def __init__(self, net: nn.Module, num_classes: int, in_chans: int, img_size: int = 224) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNet50(_Wrapped):
    """ResNet-50 (bottleneck 3-4-6-3, 7×7/2 stem + max-pool, no bias in the projection shortcuts), MONAI 2-D."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3, **kw: Any) -> None:
        from monai.networks.nets import resnet50

        kw.setdefault("conv1_t_size", 7)
        kw.setdefault("conv1_t_stride", 2)
        kw.setdefault("bias_downsample", False)
        net = resnet50(pretrained=False, spatial_dims=2, n_input_channels=in_chans, num_classes=num_classes, **kw)
        super().__init__(net, num_classes, in_chans)

    def cam_layers(self) -> dict[str, nn.Module]:
        return {"features": self.net.layer4}


class ViTClassifier(nn.Module):
    """ViT-B/16 classifier: conv patch embedding, class token, learned position embedding, pre-norm Transformer
    encoder (GELU MLP), final LayerNorm, Linear head on the class token.

    Built from ``torch.nn.TransformerEncoderLayer`` rather than MONAI's ``ViT``, because MONAI's ViT needs ``einops``,
    which is not a glfuse dependency (and MONAI's classification head ends in a Tanh by default, bounding the logits).
    """

    def __init__(self, num_classes: int = 2, in_chans: int = 3, img_size: int = 224, patch_size: int = 16,
                 hidden_size: int = 768, mlp_dim: int = 3072, num_layers: int = 12, num_heads: int = 12,
                 dropout_rate: float = 0.0) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"ViT: img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, hidden_size, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, hidden_size))
        self.pos_drop = nn.Dropout(dropout_rate)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden_size, num_heads, mlp_dim, dropout_rate, activation="gelu",
                                       layer_norm_eps=1e-6, batch_first=True, norm_first=True)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.head = nn.Linear(hidden_size, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image → normalised tokens ``[B, 1 + N, C]`` (class token first)."""
        x = self.patch_embed(x)
        if x.shape[-2:] != (self.grid, self.grid):
            raise ValueError(f"ViT built for {self.img_size}² inputs, got {tuple(x.shape[-2:])} patches grid")
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def cam_layers(self) -> dict[str, nn.Module]:
        # The last block's pre-attention norm: tokens [B, 1 + (S/p)^2, C] whose patch tokens still reach the class
        # token through attention (the block's output patch tokens get no gradient); glfuse.cam drops the class token
        # and reshapes them to [B, C, S/p, S/p].
        return {"features": self.blocks[-1].norm1}


class EfficientNetB0(_Wrapped):
    """EfficientNet-B0 (MONAI ``EfficientNetBN``, random init)."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3, **kw: Any) -> None:
        from monai.networks.nets import EfficientNetBN

        net = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_chans,
                             num_classes=num_classes, **kw)
        super().__init__(net, num_classes, in_chans)

    def cam_layers(self) -> dict[str, nn.Module]:
        # BN after the 1×1 head conv: used once per forward (the swish module is shared with the stem).
        return {"features": self.net._bn1}


@register_model(input="image", in_chans=3, img_size=224)
def resnet50(num_classes: int = 2, in_chans: int = 3, **kw: Any) -> nn.Module:
    """ResNet-50 baseline (MONAI)."""
    return ResNet50(num_classes=num_classes, in_chans=in_chans, **kw)


@register_model(input="image", in_chans=3, img_size=224, size_arg=True)
def vit_base_patch16_224(num_classes: int = 2, in_chans: int = 3, img_size: int = 224, **kw: Any) -> nn.Module:
    """ViT-B/16 baseline at 224²; ``img_size``, ``patch_size``, ``hidden_size``, ``num_layers``, ... may be overridden."""
    return ViTClassifier(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kw)


@register_model(input="image", in_chans=3, img_size=224)
def efficientnet_b0(num_classes: int = 2, in_chans: int = 3, **kw: Any) -> nn.Module:
    """EfficientNet-B0 baseline (MONAI)."""
    return EfficientNetB0(num_classes=num_classes, in_chans=in_chans, **kw)


def create_timm_model(name: str, num_classes: int = 2, in_chans: int = 3, **kw: Any) -> nn.Module:
    """Build ``timm:<name>`` (the prefix is optional here) with ``timm.create_model(name, pretrained=False, ...)``.

    Raises :class:`MissingDependencyError` ("install glfuse[timm]") when timm is absent and ``ValueError`` for an
    unknown timm architecture or a request for pretrained weights.
    """
    arch = name.removeprefix(TIMM_PREFIX)
    if not arch:
        raise ValueError(f"model name {name!r}: expected timm:<architecture>, e.g. timm:convnext_base")
    if kw.pop("pretrained", False):
        raise ValueError(f"model {name!r}: pretrained weights are not downloaded by glfuse; load them yourself")
    try:
        import timm
    except ImportError as e:
        raise MissingDependencyError(
            f"model {name!r} needs timm: install glfuse[timm] (pip install 'glfuse[timm]')"
        ) from e
    if not timm.is_model(arch):
        raise ValueError(f"model {name!r}: {arch!r} is not a timm architecture")
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)
    model.in_chans = in_chans
    return model
