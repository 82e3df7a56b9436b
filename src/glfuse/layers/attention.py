"""Transformer building blocks shared by the glfuse models: multi-head attention, MLP, patch embedding.

One attention maths serves every model: ``Attention(Q, K, V) = softmax(Q Kᵀ · scale + B) V`` per head, with an
optional additive bias / mask ``B`` (Swin / MaxViT relative position bias, shifted-window mask). :func:`attend` computes
it on head-split tensors, :class:`Attention` is the usual self-attention layer (one ``qkv`` Linear, output ``proj``)
and the models' variants (HiFuse window attention, MaxViT partition attention, VDPF cross-attention) reuse both.
:class:`Mlp` is the transformer feed-forward network, :class:`PatchEmbed` the ViT/Swin patch embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Mlp", "PatchEmbed", "attend", "merge_heads", "split_heads"]


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[..., N, C]`` → ``[..., heads, N, C // heads]``."""
    *lead, n, c = x.shape
    return x.view(*lead, n, num_heads, c // num_heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[..., heads, N, d]`` → ``[..., N, heads · d]``."""
    return x.transpose(-3, -2).flatten(-2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
           scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale + bias) v`` on ``[..., heads, N, d]`` tensors (``scale`` defaults to ``d**-0.5``).

    ``bias`` broadcasts against ``[..., heads, N, M]`` (relative position bias and/or a 0/−100 mask), or is None.

    Kernel choice (same maths): ``F.scaled_dot_product_attention``, except when the bias itself needs a gradient
    (a learned relative position table in training): PyTorch's fused CPU kernels give no gradient for the mask, so SDPA
    would fall back to its maths path, which adds a masked-row guard (~7 % of a MACTFusion training step) on top of the
    same attention map; there the map is written out, scale and bias applied in place on the fresh score tensor.
    """
    if bias is not None and bias.requires_grad and torch.is_grad_enabled():
        s = q.shape[-1] ** -0.5 if scale is None else scale
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(s).add_(bias.to(q.dtype))
        return torch.matmul(scores.softmax(dim=-1), v)
    mask = None if bias is None else bias.to(q.dtype)
    if mask is not None and mask.dim() == 3 and q.dim() == 4:  # a 4-D mask selects the fused (flash) CPU kernel
        mask = mask.unsqueeze(0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class Attention(nn.Module):
    """Multi-head self-attention: ``proj(concat_h softmax(Q_h K_hᵀ · scale + B) V_h)`` with ``[Q, K, V] = qkv(x)``.

    Args:
        dim: token width C (``dim % num_heads == 0``).
        num_heads: heads h.
        qkv_bias: bias in the ``qkv`` Linear.
        scale: logit scale (default ``(C / h)**-0.5``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, scale: float | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = scale
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[..., N, C]`` tokens (any leading dimensions), ``bias`` an additive logit bias or None."""
        *lead, n, c = x.shape
        qkv = self.qkv(x).view(*lead, n, 3, self.num_heads, c // self.num_heads)
        nl = len(lead)  # [..., N, 3, h, d] -> [3, ..., h, N, d] (explicit non-negative permutation: exportable)
        q, k, v = qkv.permute(nl + 1, *range(nl), nl + 2, nl, nl + 3).unbind(0)
        return self.proj(merge_heads(attend(q, k, v, bias, self.scale)))


class Mlp(nn.Module):
    """Transformer feed-forward network ``fc2(act(fc1(x)))`` (act: GELU unless given)."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``norm(Conv2d(k = s = patch)(x))`` as tokens.

    Args:
        in_chans: image channels; embed_dim: token width; patch_size: patch side.
        norm: LayerNorm (eps 1e-5) after the projection (Swin / HiFuse) or none (ViT).
        flatten: return ``[B, N, D]`` tokens (ViT) instead of the ``[B, H/p, W/p, D]`` grid (Swin / HiFuse).
        pad: zero-pad the right/bottom to a multiple of the patch size (as Swin) instead of requiring it.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, patch_size: int = 16, *, norm: bool = False,
                 flatten: bool = True, pad: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.flatten = flatten
        self.pad = pad
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        h, w = x.shape[-2:]
        if self.pad and (h % p or w % p):
            x = F.pad(x, (0, (-w) % p, 0, (-h) % p))
        x = self.norm(self.proj(x).permute(0, 2, 3, 1))
        return x.flatten(1, 2) if self.flatten else x
