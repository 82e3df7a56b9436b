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
grouped convolution is computed with float64 FFTs (the default NCHW kernel takes ~9 s per 256² image on CPU);
feature maps are kept channels-last and attention uses ``scaled_dot_product_attention``; optional activation
checkpointing (:meth:`MACTFusion.set_grad_checkpointing`) for training memory. Without autograd, eval BatchNorms are
folded into the SD-Conv convolutions, each linear / convolution runs with its bias, activation or residual add in one
oneDNN kernel (:mod:`glfuse.layers.fused`; plain eager ops where unavailable), fresh tensors are updated in place, and
with ≥ 2 intra-op threads the two branches run side by side (:attr:`MACTFusion.parallel_branches`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glfuse.layers import fused
from glfuse.layers.maxvit import CheckpointMixin, CrossMaxViTBlock, MaxViTBlock, relative_position_index
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
# FFT convolution (same maths as F.conv2d, computed in float64)


def _fast_len(n: int) -> int:
    """Smallest 5-smooth integer ≥ n (fast FFT length)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_conv2d(x: torch.Tensor, weight: torch.Tensor, padding: int, groups: int = 1) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=padding, groups=groups)`` (stride 1, zero padding, no bias) via float64 FFTs.

    Exact up to float64 rounding (far below float32 resolution); fast for large kernels.
    """
    b, cin, h, w = x.shape
    cout, cg, kh, kw = weight.shape
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    nh, nw = _fast_len(h + kh - 1), _fast_len(w + kw - 1)
    xf = torch.fft.rfft2(x.to(torch.float64), s=(nh, nw))
    kf = torch.fft.rfft2(weight.to(torch.float64).flip(-2, -1), s=(nh, nw))  # correlation = convolution with flip
    og = cout // groups
    xf = xf.reshape(b, groups, 1, cg, nh, nw // 2 + 1)
    kf = kf.reshape(1, groups, og, cg, nh, nw // 2 + 1)
    yf = (xf * kf).sum(3).reshape(b, cout, nh, nw // 2 + 1)
    y = torch.fft.irfft2(yf, s=(nh, nw))
    # full linear convolution index n ↔ correlation output y: n = y + k − 1 − padding
    oh, ow = kh - 1 - padding, kw - 1 - padding
    return y[:, :, oh : oh + ho, ow : ow + wo].to(x.dtype).contiguous()


# ----------------------------------------------------------------------------------------------------------------------
# blocks


def _conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


class DFE(CheckpointMixin, nn.Module):
    """Detail feature extraction (official ``T_conv``): cascaded 3×3 convs, then a 31×31 grouped stage; no activations."""

    def __init__(self, in_chans: int = 1, dim: int = 16, large_kernel: int = 31) -> None:
        super().__init__()
        c = dim // 4
        self.use_fft = True  # compute the 31×31 grouped conv with FFTs (same maths, ~100× faster on CPU)
        # quirk: the slides say 1×1 here; the code uses 3×3 (+ GroupNorm). Attribute names in the official code say
        # 1×1/3×3/5×5/7×7 but every one of conv2..conv4 is 3×3. All convs are bias-free, no nonlinearity anywhere.
        self.conv1 = _conv3x3(in_chans, c, bias=False)
        self.norm1 = nn.GroupNorm(c, c)
        self.conv2 = _conv3x3(c, c, bias=False)
        self.conv3 = _conv3x3(c, c, bias=False)
        self.conv4 = _conv3x3(c, c, bias=False)
        # second stage (not in the slides): 31×31 conv 16→4 with 4 groups, GroupNorm, cross-added 3×3 convs, residual
        self.conv_large = nn.Conv2d(dim, c, large_kernel, padding=large_kernel // 2, groups=c, bias=False)
        self.norm_large = nn.GroupNorm(c, c)
        self.conv2b = _conv3x3(c, c, bias=False)
        self.conv3b = _conv3x3(c, c, bias=False)
        self.conv4b = _conv3x3(c, c, bias=False)

    def _large(self, o: torch.Tensor) -> torch.Tensor:
        conv = self.conv_large
        if self.use_fft:
            return fft_conv2d(o, conv.weight, conv.padding[0], conv.groups)
        return conv(o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 4-channel maps: plain NCHW is much faster than channels_last here (cat, GroupNorm); back to channels_last after
        x = x.contiguous()
        c1 = self.norm1(self.conv1(x))
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        o = torch.cat([c1, c2, c3, c4], dim=1)
        d1 = self.norm_large(self._large(o))
        d2 = self.conv2b(d1 + c4)
        d3 = self.conv3b(d2 + c3)
        d4 = self.conv4b(d3 + c2)
        return (torch.cat([d1, d2, d3, d4], dim=1) + o).contiguous(memory_format=torch.channels_last)


class GRDB(nn.Module):
    """Gradient residual dense block (official ``RGBD``): 2-layer dense block + learnable-Sobel gradient path."""

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.dense1 = _conv3x3(in_chans, in_chans)
        self.dense2 = _conv3x3(2 * in_chans, in_chans)
        self.fuse = nn.Conv2d(3 * in_chans, out_chans, 1)
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        # quirk: the Sobel kernels are ordinary trainable parameters (drifted in the official checkpoint).
        self.sobel_x = nn.Parameter(sobel.expand(in_chans, 1, 3, 3).clone())
        self.sobel_y = nn.Parameter(sobel.t().expand(in_chans, 1, 3, 3).clone())
        self.grad_proj = nn.Conv2d(in_chans, out_chans, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # convolution + activation / + add run as one kernel at inference (glfuse.layers.fused; eager otherwise)
        d1 = fused.conv2d(x, self.dense1.weight, self.dense1.bias, padding=1, act="leaky_relu", slope=0.2)
        x1 = torch.cat([x, d1], dim=1)
        d2 = fused.conv2d(x1, self.dense2.weight, self.dense2.bias, padding=1, act="leaky_relu", slope=0.2)
        x2 = torch.cat([x1, d2], dim=1)
        c = x.shape[1]
        gx, gy = F.conv2d(x, self.sobel_x, padding=1, groups=c), F.conv2d(x, self.sobel_y, padding=1, groups=c)
        g = gx.abs() + gy.abs() if torch.is_grad_enabled() else gx.abs_().add_(gy.abs_())
        out = fused.conv2d(x2, self.fuse.weight, self.fuse.bias)
        out = fused.conv2d(g, self.grad_proj.weight, self.grad_proj.bias, add=out)  # fuse(x2) + grad_proj(g)
        return F.leaky_relu(out, 0.1, inplace=True)


class SAFM(nn.Module):
    """Statistics-aligned feature modulation (official ``SAM``): ``IN(F2)·(γ + σ(F1)) + (β + μ(F1))``."""

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
        if not torch.is_grad_enabled():
            return self._forward_eval(f1, f2)
        s = F.gelu(self.shared(torch.cat([f1, f2], dim=1)))
        n = f1.shape[2] * f1.shape[3]
        mean1 = f1.mean(dim=(2, 3), keepdim=True)
        std1 = (f1 - mean1).square().sum(dim=(2, 3), keepdim=True).div(n - 1).sqrt()  # unbiased std, no eps
        f2c = f2 - f2.mean(dim=(2, 3), keepdim=True)
        # InstanceNorm2d(affine=False, eps=1e-5); two-pass statistics (torch.var_mean's Welford pass is ~10× slower)
        f2n = f2c * torch.rsqrt(f2c.square().sum(dim=(2, 3), keepdim=True).div(n) + 1e-5)
        return f2n * (self.gamma(s) + std1) + (self.beta(s) + mean1)

    def _forward_eval(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        """Inference (no autograd): same maths as :meth:`forward`, γ/β convs as one conv, in-place elementwise ops."""
        sh = self.shared
        s = fused.conv2d(torch.cat([f1, f2], dim=1), sh.weight, sh.bias, padding=1, act="gelu")
        c = f1.shape[1]
        gb = fused.conv2d(s, torch.cat([self.gamma.weight, self.beta.weight]), torch.cat([self.gamma.bias, self.beta.bias]),
                          padding=1)
        n = f1.shape[2] * f1.shape[3]
        mean1 = f1.mean(dim=(2, 3), keepdim=True)
        std1 = (f1 - mean1).square_().sum(dim=(2, 3), keepdim=True).div_(n - 1).sqrt_()
        f2c = f2 - f2.mean(dim=(2, 3), keepdim=True)
        f2n = f2c.mul_(torch.rsqrt(f2c.square().sum(dim=(2, 3), keepdim=True).div_(n).add_(1e-5)))
        return f2n.mul_(gb[:, :c].add_(std1)).add_(gb[:, c:].add_(mean1))


class CrossModalityFusion(CheckpointMixin, nn.Module):
    """Adaptive cross-modality fusion transformer (official ``MaxFA_Module``): ``F1 + T ⊙ (F1 + CrossMaxViT(F1, SAFM))``."""

    def __init__(self, dim: int, num_heads: int = 4, partition: int = 8) -> None:
        super().__init__()
        self.safm = SAFM(dim)
        self.cross = CrossMaxViTBlock(dim, num_heads, partition)
        self.gate = nn.Conv2d(dim, 1, 1)

    def _gated(self, f1: torch.Tensor, f2: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
        # quirk: the gate is a learned 1-channel projection of the *other* modality's features F2 (slides: sigmoid(F1)),
        # and it multiplies F1 + F̃c (slides: F̃c only).
        gate = fused.conv2d(f2, self.gate.weight, self.gate.bias, act="sigmoid")
        if torch.is_grad_enabled():
            return f1 + gate * (f1 + fc)
        return fc.add_(f1).mul_(gate).add_(f1)  # same maths in place on the fresh fc (inference)

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
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size)
        # (the official layer also builds a Dropout2d(0.5) that is never applied: not built here)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return fused.conv2d(x, self.conv.weight, self.conv.bias, act="leaky_relu", slope=0.1)


# ----------------------------------------------------------------------------------------------------------------------
# network


def _side_by_side(fa: Callable[[], torch.Tensor], fb: Callable[[], torch.Tensor],
                  n_threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fa(), fb())`` computed concurrently in two threads with ``n_threads // 2`` intra-op threads each.

    ``torch.set_num_threads`` is process-wide: it is lowered for the duration of the call and restored afterwards.
    """
    half = max(1, n_threads // 2)
    inference = torch.is_inference_mode_enabled()  # grad / inference mode are thread-local: carried to the worker
    out: list[Any] = [None, None]
    err: list[BaseException] = []

    def work(i: int, fn: Callable[[], torch.Tensor]) -> None:
        try:
            torch.set_num_threads(half)
            with torch.inference_mode(inference), torch.no_grad():
                out[i] = fn()
        except BaseException as e:  # re-raised in the caller
            err.append(e)

    worker = threading.Thread(target=work, args=(0, fa))
    try:
        worker.start()
        work(1, fb)
        worker.join()
    finally:
        torch.set_num_threads(n_threads)
    if err:
        raise err[0]
    return out[0], out[1]


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

    #: inference with ≥ 2 intra-op threads: run the two branches in two Python threads (see :func:`_side_by_side`)
    parallel_branches: bool = True

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (timm-style flag): ~3× less training memory, ~1.3× slower."""
        for m in self.modules():
            if isinstance(m, CheckpointMixin):
                m.grad_checkpointing = enable

    def _branch(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        x = self._run(getattr(self, f"{prefix}_dfe"), x)
        x = self._run(getattr(self, f"{prefix}_grdb1"), x)
        x = self._run(getattr(self, f"{prefix}_grdb2"), x)
        return getattr(self, f"{prefix}_maxvit")(x)

    def forward(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        for name, t in (("vis_y", vis_y), ("ir", ir)):
            if t.ndim != 4 or t.shape[1] != 1:
                raise ValueError(f"MACTFusion.forward: {name} must be [B, 1, H, W] (the Y channel / a grey image), "
                                 f"got {tuple(t.shape)}")
        if vis_y.shape != ir.shape:
            raise ValueError(f"MACTFusion.forward: vis_y {tuple(vis_y.shape)} and ir {tuple(ir.shape)} differ in shape")
        h, w = vis_y.shape[-2:]
        p = self.partition
        ph, pw = (-h) % p, (-w) % p  # official: H, W must be multiples of 8; here reflect-pad and crop back

        def prep(t: torch.Tensor) -> torch.Tensor:
            if ph or pw:
                mode = "reflect" if ph < h and pw < w else "replicate"
                t = F.pad(t, (0, pw, 0, ph), mode=mode)
            return t.contiguous(memory_format=torch.channels_last)

        n_threads = torch.get_num_threads()
        if self.parallel_branches and n_threads >= 2 and not torch.is_grad_enabled():
            # the two branches (and the two fusion modules) are independent: run them side by side, each with half of
            # the intra-op threads (small ops scale badly across threads). Same ops, same results.
            f_vis, f_ir = _side_by_side(lambda: self._branch(prep(vis_y), "vis"),
                                        lambda: self._branch(prep(ir), "ir"), n_threads)
            fused = torch.cat(_side_by_side(lambda: self.vis_fusion(f_vis, f_ir),
                                            lambda: self.ir_fusion(f_ir, f_vis), n_threads), dim=1)
        else:
            f_vis = self._branch(prep(vis_y), "vis")
            f_ir = self._branch(prep(ir), "ir")
            fused = torch.cat([self.vis_fusion(f_vis, f_ir), self.ir_fusion(f_ir, f_vis)], dim=1)
        out = self._run(self.decoder, fused)
        return out[:, :, :h, :w] if (ph or pw) else out


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
