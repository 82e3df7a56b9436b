"""MaxViT-style building blocks as used by MACTFusion: SD-Conv, block (window) / grid attention, self and cross blocks.

Layout conventions (chosen for CPU speed, the maths is unchanged):

* convolutional parts take and return ``[B, C, H, W]`` tensors, kept in ``channels_last`` memory format so that
  ``x.permute(0, 2, 3, 1)`` (the token layout ``[B, H, W, C]``) is a free view;
* transformer sub-blocks (:class:`WindowAttentionBlock`, :class:`GridAttentionBlock` and the cross variants) take and
  return ``[B, H, W, C]`` tensors. Every op of a sub-block except the attention itself is per token, so the input is
  partitioned into 8×8 windows (or the dilated 8×8 grid) once, the whole sub-block runs on the partitioned tokens, and
  the result is written back once. Without autograd the partitions are processed in chunks that fit the CPU caches.

Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` with the relative position bias as additive
mask when the bias needs no gradient (inference); in training the attention map is computed explicitly (see ``_attend``).
At inference the linears and convolutions run with their bias, GELU and residual add fused (:mod:`glfuse.layers.fused`).

Activation checkpointing: :func:`checkpoint_call` wraps :func:`torch.utils.checkpoint.checkpoint` (non-reentrant) and
marks the recomputation, during which :class:`BatchNorm2d` uses batch statistics without updating its running
statistics again (plain ``nn.BatchNorm2d`` would count every checkpointed batch twice).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from glfuse.layers import fused

__all__ = [
    "BatchNorm2d",
    "checkpoint_call",
    "SimAM",
    "SDConv",
    "Mlp",
    "relative_position_index",
    "RelativePositionBias",
    "WindowAttentionBlock",
    "GridAttentionBlock",
    "CrossWindowAttentionBlock",
    "CrossGridAttentionBlock",
    "MaxViTBlock",
    "CrossMaxViTBlock",
]

# ----------------------------------------------------------------------------------------------------------------------
# activation checkpointing that is safe for BatchNorm running statistics

_RECOMPUTE_DEPTH = 0


@contextlib.contextmanager
def _recomputing() -> Iterator[None]:
    global _RECOMPUTE_DEPTH
    _RECOMPUTE_DEPTH += 1
    try:
        yield
    finally:
        _RECOMPUTE_DEPTH -= 1


def _checkpoint_contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return contextlib.nullcontext(), _recomputing()


def checkpoint_call(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """Run ``fn(*args)`` under non-reentrant activation checkpointing (recomputation is flagged for BatchNorm)."""
    return checkpoint(fn, *args, use_reentrant=False, context_fn=_checkpoint_contexts)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that does not update running statistics a second time during checkpoint recomputation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _RECOMPUTE_DEPTH > 0 and self.running_mean is not None:
            # batch statistics as in the first pass; the running-stat update goes to throw-away copies (same saved
            # tensors as the first pass, which the checkpoint machinery checks)
            return F.batch_norm(x, self.running_mean.clone(), self.running_var.clone(), self.weight, self.bias, True,
                                self.momentum if self.momentum is not None else 0.0, self.eps)
        return super().forward(x)


class CheckpointMixin:
    """``grad_checkpointing`` flag and a helper that checkpoints a child call when it is set (timm style)."""

    grad_checkpointing: bool = False

    def _run(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():  # type: ignore[attr-defined]
            return checkpoint_call(fn, *args)
        return fn(*args)


# ----------------------------------------------------------------------------------------------------------------------
# SD-Conv


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` of an eval-mode BatchNorm: ``bn(x) == x·scale + shift``."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class SimAM(nn.Module):
    """Parameter-free SimAM attention: ``x · σ((x−μ)² / (4·(Σ(x−μ)²/(HW−1) + λ)) + 0.5)`` per sample and channel."""

    def __init__(self, lam: float = 1e-4) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        grad = torch.is_grad_enabled()
        d = x - x.mean(dim=(2, 3), keepdim=True)
        d = d.square() if grad else d.square_()
        inv = 1.0 / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.lam))
        if grad:
            return x * torch.sigmoid(d * inv + 0.5)
        return d.mul_(inv).add_(0.5).sigmoid_().mul_(x)  # same maths, in place (inference)


class SDConv(nn.Module):
    """SD-Conv (official ``MAConv``): ``x + proj(SimAM(z + BN(PW(GELU(BN(DW(z)))))))`` with ``z = BN(x)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = BatchNorm2d(dim)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.dw_norm = BatchNorm2d(dim)
        self.pw = nn.Conv2d(dim, dim, 1, bias=False)
        self.pw_norm = BatchNorm2d(dim)
        self.simam = SimAM()
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not (self.training or torch.is_grad_enabled()) and x.is_contiguous(memory_format=torch.channels_last)
                and self.norm.running_var is not None):
            return self._forward_eval(x)
        z = self.norm(x)
        t = self.pw_norm(self.pw(F.gelu(self.dw_norm(self.dw(z)))))
        # quirk: timm's DepthwiseSeparableConv skip adds the BN-normalised input z (not x); the outer skip adds x.
        return x + self.proj(self.simam(t + z))

    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: eval BatchNorms folded into the depthwise / pointwise convs (same maths up to float rounding);
        GELU and the two residual adds fused into the convolutions (:mod:`glfuse.layers.fused`)."""
        s0, b0 = bn_affine(self.norm)
        z = (x * s0.view(1, -1, 1, 1)).add_(b0.view(1, -1, 1, 1))
        s1, b1 = bn_affine(self.dw_norm)
        u = fused.conv2d(z, self.dw.weight * s1.view(-1, 1, 1, 1), b1, padding=1, groups=self.dw.groups, act="gelu")
        s2, b2 = bn_affine(self.pw_norm)
        t = fused.conv2d(u, self.pw.weight * s2.view(-1, 1, 1, 1), b2, add=z)
        return fused.conv2d(self.simam(t), self.proj.weight, self.proj.bias, add=x)


# ----------------------------------------------------------------------------------------------------------------------
# attention


class Mlp(nn.Module):
    """Transformer MLP: Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``fc2(GELU(fc1(x)))``, plus ``residual`` if given (added in the same kernel at inference)."""
        h = fused.linear(x, self.fc1.weight, self.fc1.bias, act="gelu")
        return fused.linear(h, self.fc2.weight, self.fc2.bias, add=residual)


def relative_position_index(window: int) -> torch.Tensor:
    """Swin relative-position index ``[window², window²]`` into a ``(2·window−1)²`` bias table (row-major tokens)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class RelativePositionBias(nn.Module):
    """Learned relative position bias ``[heads, N, N]`` for ``window × window`` tokens (table trunc-normal 0.02)."""

    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def forward(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    # q, k, v: [Bn, heads, N, hd]; bias [heads, N, N] -> [Bn, N, heads*hd].
    if bias.requires_grad and torch.is_grad_enabled():
        # Training: PyTorch's fused CPU kernels take no gradient for the mask (the learned bias), so SDPA would fall back
        # to its maths path, which adds a masked-row guard (isneginf/all/where: ~7 % of a MACTFusion step) on top of the
        # same attention map. Written out, with the scale and bias applied in place on the fresh score tensor:
        attn = torch.matmul(q, k.transpose(-2, -1)).mul_(scale).add_(bias.to(q.dtype))
        out = torch.matmul(attn.softmax(dim=-1), v)
    else:
        # A 4-D mask selects the fused (flash) CPU kernel; a 3-D one falls back to the maths path.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype).unsqueeze(0), scale=scale)
    return out.transpose(1, 2).flatten(2)


class _PartitionMixin:
    """Window (``mode="window"``) or grid (``mode="grid"``) partitioning of ``[B, H, W, C]`` tokens into 8×8 groups."""

    mode: str
    partition: int
    # tokens per chunk without autograd: bounds inference memory on very large images (a 256² map runs as 16 chunks;
    # 1024–8192 measured the same speed here, much smaller chunks are slower from per-op overhead).
    chunk_tokens: int = 4096

    def _view6(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """6-D view of ``x`` and the index of the dimension that enumerates rows of groups (the chunked one)."""
        b, h, w, c = x.shape
        p = self.partition
        if self.mode == "window":  # [B, H/p, p, W/p, p, C]: group (1, 3), token (2, 4)
            return x.view(b, h // p, p, w // p, p, c), 1
        # grid: token (i, j) of group (oy, ox) is pixel (i·H/p + oy, j·W/p + ox): [B, p, H/p, p, W/p, C]
        return x.view(b, p, h // p, p, w // p, c), 2

    def _perm(self) -> tuple[int, ...]:
        # view6 -> [B, group_row, group_col, tok_row, tok_col, C]
        return (0, 1, 3, 2, 4, 5) if self.mode == "window" else (0, 2, 4, 1, 3, 5)

    def _inv_perm(self) -> tuple[int, ...]:
        perm = self._perm()
        inv = [0] * 6
        for i, p in enumerate(perm):
            inv[p] = i
        return tuple(inv)

    def _chunks(self, x: torch.Tensor) -> list[slice]:
        b, h, w, _ = x.shape
        rows = h // self.partition
        if torch.is_grad_enabled():
            return [slice(0, rows)]
        per_row = b * w * self.partition
        step = max(1, min(rows, self.chunk_tokens // max(per_row, 1)))
        return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]

    def _take(self, x6: torch.Tensor, dim: int, sl: slice) -> torch.Tensor:
        """Tokens of the group rows ``sl`` as ``[groups, p², C]``."""
        part = x6[:, sl] if dim == 1 else x6[:, :, sl]
        part = part.permute(self._perm())
        return part.reshape(-1, self.partition * self.partition, part.shape[-1])

    def _put(self, out6: torch.Tensor, dim: int, sl: slice, y: torch.Tensor, x6: torch.Tensor) -> None:
        b = x6.shape[0]
        p = self.partition
        gr = sl.stop - sl.start
        gc = x6.shape[3] if self.mode == "window" else x6.shape[4]
        y = y.view(b, gr, gc, p, p, y.shape[-1]).permute(self._inv_perm())
        if dim == 1:
            out6[:, sl] = y
        else:
            out6[:, :, sl] = y


class SelfAttention(nn.Module):
    """Multi-head self-attention over one partition group with relative position bias (official ``qkv_mapping``)."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel_pos = RelativePositionBias(window, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, scale: float,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[groups, N, C]``; returns the attention output (``+ residual`` if given)."""
        bn, n, c = x.shape
        qkv = fused.linear(x, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(bn, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return fused.linear(_attend(q, k, v, bias, scale), self.proj.weight, self.proj.bias, add=residual)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from one stream, keys/values (one ``kv`` Linear) from the other."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.rel_pos = RelativePositionBias(window, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor, bias: torch.Tensor, scale: float,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """``xq``, ``xkv``: ``[groups, N, C]``; returns the attention output (``+ residual`` if given)."""
        bn, n, c = xq.shape
        hd = c // self.num_heads
        q = fused.linear(xq, self.q.weight, self.q.bias).view(bn, n, self.num_heads, hd).transpose(1, 2)
        kv = fused.linear(xkv, self.kv.weight, self.kv.bias)
        k, v = kv.view(bn, n, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        return fused.linear(_attend(q, k, v, bias, scale), self.proj.weight, self.proj.bias, add=residual)


class _AttentionBlockBase(_PartitionMixin, nn.Module):
    """Pre-norm transformer sub-block on partitioned tokens (shared code of the self-attention blocks)."""

    attn_cls: type[nn.Module] = SelfAttention

    def __init__(self, dim: int, num_heads: int = 4, partition: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.partition = partition
        # quirk (official MaxViT code): scale = num_heads**-0.5 (0.5), not head_dim**-0.5; the weights expect it.
        self.scale = num_heads**-0.5
        self.norm1 = nn.LayerNorm(dim)
        self.attn = self.attn_cls(dim, num_heads, partition)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _tokens(self, t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        t = self.attn(self.norm1(t), bias, self.scale, residual=t)
        return self.mlp(self.norm2(t), residual=t)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``x``: ``[B, H, W, C]`` with H, W multiples of the partition size; returns the same shape.

        ``inplace`` (inference only): write the result into ``x`` (each chunk reads its own tokens before writing them).
        """
        x = x.contiguous()
        x6, dim = self._view6(x)
        out = x if inplace and not torch.is_grad_enabled() else torch.empty_like(x)
        out6, _ = self._view6(out)
        bias = self.attn.rel_pos()
        for sl in self._chunks(x):
            self._put(out6, dim, sl, self._tokens(self._take(x6, dim, sl), bias), x6)
        return out


class WindowAttentionBlock(_AttentionBlockBase):
    """MaxViT block attention: self-attention inside non-overlapping 8×8 windows, then MLP (pre-norm, residual)."""

    mode = "window"


class GridAttentionBlock(_AttentionBlockBase):
    """MaxViT grid attention: self-attention over a dilated 8×8 grid (tokens H/8, W/8 apart), then MLP."""

    mode = "grid"


class _CrossAttentionBlockBase(_AttentionBlockBase):
    """Cross transformer sub-block: ``t = Q + attn(LN1(Q), LN1(KV))``; ``t + MLP(LN2(t))`` (one LN1 for both).

    Same layers as the self-attention sub-block (incl. the num_heads**-0.5 scale quirk), with cross-attention.
    """

    attn_cls = CrossAttention

    def _tokens(self, tq: torch.Tensor, tkv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # quirk (official code): queries and keys/values are normalised by the same LayerNorm (norm_1).
        t = self.attn(self.norm1(tq), self.norm1(tkv), bias, self.scale, residual=tq)
        return self.mlp(self.norm2(t), residual=t)

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``xq`` (queries, residual stream) and ``xkv`` (keys/values): ``[B, H, W, C]``; returns ``xq``'s shape.

        ``inplace`` (inference only): write the result into ``xq``.
        """
        xq = xq.contiguous()
        xkv = xkv.contiguous()
        q6, dim = self._view6(xq)
        kv6, _ = self._view6(xkv)
        out = xq if inplace and not torch.is_grad_enabled() else torch.empty_like(xq)
        out6, _ = self._view6(out)
        bias = self.attn.rel_pos()
        for sl in self._chunks(xq):
            y = self._tokens(self._take(q6, dim, sl), self._take(kv6, dim, sl), bias)
            self._put(out6, dim, sl, y, q6)
        return out


class CrossWindowAttentionBlock(_CrossAttentionBlockBase):
    """Cross block attention inside 8×8 windows."""

    mode = "window"


class CrossGridAttentionBlock(_CrossAttentionBlockBase):
    """Cross grid attention over the dilated 8×8 grid."""

    mode = "grid"


# ----------------------------------------------------------------------------------------------------------------------
# MaxViT blocks (no downsampling, as used by MACTFusion)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()  # free when x is channels_last


def _to_map(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)  # [B, C, H, W] view in channels_last memory


class MaxViTBlock(CheckpointMixin, nn.Module):
    """MaxViT block without downsampling: SD-Conv → block (window) attention → grid attention, ``[B, C, H, W]``."""

    def __init__(self, dim: int, num_heads: int = 4, partition: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.sdconv = SDConv(dim)
        # (the official block also builds a second SD-Conv, ``mb2_conv``, that its forward never uses: not built here)
        self.window = WindowAttentionBlock(dim, num_heads, partition, mlp_ratio)
        self.grid = GridAttentionBlock(dim, num_heads, partition, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = _to_tokens(self._run(self.sdconv, x))
        if not torch.is_grad_enabled():  # t is a fresh tensor: update it in place
            return _to_map(self.grid(self.window(t, True), True))
        t = self._run(self.window, t)
        t = self._run(self.grid, t)
        return _to_map(t)


class CrossMaxViTBlock(CheckpointMixin, nn.Module):
    """Cross MaxViT block: ``Q = SDConv_q(F1)``, ``KV = SDConv_kv(F2)``; cross block attention then cross grid
    attention (keys/values from ``KV`` in both stages), ``[B, C, H, W]``."""

    def __init__(self, dim: int, num_heads: int = 4, partition: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.sdconv_q = SDConv(dim)
        self.sdconv_kv = SDConv(dim)
        self.window = CrossWindowAttentionBlock(dim, num_heads, partition, mlp_ratio)
        self.grid = CrossGridAttentionBlock(dim, num_heads, partition, mlp_ratio)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q = _to_tokens(self._run(self.sdconv_q, x))
        kv = _to_tokens(self._run(self.sdconv_kv, y))
        if not torch.is_grad_enabled():  # q is a fresh tensor: update it in place
            return _to_map(self.grid(self.window(q, kv, True), kv, True))
        t = self._run(self.window, q, kv)
        t = self._run(self.grid, t, kv)
        return _to_map(t)
