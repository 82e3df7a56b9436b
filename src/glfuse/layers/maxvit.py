"""MaxViT-style building blocks as used by MACTFusion: SD-Conv, block (window) / grid attention, self and cross blocks.

Each block's forward is the reference maths (what training runs); the CPU-inference variants (BatchNorm folding, oneDNN
fused kernels, chunked partitions, in-place updates) are in :mod:`glfuse.layers.maxvit_fast` and are switched in by
``glfuse.models.prepare_inference(model, "fast")``.

Layout conventions (the maths is unchanged):

* convolutional parts take and return ``[B, C, H, W]`` tensors, kept in ``channels_last`` memory format so that
  ``x.permute(0, 2, 3, 1)`` (the token layout ``[B, H, W, C]``) is a free view;
* transformer sub-blocks (:class:`WindowAttentionBlock`, :class:`GridAttentionBlock` and the cross variants) take and
  return ``[B, H, W, C]`` tensors. Every op of a sub-block except the attention itself is per token, so the input is
  partitioned into 8×8 windows (or the dilated 8×8 grid) once, the whole sub-block runs on the partitioned tokens
  ``[groups, 64, C]``, and the result is written back once.

Attention is :func:`glfuse.layers.attention.attend` with the learned relative position bias as additive mask.

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

from glfuse.layers.attention import Attention, Mlp, attend, merge_heads, split_heads
from glfuse.layers.window import relative_position_index

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
    "CheckpointMixin",
    "SelfAttention",
    "CrossAttention",
    "partition",
    "unpartition",
    "to_map",
    "to_tokens",
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


class SimAM(nn.Module):
    """Parameter-free SimAM attention: ``x · σ((x−μ)² / (4·(Σ(x−μ)²/(HW−1) + λ)) + 0.5)`` per sample and channel."""

    def __init__(self, lam: float = 1e-4) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).square()
        inv = 1.0 / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.lam))
        return x * torch.sigmoid(d * inv + 0.5)


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
        z = self.norm(x)
        t = self.pw_norm(self.pw(F.gelu(self.dw_norm(self.dw(z)))))
        # quirk: timm's DepthwiseSeparableConv skip adds the BN-normalised input z (not x); the outer skip adds x.
        return x + self.proj(self.simam(t + z))


# ----------------------------------------------------------------------------------------------------------------------
# attention


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


def _attn_scale(num_heads: int) -> float:
    # quirk (official MaxViT code): scale = num_heads**-0.5 (0.5), not head_dim**-0.5; the weights expect it.
    return num_heads**-0.5


class SelfAttention(Attention):
    """Multi-head self-attention over one partition group with relative position bias (official ``qkv_mapping``):
    ``proj(softmax(Q Kᵀ · h^-0.5 + B) V)``."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        nn.Module.__init__(self)  # built in the official order (qkv, rel_pos, proj): same seeded init, parameter order
        self.num_heads = num_heads
        self.scale = _attn_scale(num_heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel_pos = RelativePositionBias(window, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x``: ``[groups, N, C]``."""
        return super().forward(x, self.rel_pos())


class CrossAttention(nn.Module):
    """Multi-head cross-attention ``proj(softmax(Q Kᵀ · h^-0.5 + B) V)``: ``Q = q(x_q)``, ``[K, V] = kv(x_kv)``."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = _attn_scale(num_heads)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.rel_pos = RelativePositionBias(window, num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor) -> torch.Tensor:
        """``xq``, ``xkv``: ``[groups, N, C]``."""
        bn, n, c = xkv.shape
        q = split_heads(self.q(xq), self.num_heads)
        k, v = self.kv(xkv).view(bn, n, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(merge_heads(attend(q, k, v, self.rel_pos(), self.scale)))


def partition(x: torch.Tensor, p: int, mode: str) -> torch.Tensor:
    """``[B, H, W, C]`` → ``[groups, p², C]``: 8×8 windows (``mode="window"``) or the dilated 8×8 grid (``"grid"``,
    token (i, j) of group (oy, ox) is pixel (i·H/p + oy, j·W/p + ox)); groups in row-major order."""
    b, h, w, c = x.shape
    if mode == "window":
        t = x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
    else:
        t = x.reshape(b, p, h // p, p, w // p, c).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(-1, p * p, c)


def unpartition(t: torch.Tensor, shape: torch.Size, p: int, mode: str) -> torch.Tensor:
    """Inverse of :func:`partition`: ``[groups, p², C]`` → ``[B, H, W, C]`` (``shape``)."""
    b, h, w, c = shape
    t = t.view(b, h // p, w // p, p, p, c)
    perm = (0, 1, 3, 2, 4, 5) if mode == "window" else (0, 3, 1, 4, 2, 5)
    return t.permute(perm).reshape(b, h, w, c)


class _AttentionBlockBase(nn.Module):
    """Pre-norm transformer sub-block on partitioned tokens: ``t = t + Attn(LN1(t))``; ``t + MLP(LN2(t))``."""

    attn_cls: type[nn.Module] = SelfAttention
    mode: str

    def __init__(self, dim: int, num_heads: int = 4, partition: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.partition = partition
        self.norm1 = nn.LayerNorm(dim)
        self.attn = self.attn_cls(dim, num_heads, partition)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, H, W, C]`` with H, W multiples of the partition size; returns the same shape."""
        t = partition(x, self.partition, self.mode)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return unpartition(t, x.shape, self.partition, self.mode)


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

    def forward(self, xq: torch.Tensor, xkv: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``xq`` (queries, residual stream) and ``xkv`` (keys/values): ``[B, H, W, C]``; returns ``xq``'s shape."""
        tq, tkv = partition(xq, self.partition, self.mode), partition(xkv, self.partition, self.mode)
        # quirk (official code): queries and keys/values are normalised by the same LayerNorm (norm_1).
        t = tq + self.attn(self.norm1(tq), self.norm1(tkv))
        t = t + self.mlp(self.norm2(t))
        return unpartition(t, xq.shape, self.partition, self.mode)


class CrossWindowAttentionBlock(_CrossAttentionBlockBase):
    """Cross block attention inside 8×8 windows."""

    mode = "window"


class CrossGridAttentionBlock(_CrossAttentionBlockBase):
    """Cross grid attention over the dilated 8×8 grid."""

    mode = "grid"


# ----------------------------------------------------------------------------------------------------------------------
# MaxViT blocks (no downsampling, as used by MACTFusion)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, H, W, C]`` (contiguous; free when ``x`` is channels_last)."""
    return x.permute(0, 2, 3, 1).contiguous()


def to_map(t: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, C]`` → ``[B, C, H, W]`` view (channels_last memory)."""
    return t.permute(0, 3, 1, 2)


class MaxViTBlock(CheckpointMixin, nn.Module):
    """MaxViT block without downsampling: SD-Conv → block (window) attention → grid attention, ``[B, C, H, W]``."""

    def __init__(self, dim: int, num_heads: int = 4, partition: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.sdconv = SDConv(dim)
        # (the official block also builds a second SD-Conv, ``mb2_conv``, that its forward never uses: not built here)
        self.window = WindowAttentionBlock(dim, num_heads, partition, mlp_ratio)
        self.grid = GridAttentionBlock(dim, num_heads, partition, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = to_tokens(self._run(self.sdconv, x))
        t = self._run(self.window, t)
        t = self._run(self.grid, t)
        return to_map(t)


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
        q = to_tokens(self._run(self.sdconv_q, x))
        kv = to_tokens(self._run(self.sdconv_kv, y))
        t = self._run(self.window, q, kv)
        t = self._run(self.grid, t, kv)
        return to_map(t)
