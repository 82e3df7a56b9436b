"""HiFuse: hierarchical multi-scale global–local feature fusion for medical image classification.

Paper: X. Huo, G. Sun, S. Tian, Y. Wang, L. Yu, J. Long, W. Zhang, A. Li, "HiFuse: Hierarchical multi-scale feature
fusion network for medical image classification", Biomedical Signal Processing and Control 87 (2024) 105534
(arXiv:2209.10218, 2022). Official code: github.com/huoxiangzuo/HiFuse (``main_model.py``).

Three parallel paths over four stages (resolutions S/4 … S/32, widths 96/192/384/768):

* a local CNN branch (:class:`LocalBlock`: depthwise 3×3 → LN → Linear → GELU, residual),
* a global Swin-like branch (:class:`GlobalBlock`: LN → (shifted-)window MSA with relative position bias → Linear → GELU,
  residual; :class:`PatchMerging` at the *start* of stages 2–4),
* a fusion path of :class:`HFFBlock` (spatial attention on the local map, channel attention on the global map, a 1×1
  fusion of both with the previous stage's fusion output, and an :class:`IRMLP`).

``hifuse_{tiny,small,base}`` reproduce the official code exactly (including where it differs from the paper; each such
place is marked ``# deviation:``) but do not create the ~1.6 M parameters the official forward never uses.
``hifuse_{tiny,small,base}_paper`` use the paper's depthwise IRMLP 3×3 (see :func:`hifuse_tiny_paper`).
Official checkpoints load through :func:`glfuse.load_official` (``load_official("hifuse_small", "best_model.pth")``);
the key mapping is :func:`convert_official_state_dict`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glfuse.layers.attention import Attention
from glfuse.layers.attention import PatchEmbed as SharedPatchEmbed
from glfuse.layers.conv import NCHWConv2d, PointwiseConv2d
from glfuse.layers.norm import LayerNorm2d
from glfuse.layers.window import relative_position_index, shifted_window_mask, window_partition, window_reverse
from glfuse.models._registry import register_model, register_official

__all__ = [
    "IRMLP",
    "OFFICIAL_UNUSED_KEYS",
    "ChannelAttention",
    "ConvNormAct",
    "GlobalBlock",
    "GlobalStage",
    "HFFBlock",
    "HiFuse",
    "LocalBlock",
    "PatchEmbed",
    "PatchMerging",
    "SpatialAttention",
    "WindowAttention",
    "convert_official_state_dict",
    "official_depths",
]

_VARIANT_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "hifuse_tiny": (2, 2, 2, 2),
    "hifuse_small": (2, 2, 6, 2),
    "hifuse_base": (2, 2, 18, 2),
}


# ----------------------------------------------------------------------------------------------------------- blocks
class ConvNormAct(nn.Module):
    """Conv2d → optional BatchNorm → optional activation (the official ``Conv`` helper)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        *,
        groups: int = 1,
        bias: bool = True,
        norm: bool = True,
        act: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if kernel_size == 1 and groups == 1:  # a GEMM on the channels-last token view (same maths, faster on CPU)
            self.conv: nn.Conv2d = PointwiseConv2d(in_chs, out_chs, bias=bias)
        else:
            self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_chs) if norm else nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class LocalBlock(nn.Module):
    """Local (CNN) block: ``x + GELU(Linear(LN(DWConv3x3(x))))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # deviation: paper eq. (3) has no activation; the code applies GELU after the pointwise Linear (no 4x MLP).
        self.pwconv = nn.Linear(dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # free view when x is channels-last
        y = self.act(self.pwconv(self.norm(y)))
        return x + y.permute(0, 3, 1, 2)


class PatchEmbed(SharedPatchEmbed):
    """Global-branch patch embedding: Conv k4 s4 → LayerNorm (eps 1e-5); returns NHWC tokens ``[B, H, W, C]`` (inputs
    padded right/bottom to a multiple of the patch size, as the official code does)."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4) -> None:
        super().__init__(in_chans, embed_dim, patch_size, norm=True, flatten=False, pad=True)


class PatchMerging(nn.Module):
    """2×2 patch merging at the start of a global stage: ``[B, H, W, C/2]`` → ``[B, H/2, W/2, C]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_dim)
        self.reduction = nn.Linear(4 * in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # Neighbour order (r0,c0), (r1,c0), (r0,c1), (r1,c1) == channel blocks [x00, x10, x01, x11]: view the 2x2 cell as
        # (row parity, col parity) and put col parity outermost.
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class WindowAttention(Attention):
    """Window multi-head self-attention ``proj(softmax(Q Kᵀ/√d + B + M) V)`` with a Swin relative position bias B and
    the shifted-window mask M (0 / −100), on ``[B, nW, N, C]`` windows."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, qkv_bias: bool = True) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias)  # scale d^-0.5 = 32^-0.5 (head dim 32)
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Derivable from window_size, so not saved (the official checkpoints' copies are dropped by the converter).
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)

    def position_bias(self) -> torch.Tensor:
        """Relative position bias ``[heads, N, N]``."""
        n = self.window_size**2
        idx = self.relative_position_index.reshape(-1)
        return self.relative_position_bias_table[idx].view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """``x`` ``[B, nW, N, C]`` windows, ``mask`` ``[nW, N, N]`` (0 / -100) or None → ``[B, nW, N, C]``."""
        bias = self.position_bias()  # [h, N, N]
        return super().forward(x, bias if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1))  # [(nW,) h, N, N]


class GlobalBlock(nn.Module):
    """Global (Swin-like) block: ``x + GELU(Linear(W-MSA(LN(x))))`` on ``[B, H, W, C]``, optionally shifted."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.window_size = window_size
        # deviation: the shift is kept even when the map is a single window (stage 4 at 224), unlike Swin — as in the code.
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias)
        # deviation: paper eq. (2) is f1x1(W-MSA(LN(G))) + G; the code follows the attention's own output projection with
        # a second Linear and a GELU (and creates an unused norm2, which we omit; there is no Swin MLP).
        self.fc = nn.Linear(dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, H, W, C]``; ``mask`` the shifted-window mask for the padded size (computed here if None)."""
        h, w = x.shape[1:3]
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x)
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:  # zero-pad after the norm to a multiple of the window, as the official code does
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
            if mask is None:
                mask = shifted_window_mask(hp, wp, ws, s, device=x.device)
        else:
            mask = None
        y = self.attn(window_partition(y, ws), mask)
        y = self.act(self.fc(y))  # per-token ops commute with the window reverse / roll / crop below
        y = window_reverse(y, ws, hp, wp)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        if pad_b or pad_r:
            y = y[:, :h, :w]
        return x + y


class GlobalStage(nn.Module):
    """Global stage: [PatchMerging] → blocks (even: no shift, odd: shift ⌊ws/2⌋). NCHW in, NCHW (channels-last) out."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window_size: int = 7, downsample: bool = True) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        # deviation (from Swin, not from the code): merging starts stages 2-4 instead of ending stages 1-3.
        self.downsample = PatchMerging(in_dim, dim) if downsample else None
        self.blocks = nn.ModuleList(
            GlobalBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size) for i in range(depth)
        )
        self._mask_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        key = (hp, wp, str(device))
        if key not in self._mask_cache:  # the official code recomputes it every forward; same values
            self._mask_cache[key] = shifted_window_mask(hp, wp, ws, self.shift_size, device=device)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C_in, H, W]`` (a channels-last view is free) → ``[B, C, H', W']`` (channels-last memory)."""
        x = x.permute(0, 2, 3, 1)
        if self.downsample is not None:
            x = self.downsample(x)
        mask = self._mask(x.shape[1], x.shape[2], x.device) if len(self.blocks) > 1 else None
        for blk in self.blocks:
            x = blk(x, mask if blk.shift_size else None)
        return x.permute(0, 3, 1, 2)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x · σ(BN(Conv7x7([max_c x, mean_c x])))``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)  # deviation: BN after the 7x7 conv is not in the paper's eq. (4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(s)))


class ChannelAttention(nn.Module):
    """CBAM channel attention with a shared MLP: ``x · σ(MLP(maxpool x) + MLP(avgpool x))``."""

    def __init__(self, dim: int, reduction: int = 16) -> None:  # deviation: ratio 16 is unstated in the paper
        super().__init__()
        self.fc1 = nn.Conv2d(dim, dim // reduction, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(dim // reduction, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pooled = torch.cat([x.amax((2, 3), keepdim=True), x.mean((2, 3), keepdim=True)], dim=0)  # one MLP pass
        mx, av = self.fc2(self.act(self.fc1(pooled))).unflatten(0, (2, b)).unbind(0)
        return x * torch.sigmoid(mx + av)


class IRMLP(nn.Module):
    """Inverted residual MLP: ``y = x + GELU(Conv3x3(x))`` → BN → Conv1x1 (4×) → GELU → Conv1x1 → BN."""

    def __init__(self, in_dim: int, out_dim: int, depthwise: bool = False, nchw_conv3x3: bool = False) -> None:
        """``nchw_conv3x3``: run the 3×3 on NCHW data with an NCHW weight (:class:`~glfuse.layers.conv.NCHWConv2d`; for
        the last stage's dense 2304-channel 3×3 on a 7×7 map oneDNN's NCHW kernel is ~20 % faster, forward and backward).
        """
        super().__init__()
        # deviation: the official code's 3x3 is dense (its Conv helper ignores the group count) although the paper's
        # Table 1 says depthwise; depthwise=True gives the paper's version (hifuse_*_paper).
        conv3x3 = NCHWConv2d if nchw_conv3x3 else nn.Conv2d
        self.conv3x3 = conv3x3(in_dim, in_dim, 3, padding=1, groups=in_dim if depthwise else 1, bias=False)
        # deviation: eq. (4) has no GELU/BN; the code has GELU after the 3x3 and the expansion, BN after the residual add
        # and after the projection; the width is the 3C concat (paper Table 1: C→4C→C).
        self.act = nn.GELU()
        self.bn1 = nn.BatchNorm2d(in_dim)
        self.expand = PointwiseConv2d(in_dim, 4 * in_dim, bias=False)
        self.project = PointwiseConv2d(4 * in_dim, out_dim, bias=False)
        self.bn2 = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(x + self.act(self.conv3x3(x)))
        return self.bn2(self.project(self.act(self.expand(x))))


class HFFBlock(nn.Module):
    """Hierarchical feature fusion block: ``F_i = shortcut + IRMLP(LN([CA(G_i), SA(L_i), fuse(W_l L, W_g G, F_{i-1})]))``."""

    def __init__(self, dim: int, prev_dim: int | None = None, depthwise_irmlp: bool = False,
                 nchw_conv3x3: bool = False) -> None:
        super().__init__()
        self.has_prev = prev_dim is not None
        self.local_proj = ConvNormAct(dim, dim)  # W_l: 1x1 conv (bias) + BN
        self.global_proj = ConvNormAct(dim, dim)  # W_g
        # deviation: eq. (5) is Avgpool(f1x1(F_{i-1})); the code adds BN + ReLU before the 2x2 average pool.
        self.prev_proj = ConvNormAct(prev_dim, dim, act=nn.ReLU) if self.has_prev else None  # official "Updim"
        self.prev_pool = nn.AvgPool2d(2, 2) if self.has_prev else None
        n_in = 3 if self.has_prev else 2
        # deviation: eq. (5) is a 3x3 conv on [G, L, F~]; the code uses LN + 1x1 conv + BN + GELU on [F~, W_l L, W_g G]
        # (stage 1: [W_l L, W_g G]). Official: stage 1 norm2/W, stages 2-4 norm1/W3 (the other pair is never used).
        self.fuse_norm = LayerNorm2d(n_in * dim, eps=1e-6)
        self.fuse_conv = ConvNormAct(n_in * dim, dim, act=nn.GELU)
        self.spatial_attn = SpatialAttention(7)  # on the raw local map
        self.channel_attn = ChannelAttention(dim, 16)  # on the raw global map
        self.out_norm = LayerNorm2d(3 * dim, eps=1e-6)  # official norm3
        self.irmlp = IRMLP(3 * dim, dim, depthwise=depthwise_irmlp, nchw_conv3x3=nchw_conv3x3)

    def forward(self, x_l: torch.Tensor, x_g: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
        """``x_l``, ``x_g`` ``[B, C, H, W]`` local / global maps, ``f`` the previous fusion output ``[B, C/2, 2H, 2W]``."""
        parts = [self.local_proj(x_l), self.global_proj(x_g)]
        shortcut: torch.Tensor | None = None
        if self.has_prev:
            if f is None:
                raise ValueError("this HFF block needs the previous stage's fusion output f")
            shortcut = self.prev_pool(self.prev_proj(f))
            parts.insert(0, shortcut)
        fused = self.fuse_conv(self.fuse_norm(torch.cat(parts, dim=1)))
        y = torch.cat([self.channel_attn(x_g), self.spatial_attn(x_l), fused], dim=1)  # order: global, local, fusion
        y = self.irmlp(self.out_norm(y))
        return y if shortcut is None else shortcut + y


# ---------------------------------------------------------------------------------------------------------- network
class HiFuse(nn.Module):
    """HiFuse network (local CNN + global window-attention branches fused stage by stage by HFF blocks)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        depths: Sequence[int] = (2, 2, 2, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 4,
        depthwise_irmlp: bool = False,
        channels_last: bool = True,
    ) -> None:
        """``depths`` = blocks per stage in both branches (official ``depths`` = ``conv_depths``); ``dims`` the widths.

        ``channels_last`` runs the conv-heavy paths in channels-last memory (same math, faster on CPU).
        """
        super().__init__()
        if len(depths) != 4 or len(dims) != 4 or len(num_heads) != 4:
            raise ValueError("HiFuse has four stages: depths, dims and num_heads need four entries each")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.depths = tuple(depths)
        self.dims = tuple(dims)
        self.num_features = dims[-1]
        self.channels_last = channels_last
        self.reduction = 32

        # local branch: stem (conv k4 s4 + LN) and three downsamplers (LN + conv k2 s2), then LocalBlocks
        self.local_downsample = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size), LayerNorm2d(dims[0], 1e-6))]
            + [nn.Sequential(LayerNorm2d(dims[i - 1], 1e-6), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2)) for i in (1, 2, 3)]
        )
        self.local_stages = nn.ModuleList(nn.Sequential(*(LocalBlock(dims[i]) for _ in range(depths[i]))) for i in range(4))

        # global branch
        self.patch_embed = PatchEmbed(in_chans, dims[0], patch_size)
        self.global_stages = nn.ModuleList(
            GlobalStage(dims[max(i - 1, 0)], dims[i], depths[i], num_heads[i], window_size, downsample=i > 0) for i in range(4)
        )

        # head (official conv_norm / conv_head); the global branch's own norm + head are never used and not created
        self.head_norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        # Official init runs before the HFF blocks exist, so they keep PyTorch's default init.
        self.apply(self._init_weights)
        for stage in self.global_stages:
            for blk in stage.blocks:
                nn.init.trunc_normal_(blk.attn.relative_position_bias_table, std=0.02)

        # the last stage's dense 3x3 runs on NCHW data (IRMLP nchw_conv3x3) when the rest is channels-last
        nchw_last = channels_last and not depthwise_irmlp
        self.fusion = nn.ModuleList(
            HFFBlock(dims[i], dims[i - 1] if i > 0 else None, depthwise_irmlp=depthwise_irmlp, nchw_conv3x3=nchw_last and i == 3)
            for i in range(4)
        )
        if channels_last:  # store conv weights channels-last too, so oneDNN does not re-layout them on every call
            self.to(memory_format=torch.channels_last)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):  # includes LayerNorm2d
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.2)  # deviation: official std 0.2 (not 0.02), cut at +-2
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------------------------------------------- forward
    def forward_branches(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """All stage outputs: ``(L_1..L_4, G_1..G_4, F_1..F_4)``, each ``[B, C_i, H/2^(i+1), W/2^(i+1)]``."""
        # deviation: the official forward is hard-wired to 224² (fixed 56/28/14/7 grids); any multiple of 32 works here
        if x.shape[-2] % self.reduction or x.shape[-1] % self.reduction:
            raise ValueError(f"HiFuse needs input sides that are multiples of {self.reduction}, got {tuple(x.shape[-2:])}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        locs, globs, fus = [], [], []
        lx = x
        gx = self.patch_embed(x).permute(0, 3, 1, 2)
        f: torch.Tensor | None = None
        for i in range(4):
            lx = self.local_stages[i](self.local_downsample[i](lx))
            gx = self.global_stages[i](gx)
            f = self.fusion[i](lx, gx, f)
            locs.append(lx)
            globs.append(gx)
            fus.append(f)
        return locs, globs, fus

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, in_chans, H, W]`` → fusion map F_4 ``[B, 768, H/32, W/32]``."""
        return self.forward_branches(x)[2][-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """F_4 map → logits (or the normalised pooled features when ``pre_logits``)."""
        x = self.head_norm(x.mean((-2, -1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------------------------------------------ utils
    def cam_layers(self) -> dict[str, nn.Module]:
        """Modules whose forward output is a ``[B, C, H, W]`` map, for Grad-CAM hooks on each path's last stage."""
        return {"local": self.local_stages[-1], "global": self.global_stages[-1], "fusion": self.fusion[-1]}

    def get_classifier(self) -> nn.Module:
        """The final Linear."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head for ``num_classes`` (0 = identity), e.g. to fine-tune an official checkpoint."""
        self.num_classes = num_classes
        dev = self.head_norm.weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=dev) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)


# ------------------------------------------------------------------------------------------------------- variants
PAPER = "Huo et al., HiFuse: Hierarchical multi-scale feature fusion network for medical image classification, BSPC 2024"

def _create(depths: tuple[int, int, int, int], depthwise_irmlp: bool, **kwargs: Any) -> HiFuse:
    kwargs.setdefault("num_classes", 1000)
    return HiFuse(depths=depths, depthwise_irmlp=depthwise_irmlp, **kwargs)


@register_model(input="image", in_chans=3, img_size=224, paper=PAPER)
def hifuse_tiny(**kwargs: Any) -> HiFuse:
    """HiFuse-Tiny, official architecture (depths 2,2,2,2; dense IRMLP 3×3)."""
    return _create((2, 2, 2, 2), False, **kwargs)


@register_model(input="image", in_chans=3, img_size=224, paper=PAPER)
def hifuse_small(**kwargs: Any) -> HiFuse:
    """HiFuse-Small, official architecture (depths 2,2,6,2; dense IRMLP 3×3) — the one ``train.py`` trains."""
    return _create((2, 2, 6, 2), False, **kwargs)


@register_model(input="image", in_chans=3, img_size=224, paper=PAPER)
def hifuse_base(**kwargs: Any) -> HiFuse:
    """HiFuse-Base, official architecture (depths 2,2,18,2; dense IRMLP 3×3)."""
    return _create((2, 2, 18, 2), False, **kwargs)


@register_model(input="image", in_chans=3, img_size=224, paper=PAPER)
def hifuse_tiny_paper(**kwargs: Any) -> HiFuse:
    """HiFuse-Tiny with the paper's depthwise IRMLP 3×3 (FlopCounterMode: 8.17 GMAC at 224², paper 8.13 G).

    The paper's parameter counts (82.49 / 93.82 / 127.80 M for Tiny/Small/Base) match no version of the official code;
    this variant has 54.67 M parameters at 7 classes (Small 58.25 M, Base 68.98 M; 56.28 / 59.86 / 70.60 M if the
    official code's never-used parameters were counted too).
    """
    return _create((2, 2, 2, 2), True, **kwargs)


@register_model(input="image", in_chans=3, img_size=224, paper=PAPER)
def hifuse_small_paper(**kwargs: Any) -> HiFuse:
    """HiFuse-Small with the depthwise IRMLP 3×3 (8.90 GMAC); paper's 93.82 M params match no official code version."""
    return _create((2, 2, 6, 2), True, **kwargs)


@register_model(input="image", in_chans=3, img_size=224, paper=PAPER)
def hifuse_base_paper(**kwargs: Any) -> HiFuse:
    """HiFuse-Base with the depthwise IRMLP 3×3 (11.07 GMAC); paper's 127.80 M params match no official code version."""
    return _create((2, 2, 18, 2), True, **kwargs)


# ------------------------------------------------------------------------------------------- official checkpoints
#: Official keys that the official forward never uses (regular expressions on the full key); dropped by name.
OFFICIAL_UNUSED_KEYS: tuple[str, ...] = (
    r"layers[1-4]\.blocks\.\d+\.norm2\.(weight|bias)",  # every global block's norm2
    r"norm\.(weight|bias)",  # global branch final norm
    r"head\.(weight|bias)",  # global branch head
    r"fu1\.(Updim|W3)\.(conv\.(weight|bias)|bn\.(weight|bias|running_mean|running_var|num_batches_tracked))",
    r"fu1\.norm1\.(weight|bias)",
    r"fu[2-4]\.W\.(conv\.(weight|bias)|bn\.(weight|bias|running_mean|running_var|num_batches_tracked))",
    r"fu[2-4]\.norm2\.(weight|bias)",
    # derivable buffer (recomputed from the window size), not a parameter
    r"layers[1-4]\.blocks\.\d+\.attn\.relative_position_index",
)
_UNUSED_RE = re.compile("|".join(f"(?:{p})" for p in OFFICIAL_UNUSED_KEYS))

_HFF_RENAMES = {
    "W_l.": "local_proj.",
    "W_g.": "global_proj.",
    "Updim.": "prev_proj.",
    "spatial.conv.": "spatial_attn.conv.",
    "spatial.bn.": "spatial_attn.bn.",
    "se.0.": "channel_attn.fc1.",
    "se.2.": "channel_attn.fc2.",
    "norm3.": "out_norm.",
    "residual.conv1.conv.": "irmlp.conv3x3.",
    "residual.bn1.": "irmlp.bn1.",
    "residual.conv2.conv.": "irmlp.expand.",
    "residual.conv3.conv.": "irmlp.project.",
    "residual.conv3.bn.": "irmlp.bn2.",
}


def _map_official_key(key: str) -> str | None:
    """Our name for an official key (``None`` if it is a known-unused key); ``KeyError`` if unknown."""
    if _UNUSED_RE.fullmatch(key):
        return None
    m = re.fullmatch(r"downsample_layers\.(\d)\.(.+)", key)
    if m:
        return f"local_downsample.{m[1]}.{m[2]}"
    m = re.fullmatch(r"stages\.(\d)\.(\d+)\.((?:dwconv|norm|pwconv)\.(?:weight|bias))", key)
    if m:
        return f"local_stages.{m[1]}.{m[2]}.{m[3]}"
    m = re.fullmatch(r"patch_embed\.((?:proj|norm)\.(?:weight|bias))", key)
    if m:
        return f"patch_embed.{m[1]}"
    m = re.fullmatch(r"layers([1-4])\.blocks\.(\d+)\.(.+)", key)
    if m:
        rest = {"fc1.weight": "fc.weight", "fc1.bias": "fc.bias"}.get(m[3], m[3])
        if rest.split(".")[0] in ("norm1", "attn", "fc"):
            return f"global_stages.{int(m[1]) - 1}.blocks.{m[2]}.{rest}"
    # Assumed Swin-style names for the merging layer at the start of stages 2-4 (layers{i}.downsample.{norm,reduction}).
    m = re.fullmatch(r"layers([2-4])\.downsample\.((?:norm|reduction)\.(?:weight|bias))", key)
    if m:
        return f"global_stages.{int(m[1]) - 1}.downsample.{m[2]}"
    m = re.fullmatch(r"conv_norm\.(weight|bias)", key)
    if m:
        return f"head_norm.{m[1]}"
    m = re.fullmatch(r"conv_head\.(weight|bias)", key)
    if m:
        return f"head.{m[1]}"
    m = re.fullmatch(r"fu([1-4])\.(.+)", key)
    if m:
        i, rest = int(m[1]), m[2]
        fuse = {"norm2.": "fuse_norm.", "W.": "fuse_conv."} if i == 1 else {"norm1.": "fuse_norm.", "W3.": "fuse_conv."}
        for old, new in {**_HFF_RENAMES, **fuse}.items():
            if rest.startswith(old):
                return f"fusion.{i - 1}.{new}{rest[len(old) :]}"
    raise KeyError(key)


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> dict[str, torch.Tensor]:
    """Map an official HiFuse state dict (``main_model.py`` key names) onto :class:`HiFuse` names.

    Known-unused keys (:data:`OFFICIAL_UNUSED_KEYS`) are dropped by name; unknown keys raise ``KeyError`` when
    ``strict`` (else they are skipped). Works on partial state dicts (e.g. the per-block golden files). Tensors are not
    copied or cast.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        try:
            new = _map_official_key(k)
        except KeyError:
            unknown.append(k)
            continue
        if new is not None:
            out[new] = v
    if unknown and strict:
        raise KeyError(f"{len(unknown)} unrecognised HiFuse key(s): {', '.join(unknown[:8])}{' …' if len(unknown) > 8 else ''}")
    return out


def official_depths(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks per stage in an official checkpoint (local and global branch must agree)."""
    local = [0] * 4
    glob = [0] * 4
    for k in state_dict:
        m = re.match(r"stages\.(\d)\.(\d+)\.", k)
        if m:
            local[int(m[1])] = max(local[int(m[1])], int(m[2]) + 1)
        m = re.match(r"layers([1-4])\.blocks\.(\d+)\.", k)
        if m:
            glob[int(m[1]) - 1] = max(glob[int(m[1]) - 1], int(m[2]) + 1)
    if local != glob:
        raise ValueError(f"inconsistent HiFuse checkpoint: local depths {tuple(local)} vs global depths {tuple(glob)}")
    return tuple(local)


@register_official("hifuse_tiny", "hifuse_small", "hifuse_base")
def load_official_hifuse(name: str, state_dict: Mapping[str, torch.Tensor], **model_kwargs: Any) -> HiFuse:
    """Build ``name`` and load an official HiFuse checkpoint (variant and class count checked / inferred)."""
    if name not in _VARIANT_DEPTHS:
        raise ValueError(f"no official HiFuse checkpoints exist for {name!r}; use one of {', '.join(_VARIANT_DEPTHS)}")
    depths = official_depths(state_dict)
    found = next((n for n, d in _VARIANT_DEPTHS.items() if d == depths), None)
    dstr = ",".join(map(str, depths))
    if found is None:
        raise ValueError(f"checkpoint has depths {dstr}, which is no HiFuse variant ({', '.join(_VARIANT_DEPTHS)})")
    if found != name:
        raise ValueError(f"checkpoint is {found} (depths {dstr}) but {name} was requested; use load_official({found!r}, …)")
    if "conv_head.weight" not in state_dict:
        raise ValueError("checkpoint has no classifier (conv_head.weight); is this an official HiFuse state dict?")
    ckpt_classes = int(state_dict["conv_head.weight"].shape[0])
    num_classes = model_kwargs.setdefault("num_classes", ckpt_classes)
    if num_classes != ckpt_classes:
        raise ValueError(
            f"checkpoint head has {ckpt_classes} classes but num_classes={num_classes} was requested; load it with "
            f"num_classes={ckpt_classes} and call model.reset_classifier({num_classes}) to fine-tune"
        )
    model_kwargs.setdefault("in_chans", int(state_dict["downsample_layers.0.0.weight"].shape[1]))
    from glfuse.models._registry import model_entrypoint

    model = model_entrypoint(name)(**model_kwargs)
    sd = convert_official_state_dict(state_dict)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"official {name} checkpoint does not fit: missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.glfuse_cfg = {"arch": name, "model_args": dict(model_kwargs)}
    return model
