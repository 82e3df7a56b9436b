"""CPU-inference variants of the MaxViT blocks in :mod:`glfuse.layers.maxvit` (see :mod:`glfuse.layers.prepare`).

Switched in by ``glfuse.models.prepare_inference(model, "fast")``; each is a subclass of its reference block with the
same parameters and maths, arranged for inference without autograd:

* :class:`FastSDConv`: the eval BatchNorms folded into the depthwise / pointwise convolutions, GELU and the two residual
  adds fused into the convolutions (:mod:`glfuse.layers.fused`, oneDNN post-ops; plain eager ops where unavailable);
* :class:`FastSimAM`: the same maths in place on fresh tensors;
* the partition attention blocks: tokens partitioned and processed in chunks of about :attr:`chunk_tokens` tokens
  (bounded memory on large images, cache-sized work), every Linear with its bias / GELU / residual add in one kernel,
  the result optionally written into the input tensor (``inplace``);
* :class:`FastMaxViTBlock` / :class:`FastCrossMaxViTBlock`: the sub-blocks update the fresh token tensor in place.
"""

from __future__ import annotations

import torch
from torch import nn

from glfuse.layers import fused
from glfuse.layers.attention import attend, merge_heads
from glfuse.layers.maxvit import (
    CrossGridAttentionBlock,
    CrossMaxViTBlock,
    CrossWindowAttentionBlock,
    GridAttentionBlock,
    MaxViTBlock,
    SDConv,
    SimAM,
    WindowAttentionBlock,
    to_map,
    to_tokens,
)
from glfuse.layers.prepare import register_variant

__all__ = ["FastSDConv", "FastSimAM", "FastMaxViTBlock", "FastCrossMaxViTBlock", "bn_affine"]


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` of an eval-mode BatchNorm: ``bn(x) == x·scale + shift``."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@register_variant(SimAM)
class FastSimAM(SimAM):
    """SimAM, in place on the fresh centred tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).square_()
        inv = 1.0 / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.lam))
        return d.mul_(inv).add_(0.5).sigmoid_().mul_(x)


@register_variant(SDConv)
class FastSDConv(SDConv):
    """SD-Conv with its eval BatchNorms folded into the convolutions and GELU / residual adds fused into them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm.running_var is None or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)  # no running statistics to fold / layout the fused kernels are not set up for
        s0, b0 = bn_affine(self.norm)
        z = (x * s0.view(1, -1, 1, 1)).add_(b0.view(1, -1, 1, 1))
        s1, b1 = bn_affine(self.dw_norm)
        u = fused.conv2d(z, self.dw.weight * s1.view(-1, 1, 1, 1), b1, padding=1, groups=self.dw.groups, act="gelu")
        s2, b2 = bn_affine(self.pw_norm)
        t = fused.conv2d(u, self.pw.weight * s2.view(-1, 1, 1, 1), b2, add=z)
        return fused.conv2d(self.simam(t), self.proj.weight, self.proj.bias, add=x)


# ----------------------------------------------------------------------------------------------------------------------
# chunked partition attention


def _self_attention(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + SelfAttention(x)`` with fused linears; ``x`` ``[groups, N, C]``."""
    bn, n, c = x.shape
    h = attn.num_heads
    qkv = fused.linear(x, attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.view(bn, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
    return fused.linear(merge_heads(attend(q, k, v, bias, attn.scale)), attn.proj.weight, attn.proj.bias, add=residual)


def _cross_attention(attn: nn.Module, xq: torch.Tensor, xkv: torch.Tensor, bias: torch.Tensor,
                     residual: torch.Tensor) -> torch.Tensor:
    """``residual + CrossAttention(xq, xkv)`` with fused linears."""
    bn, n, c = xq.shape
    h = attn.num_heads
    q = fused.linear(xq, attn.q.weight, attn.q.bias).view(bn, n, h, c // h).transpose(1, 2)
    kv = fused.linear(xkv, attn.kv.weight, attn.kv.bias)
    k, v = kv.view(bn, n, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
    return fused.linear(merge_heads(attend(q, k, v, bias, attn.scale)), attn.proj.weight, attn.proj.bias, add=residual)


def _mlp(mlp: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + fc2(GELU(fc1(x)))`` with the GELU and the add fused into the Linears."""
    h = fused.linear(x, mlp.fc1.weight, mlp.fc1.bias, act="gelu")
    return fused.linear(h, mlp.fc2.weight, mlp.fc2.bias, add=residual)


class _Chunked:
    """Chunk-wise partition / reverse of ``[B, H, W, C]`` tokens (attributes of the partition attention blocks)."""

    mode: str
    partition: int
    #: tokens per chunk: bounds inference memory on very large images (a 256² map runs as 16 chunks; 1024–8192 measured
    #: the same speed here, much smaller chunks are slower from per-op overhead).
    chunk_tokens: int = 4096

    def _view6(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """6-D view of ``x`` and the index of the dimension that enumerates rows of groups (the chunked one)."""
        b, h, w, c = x.shape
        p = self.partition
        if self.mode == "window":  # [B, H/p, p, W/p, p, C]: group (1, 3), token (2, 4)
            return x.view(b, h // p, p, w // p, p, c), 1
        return x.view(b, p, h // p, p, w // p, c), 2  # grid: group (2, 4), token (1, 3)

    def _perm(self) -> tuple[int, ...]:  # view6 -> [B, group_row, group_col, tok_row, tok_col, C]
        return (0, 1, 3, 2, 4, 5) if self.mode == "window" else (0, 2, 4, 1, 3, 5)

    def _chunks(self, x: torch.Tensor) -> list[slice]:
        b, h, w, _ = x.shape
        rows = h // self.partition
        step = max(1, min(rows, self.chunk_tokens // max(b * w * self.partition, 1)))
        return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]

    def _take(self, x6: torch.Tensor, dim: int, sl: slice) -> torch.Tensor:
        """Tokens of the group rows ``sl`` as ``[groups, p², C]``."""
        part = (x6[:, sl] if dim == 1 else x6[:, :, sl]).permute(self._perm())
        return part.reshape(-1, self.partition * self.partition, part.shape[-1])

    def _put(self, out6: torch.Tensor, dim: int, sl: slice, y: torch.Tensor, x6: torch.Tensor) -> None:
        p = self.partition
        gc = x6.shape[3] if self.mode == "window" else x6.shape[4]
        inv = [0] * 6
        for i, q in enumerate(self._perm()):
            inv[q] = i
        y = y.view(x6.shape[0], sl.stop - sl.start, gc, p, p, y.shape[-1]).permute(inv)
        if dim == 1:
            out6[:, sl] = y
        else:
            out6[:, :, sl] = y


class _FastSelfBlock(_Chunked):
    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``x`` ``[B, H, W, C]``; ``inplace``: write the result into ``x`` (each chunk reads its tokens first)."""
        x = x.contiguous()
        x6, dim = self._view6(x)
        out = x if inplace else torch.empty_like(x)
        out6, _ = self._view6(out)
        bias = self.attn.rel_pos()
        for sl in self._chunks(x):
            t = self._take(x6, dim, sl)
            t = _self_attention(self.attn, self.norm1(t), bias, residual=t)
            self._put(out6, dim, sl, _mlp(self.mlp, self.norm2(t), residual=t), x6)
        return out


class _FastCrossBlock(_Chunked):
    def forward(self, xq: torch.Tensor, xkv: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``xq`` queries / residual stream, ``xkv`` keys and values, ``[B, H, W, C]``; ``inplace``: write into ``xq``."""
        xq, xkv = xq.contiguous(), xkv.contiguous()
        q6, dim = self._view6(xq)
        kv6, _ = self._view6(xkv)
        out = xq if inplace else torch.empty_like(xq)
        out6, _ = self._view6(out)
        bias = self.attn.rel_pos()
        for sl in self._chunks(xq):
            tq = self._take(q6, dim, sl)
            t = _cross_attention(self.attn, self.norm1(tq), self.norm1(self._take(kv6, dim, sl)), bias, residual=tq)
            self._put(out6, dim, sl, _mlp(self.mlp, self.norm2(t), residual=t), q6)
        return out


@register_variant(WindowAttentionBlock)
class FastWindowAttentionBlock(_FastSelfBlock, WindowAttentionBlock):
    """Block attention, chunked and fused."""


@register_variant(GridAttentionBlock)
class FastGridAttentionBlock(_FastSelfBlock, GridAttentionBlock):
    """Grid attention, chunked and fused."""


@register_variant(CrossWindowAttentionBlock)
class FastCrossWindowAttentionBlock(_FastCrossBlock, CrossWindowAttentionBlock):
    """Cross block attention, chunked and fused."""


@register_variant(CrossGridAttentionBlock)
class FastCrossGridAttentionBlock(_FastCrossBlock, CrossGridAttentionBlock):
    """Cross grid attention, chunked and fused."""


@register_variant(MaxViTBlock)
class FastMaxViTBlock(MaxViTBlock):
    """MaxViT block whose attention sub-blocks update the fresh token tensor in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = to_tokens(self.sdconv(x))
        return to_map(self.grid(self.window(t, True), True))


@register_variant(CrossMaxViTBlock)
class FastCrossMaxViTBlock(CrossMaxViTBlock):
    """Cross MaxViT block whose attention sub-blocks update the fresh query tensor in place."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q = to_tokens(self.sdconv_q(x))
        kv = to_tokens(self.sdconv_kv(y))
        return to_map(self.grid(self.window(q, kv, True), kv, True))
