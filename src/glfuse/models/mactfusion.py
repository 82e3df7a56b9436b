"""MACTFusion: lightweight cross transformer for adaptive multimodal medical image fusion.

Paper: J. Xie, J. Li, et al., "MACTFusion: Lightweight Cross Transformer for Adaptive Multimodal Medical Image
Fusion", IEEE Journal of Biomedical and Health Informatics (JBHI), 2024. Official code: github.com/millieXie/MACTFusion
(``Fusionnet.py``, ``Maxvit.py``, ``CrossMaxvit.py``). This is a clean-room re-implementation from the written spec.

Two branches with separate weights (``vis_*`` and ``ir_*``), all at full resolution, widths 16 → 32 → 48:

* :class:`DFE` (official ``T_conv``): cascaded 3×3 convs + a 31×31 grouped conv stage, no activations;
* two :class:`GRDB` (official ``RGBD``): dense 3×3 block + learnable-Sobel gradient path;
* one :class:`~glfuse.layers.maxvit.MaxViTBlock` (SD-Conv, 8×8 block attention, 8×8 grid attention);
* :class:`CrossModalityFusion` (official ``MaxFA_Module``): :class:`SAFM` aligns the other branch's statistics to this
  branch, a :class:`~glfuse.layers.maxvit.CrossMaxViTBlock` attends from this branch to the aligned other branch, and a
  1-channel sigmoid gate from the other branch mixes the result in;
* reconstruction: 1×1 → 3×3 → 3×3 convs (reflection padding), each followed by LeakyReLU 0.1.

:class:`MACTFusion` reproduces the official network exactly, including the quirks its checkpoint was trained with (each
is marked ``quirk`` where it happens), but does not build the modules the official forward never uses (``mb2_conv`` of
the two self blocks, SAFM's ``conv_noshared``, the Dropout2d layers): 571,035 parameters. The official CT–MRI
checkpoint loads with ``glfuse.load_official("mactfusion", "fusion_model_CTMRI.pth")``.

Differences from the official code that do not change the maths: ``forward(vis_y, ir)`` takes the **Y channel** of the
(possibly colour) first input directly, ``[B, 1, H, W]``, where the official forward takes a 3-channel YCrCb tensor and
uses only its channel 0; any H, W are accepted (reflect-padded to a multiple of 8, output cropped back); the 31×31
grouped convolution is computed with float64 FFTs (:class:`~glfuse.layers.conv.FFTConv2d`; the default NCHW kernel
takes ~9 s per 256² image on CPU) and 1×1 convolutions as GEMMs on the channels-last token view
(:class:`~glfuse.layers.conv.PointwiseConv2d`); feature maps are kept channels-last; optional activation checkpointing
(:meth:`MACTFusion.set_grad_checkpointing`) for training memory.

Each block's forward is the reference maths. For CPU inference, ``glfuse.models.prepare_inference(model, "fast")``
switches in the variants of :mod:`glfuse.models.mactfusion_fast` and :mod:`glfuse.layers.maxvit_fast` (eval BatchNorms
folded into the SD-Conv convolutions, each linear / convolution with its bias, activation or residual add in one oneDNN
kernel, fresh tensors updated in place, with ≥ 2 intra-op threads the two branches side by side);
``prepare_inference(model, "portable")`` computes the 31×31 convolution directly (no FFT ops, for export).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glfuse.layers.conv import FFTConv2d, PointwiseConv2d, fft_conv2d
from glfuse.layers.maxvit import CheckpointMixin, CrossMaxViTBlock, MaxViTBlock
from glfuse.layers.window import relative_position_index
from glfuse.models._registry import register_model, register_official

__all__ = [
    "MACTFusion",
    "DFE",
    "GRDB",
    "SAFM",
    "CrossModalityFusion",
    "ReconLayer",
    "fft_conv2d",
    "convert_official_state_dict",
    "mactfusion",
]


# ----------------------------------------------------------------------------------------------------------------------
# blocks


def _conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class DFE(CheckpointMixin, nn.Module):
    """Detail feature extraction (official ``T_conv``): cascaded 3×3 convs, then a 31×31 grouped stage; no activations."""

    def __init__(self, in_chans: int = 1, dim: int = 16, large_kernel: int = 31) -> None:
        super().__init__()
        c = dim // 4
        # quirk: the slides say 1×1 here; the code uses 3×3 (+ GroupNorm). Attribute names in the official code say
        # 1×1/3×3/5×5/7×7 but every one of conv2..conv4 is 3×3. All convs are bias-free, no nonlinearity anywhere.
        self.conv1 = _conv3x3(in_chans, c, bias=False)
        self.norm1 = nn.GroupNorm(c, c)
        self.conv2 = _conv3x3(c, c, bias=False)
        self.conv3 = _conv3x3(c, c, bias=False)
        self.conv4 = _conv3x3(c, c, bias=False)
        # second stage (not in the slides): 31×31 conv 16→4 with 4 groups, GroupNorm, cross-added 3×3 convs, residual.
        # Computed with FFTs (same maths, ~100× faster on CPU); prepare_inference(…, "portable") makes it a plain conv.
        self.conv_large = FFTConv2d(dim, c, large_kernel, padding=large_kernel // 2, groups=c, bias=False)
        self.norm_large = nn.GroupNorm(c, c)
        self.conv2b = _conv3x3(c, c, bias=False)
        self.conv3b = _conv3x3(c, c, bias=False)
        self.conv4b = _conv3x3(c, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 4-channel maps: plain NCHW is much faster than channels_last here (cat, GroupNorm); back to channels_last after
        x = x.contiguous()
        c1 = self.norm1(self.conv1(x))
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        o = torch.cat([c1, c2, c3, c4], dim=1)
        d1 = self.norm_large(self.conv_large(o))
        d2 = self.conv2b(d1 + c4)
        d3 = self.conv3b(d2 + c3)
        d4 = self.conv4b(d3 + c2)
        return (torch.cat([d1, d2, d3, d4], dim=1) + o).contiguous(memory_format=torch.channels_last)


class GRDB(nn.Module):
    """Gradient residual dense block (official ``RGBD``): 2-layer dense block + learnable-Sobel gradient path.

    ``d1 = LReLU_0.2(conv(x))``, ``d2 = LReLU_0.2(conv([x, d1]))``, ``g = |Sobel_x ∗ x| + |Sobel_y ∗ x|`` (depthwise),
    ``out = LReLU_0.1(fuse([x, d1, d2]) + grad_proj(g))`` (both 1×1).
    """

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.dense1 = _conv3x3(in_chans, in_chans)
        self.dense2 = _conv3x3(2 * in_chans, in_chans)
        self.fuse = PointwiseConv2d(3 * in_chans, out_chans)
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        # quirk: the Sobel kernels are ordinary trainable parameters (drifted in the official checkpoint).
        self.sobel_x = nn.Parameter(sobel.expand(in_chans, 1, 3, 3).clone())
        self.sobel_y = nn.Parameter(sobel.t().expand(in_chans, 1, 3, 3).clone())
        self.grad_proj = PointwiseConv2d(in_chans, out_chans)

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``|Sobel_x ∗ x| + |Sobel_y ∗ x|`` per channel."""
        c = x.shape[1]
        return F.conv2d(x, self.sobel_x, padding=1, groups=c).abs() + F.conv2d(x, self.sobel_y, padding=1, groups=c).abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = torch.cat([x, F.leaky_relu(self.dense1(x), 0.2)], dim=1)
        x2 = torch.cat([x1, F.leaky_relu(self.dense2(x1), 0.2)], dim=1)
        return F.leaky_relu(self.fuse(x2) + self.grad_proj(self.gradient(x)), 0.1, inplace=True)  # on the fresh sum


class SAFM(nn.Module):
    """Statistics-aligned feature modulation (official ``SAM``): ``IN(F2)·(γ + σ(F1)) + (β + μ(F1))``.

    ``S = GELU(conv([F1, F2]))``, ``γ = conv_γ(S)``, ``β = conv_β(S)``; μ, σ per sample and channel (σ unbiased, no eps);
    IN is ``InstanceNorm2d(affine=False, eps=1e-5)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shared = _conv3x3(2 * dim, dim)
        # (the official module also builds ``conv_noshared`` (3×3 + GELU), never used: not built here)
        self.gamma = _conv3x3(dim, dim)
        self.beta = _conv3x3(dim, dim)
        for conv in (self.gamma, self.beta):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        s = F.gelu(self.shared(torch.cat([f1, f2], dim=1)))
        n = f1.shape[2] * f1.shape[3]
        mean1 = f1.mean(dim=(2, 3), keepdim=True)
        std1 = (f1 - mean1).square().sum(dim=(2, 3), keepdim=True).div(n - 1).sqrt()  # unbiased std, no eps
        f2c = f2 - f2.mean(dim=(2, 3), keepdim=True)
        # InstanceNorm2d(affine=False, eps=1e-5); two-pass statistics (torch.var_mean's Welford pass is ~10× slower)
        f2n = f2c * torch.rsqrt(f2c.square().sum(dim=(2, 3), keepdim=True).div(n) + 1e-5)
        return f2n * (self.gamma(s) + std1) + (self.beta(s) + mean1)


class CrossModalityFusion(CheckpointMixin, nn.Module):
    """Adaptive cross-modality fusion transformer (official ``MaxFA_Module``): ``F1 + T ⊙ (F1 + CrossMaxViT(F1, SAFM))``."""

    def __init__(self, dim: int, num_heads: int = 4, partition: int = 8) -> None:
        super().__init__()
        self.safm = SAFM(dim)
        self.cross = CrossMaxViTBlock(dim, num_heads, partition)
        self.gate = PointwiseConv2d(dim, 1)

    def _gated(self, f1: torch.Tensor, f2: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
        # quirk: the gate is a learned 1-channel projection of the *other* modality's features F2 (slides: sigmoid(F1)),
        # and it multiplies F1 + F̃c (slides: F̃c only).
        gate = torch.sigmoid(self.gate(f2))
        return f1 + gate * (f1 + fc)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        """``f1`` own branch, ``f2`` other branch, both ``[B, C, H, W]``."""
        f2_aligned = self._run(self.safm, f1, f2)
        fc = self.cross(f1, f2_aligned)
        return self._run(self._gated, f1, f2, fc)


class ReconLayer(nn.Module):
    """Reconstruction layer: reflection pad → conv → LeakyReLU 0.1."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int) -> None:
        super().__init__()
        self.pad = kernel_size // 2
        self.conv = PointwiseConv2d(in_chans, out_chans) if kernel_size == 1 else nn.Conv2d(in_chans, out_chans, kernel_size)
        # (the official layer also builds a Dropout2d(0.5) that is never applied: not built here)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.leaky_relu(self.conv(x), 0.1)


# ----------------------------------------------------------------------------------------------------------------------
# network


class MACTFusion(CheckpointMixin, nn.Module):
    """MACTFusion fusion network: ``forward(vis_y, ir) -> fused Y`` (raw, not clamped), ``[B, 1, H, W]`` each.

    ``vis_y``: Y channel of the input that may be colour (MRI for CT–MRI, PET/SPECT for PET/SPECT–MRI), in [0, 1];
    ``ir``: the other, grey input (CT for CT–MRI, MRI otherwise). The official forward takes a 3-channel YCrCb tensor and
    uses only channel 0; this one takes that Y channel directly and rejects anything but one channel.
    """

    def __init__(self, dims: tuple[int, int, int] = (16, 32, 48), num_heads: int = 4, partition: int = 8,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        d0, d1, d2 = dims
        self.partition = partition
        self.vis_dfe, self.ir_dfe = DFE(1, d0), DFE(1, d0)
        self.vis_grdb1, self.ir_grdb1 = GRDB(d0, d1), GRDB(d0, d1)
        self.vis_grdb2, self.ir_grdb2 = GRDB(d1, d2), GRDB(d1, d2)
        self.vis_maxvit = MaxViTBlock(d2, num_heads, partition)
        self.ir_maxvit = MaxViTBlock(d2, num_heads, partition)
        self.vis_fusion = CrossModalityFusion(d2, num_heads, partition)
        self.ir_fusion = CrossModalityFusion(d2, num_heads, partition)
        # quirk: the official `is_last` flag is ignored, so the last layer also ends in LeakyReLU 0.1 (no tanh/clamp).
        self.decoder = nn.Sequential(ReconLayer(2 * d2, d2, 1), ReconLayer(d2, 32, 3), ReconLayer(32, 1, 3))
        # channels_last everywhere except the 4-channel DFE (much faster in plain NCHW)
        for m in (self.vis_grdb1, self.ir_grdb1, self.vis_grdb2, self.ir_grdb2, self.vis_maxvit, self.ir_maxvit,
                  self.vis_fusion, self.ir_fusion, self.decoder):
            m.to(memory_format=torch.channels_last)
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (timm-style flag): ~3× less training memory, ~1.3× slower."""
        for m in self.modules():
            if isinstance(m, CheckpointMixin):
                m.grad_checkpointing = enable

    def branch(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """One modality's features: DFE → GRDB → GRDB → MaxViT block (``prefix`` "vis" or "ir")."""
        x = self._run(getattr(self, f"{prefix}_dfe"), x)
        x = self._run(getattr(self, f"{prefix}_grdb1"), x)
        x = self._run(getattr(self, f"{prefix}_grdb2"), x)
        return getattr(self, f"{prefix}_maxvit")(x)

    def _pad(self, vis_y: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked inputs, reflect-padded to a multiple of the partition (official: H, W must be multiples of 8)."""
        for name, t in (("vis_y", vis_y), ("ir", ir)):
            if t.ndim != 4 or t.shape[1] != 1:
                raise ValueError(f"MACTFusion.forward: {name} must be [B, 1, H, W] (the Y channel / a grey image), "
                                 f"got {tuple(t.shape)}")
        if vis_y.shape != ir.shape:
            raise ValueError(f"MACTFusion.forward: vis_y {tuple(vis_y.shape)} and ir {tuple(ir.shape)} differ in shape")
        h, w = vis_y.shape[-2:]
        ph, pw = (-h) % self.partition, (-w) % self.partition

        def prep(t: torch.Tensor) -> torch.Tensor:
            if ph or pw:
                t = F.pad(t, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
            return t.contiguous(memory_format=torch.channels_last)

        return prep(vis_y), prep(ir)

    def forward(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        vis_p, ir_p = self._pad(vis_y, ir)
        h, w = vis_y.shape[-2:]
        f_vis, f_ir = self.branch(vis_p, "vis"), self.branch(ir_p, "ir")
        fused = torch.cat([self.vis_fusion(f_vis, f_ir), self.ir_fusion(f_ir, f_vis)], dim=1)
        return self._run(self.decoder, fused)[:, :, :h, :w]


# ----------------------------------------------------------------------------------------------------------------------
# official checkpoint conversion

#: official keys never used by the official forward pass (dropped by name)
_UNUSED = re.compile(r"^(vis|inf)_max\.mb2_conv\.|^(vis|inf)_cross\.t1_adap_1\.conv_noshared\.")

_RENAMES: list[tuple[str, str]] = [
    # branches
    (r"^vis_conv\.", "vis_dfe."), (r"^inf_conv\.", "ir_dfe."),
    (r"^vis_rgbd(\d)\.", r"vis_grdb\1."), (r"^inf_rgbd(\d)\.", r"ir_grdb\1."),
    (r"^vis_max\.", "vis_maxvit."), (r"^inf_max\.", "ir_maxvit."),
    (r"^vis_cross\.", "vis_fusion."), (r"^inf_cross\.", "ir_fusion."),
    (r"^decode\.(\d)\.conv2d\.", r"decoder.\1.conv."),
    # DFE (T_conv)
    (r"\.conv11\.0\.0\.", ".conv1."), (r"\.conv11\.1\.", ".norm1."),
    (r"\.conv33\.0\.0\.", ".conv2."), (r"\.conv55\.0\.0\.", ".conv3."), (r"\.conv77\.0\.0\.", ".conv4."),
    (r"\.conv11_\.0\.0\.", ".conv_large."), (r"\.conv11_\.1\.", ".norm_large."),
    (r"\.conv33_\.0\.0\.", ".conv2b."), (r"\.conv55_\.0\.0\.", ".conv3b."), (r"\.conv77_\.0\.0\.", ".conv4b."),
    # GRDB (RGBD)
    (r"\.dense\.conv1\.conv\.", ".dense1."), (r"\.dense\.conv2\.conv\.", ".dense2."),
    (r"\.convdown\.conv\.", ".fuse."), (r"\.convup\.conv\.", ".grad_proj."),
    (r"\.sobelconv\.convx\.weight$", ".sobel_x"), (r"\.sobelconv\.convy\.weight$", ".sobel_y"),
    # fusion module (MaxFA_Module)
    (r"_fusion\.t1_adap_1\.conv_shared\.0\.", "_fusion.safm.shared."),
    (r"_fusion\.t1_adap_1\.conv_gamma\.", "_fusion.safm.gamma."),
    (r"_fusion\.t1_adap_1\.conv_beta\.", "_fusion.safm.beta."),
    (r"_fusion\.select1\.conv\.", "_fusion.gate."),
    (r"_fusion\.sam\.mb1_conv\.", "_fusion.cross.sdconv_q."), (r"_fusion\.sam\.mb2_conv\.", "_fusion.cross.sdconv_kv."),
    (r"_fusion\.sam\.", "_fusion.cross."),
    (r"_maxvit\.mb1_conv\.", "_maxvit.sdconv."),
    # SD-Conv (MAConv: BN, timm DepthwiseSeparableConv, SimAM, 1×1)
    (r"\.main_path\.0\.", ".norm."), (r"\.main_path\.1\.conv_dw\.", ".dw."), (r"\.main_path\.1\.bn1\.", ".dw_norm."),
    (r"\.main_path\.1\.conv_pw\.", ".pw."), (r"\.main_path\.1\.bn2\.", ".pw_norm."), (r"\.main_path\.3\.", ".proj."),
    # transformer sub-blocks
    (r"\.block_transformer\.", ".window."), (r"\.grid_transformer\.", ".grid."),
    (r"\.norm_1\.", ".norm1."), (r"\.norm_2\.", ".norm2."),
    (r"\.attention\.relative_position_(bias_table|index)$", r".attn.rel_pos.relative_position_\1"),
    (r"\.attention\.qkv_mapping\.", ".attn.qkv."), (r"\.attention\.", ".attn."),
]


def _rename(key: str) -> str:
    for pat, rep in _RENAMES:
        key = re.sub(pat, rep, key)
    return key


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], partition: int = 8) -> dict[str, torch.Tensor]:
    """Map an official MACTFusion state dict (``Fusionnet.MACTFusion``) to :class:`MACTFusion` key names.

    Drops exactly the keys of modules the official forward never uses (``{vis,inf}_max.mb2_conv.*``,
    ``{vis,inf}_cross.t1_adap_1.conv_noshared.*``) and the constant ``relative_position_index`` buffers (after checking
    that they equal ours, i.e. the token order matches).
    """
    expected_index = relative_position_index(partition)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _UNUSED.search(key):
            continue
        new = _rename(key)
        if new.endswith(".relative_position_index"):
            if not torch.equal(value.to(torch.long), expected_index):
                raise ValueError(f"official key {key!r}: relative_position_index differs from the Swin indexing this "
                                 "implementation assumes")
            continue
        out[new] = value
    return out


@register_official("mactfusion")
def _load_official_mactfusion(name: str, state_dict: Mapping[str, torch.Tensor], **model_kwargs: Any) -> MACTFusion:
    """Converter for the official checkpoint (e.g. ``fusion_model_CTMRI.pth``; ``image_vis`` = MRI, ``image_ir`` = CT)."""
    model = MACTFusion(**model_kwargs)
    sd = convert_official_state_dict(state_dict, partition=model.partition)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    if missing or unexpected:
        official_name = {_rename(k): k for k in state_dict}

        def show(keys: list[str]) -> str:
            return f"{keys[:10]}{' …' if len(keys) > 10 else ''}"

        raise KeyError(
            f"{name}: checkpoint does not match the official MACTFusion layout: {len(missing)} missing key(s) "
            f"(our names) {show(missing)}; {len(unexpected)} unexpected key(s) (checkpoint names) "
            f"{show([official_name.get(k, k) for k in unexpected])}")
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(ours[k].shape)}"
           for k in ours if sd[k].shape != ours[k].shape]
    if bad:
        raise ValueError(f"{name}: shape mismatch for {len(bad)} tensor(s): {bad[:10]}")
    model.load_state_dict(sd, strict=True)
    model.glfuse_cfg = {"arch": name, "model_args": dict(model_kwargs)}
    return model


@register_model(input="pair", in_chans=1, img_size=None,
                paper="Xie et al., MACTFusion: lightweight cross transformer for adaptive multimodal medical image "
                      "fusion, JBHI 2024")
def mactfusion(**kwargs: Any) -> MACTFusion:
    """MACTFusion (Xie et al., JBHI 2024), exactly the official network: 571,035 parameters."""
    return MACTFusion(**kwargs)
