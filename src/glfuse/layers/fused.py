"""Fused inference kernels: a linear / convolution and the elementwise op that follows it, in one oneDNN call.

PyTorch's CPU build ships oneDNN ("mkldnn") primitives with *post-ops*: the bias, an activation (GELU, LeakyReLU,
sigmoid) or the addition of another tensor are applied while the output tile is still in cache, instead of in separate
passes over memory (and ``addmm`` no longer copies the broadcast bias into its output first). These are the same ops
Inductor emits for CPU graphs (``torch.ops.mkldnn._linear_pointwise`` / ``_convolution_pointwise``); the maths is the
eager maths (the order of every addition is kept), differences are float rounding (measured ≤ 2e-6 on unit-scale data).

They are used only where it is safe and useful: no autograd, float32 CPU tensors, and a PyTorch build whose oneDNN ops
pass a numerical self-check the first time they are needed. Everything else (training, CUDA, other dtypes, builds
without oneDNN, ``GLFUSE_ONEDNN_FUSION=0``) takes the plain eager path, which every function here implements too.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

__all__ = ["fusion_available", "use_fusion", "linear", "conv2d", "conv1x1"]

_ACTS = ("none", "gelu", "leaky_relu", "sigmoid")


@functools.lru_cache(maxsize=1)
def fusion_available() -> bool:
    """Whether this PyTorch build's oneDNN post-op kernels exist and reproduce eager results (checked once)."""
    if os.environ.get("GLFUSE_ONEDNN_FUSION", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        mk = torch.ops.mkldnn
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x = torch.randn(37, 24, generator=g)
            w = torch.randn(40, 24, generator=g) * 0.2
            b = torch.randn(40, generator=g)
            r = torch.randn(37, 40, generator=g)
            checks = [
                (mk._linear_pointwise(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b))),
                (mk._linear_pointwise.binary(x, r, w, b, "add"), F.linear(x, w, b) + r),
            ]
            xi = torch.randn(1, 8, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
            wi = torch.randn(6, 8, 3, 3, generator=g) * 0.2
            bi = torch.randn(6, generator=g)
            ri = torch.randn(1, 6, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
            conv = F.conv2d(xi, wi, bi, padding=1)
            checks += [
                (mk._convolution_pointwise(xi, wi, bi, [1, 1], [1, 1], [1, 1], 1, "leaky_relu", [0.1], ""),
                 F.leaky_relu(conv, 0.1)),
                (mk._convolution_pointwise.binary(xi, ri, wi, bi, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, None, [],
                                                  None), conv + ri),
            ]
        return all(a.shape == e.shape and bool(torch.allclose(a, e, rtol=1e-4, atol=1e-5)) for a, e in checks)
    except Exception:  # op missing or rejected by this build: eager path
        return False


def use_fusion(*tensors: torch.Tensor) -> bool:
    """True when the fused kernels apply: no autograd and float32 CPU tensors on a build that passed the self-check."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and fusion_available()


def _act_eager(y: torch.Tensor, act: str, slope: float) -> torch.Tensor:
    # y is a fresh output: updated in place when autograd is off
    inplace = not torch.is_grad_enabled()
    if act == "gelu":
        return torch.ops.aten.gelu_(y) if inplace else F.gelu(y)
    if act == "leaky_relu":
        return F.leaky_relu(y, slope, inplace=inplace)
    if act == "sigmoid":
        return y.sigmoid_() if inplace else torch.sigmoid(y)
    return y


def _add_eager(y: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    return y + add if torch.is_grad_enabled() else y.add_(add)


def _check(fn: str, act: str, add: torch.Tensor | None) -> None:
    if act not in _ACTS:
        raise ValueError(f"{fn}: unknown activation {act!r} (one of {_ACTS})")
    if add is not None and act != "none":
        raise ValueError(f"{fn}: an activation after the add is not fused; apply it separately")


def _onednn_act(act: str, slope: float) -> tuple[str, list, str]:
    if act == "gelu":
        return "gelu", [], "none"  # "none": the exact (erf) GELU, as F.gelu's default
    if act == "leaky_relu":
        return "leaky_relu", [slope], ""
    return act, [], ""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, act: str = "none",
           slope: float = 0.01, add: torch.Tensor | None = None) -> torch.Tensor:
    """``act(F.linear(x, weight, bias))``, or ``F.linear(x, weight, bias) + add`` (``act`` must then be "none").

    Args:
        x: ``[..., in]`` input.
        weight: ``[out, in]``; bias: ``[out]`` or None.
        act: "none", "gelu" (exact erf GELU), "leaky_relu" (negative slope ``slope``) or "sigmoid".
        add: tensor of the output's shape added after the bias (a residual), or None.
    """
    _check("linear", act, add)
    fuse = use_fusion(x, weight) and (add is None or use_fusion(add))
    if not fuse:
        y = F.linear(x, weight, bias)
        return _add_eager(y, add) if add is not None else _act_eager(y, act, slope)
    x2 = x.reshape(-1, x.shape[-1])
    if add is not None:
        y = torch.ops.mkldnn._linear_pointwise.binary(x2, add.reshape(x2.shape[0], -1), weight, bias, "add")
    else:
        y = torch.ops.mkldnn._linear_pointwise(x2, weight, bias, *_onednn_act(act, slope))
    return y.view(*x.shape[:-1], weight.shape[0])


CONV1X1_ROWS = 4096  # pixels per matmul of conv1x1 without autograd (see there)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Eager ``F.conv2d(x, weight, bias)`` for a 1×1 kernel: a matmul on the token view when ``x`` is channels-last
    (PyTorch's CPU 1×1 conv is several times slower there). Returns a channels-last ``[B, Cout, H, W]``.

    Without autograd, large maps run as matmuls of ``CONV1X1_ROWS`` pixels written into one output: with these few
    channels (16–96) one whole-map GEMM streams its output through memory and ran ~2× slower per FLOP on this CPU.
    """
    if not x.is_contiguous(memory_format=torch.channels_last) or x.dim() != 4:
        return F.conv2d(x, weight, bias)
    t = x.permute(0, 2, 3, 1)
    w = weight.flatten(1)
    rows = t.numel() // t.shape[-1]
    if torch.is_grad_enabled() or rows <= 2 * CONV1X1_ROWS:
        return F.linear(t, w, bias).permute(0, 3, 1, 2)
    t2 = t.reshape(rows, -1)
    out = t2.new_empty(rows, w.shape[0])
    wt = w.t()
    for s in range(0, rows, CONV1X1_ROWS):
        e = min(s + CONV1X1_ROWS, rows)
        if bias is None:
            torch.mm(t2[s:e], wt, out=out[s:e])
        else:
            torch.addmm(bias, t2[s:e], wt, out=out[s:e])
    return out.view(*t.shape[:-1], -1).permute(0, 3, 1, 2)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0,
           groups: int = 1, act: str = "none", slope: float = 0.01, add: torch.Tensor | None = None) -> torch.Tensor:
    """``act(F.conv2d(x, weight, bias, padding=padding, groups=groups))`` (stride 1, zero padding), or the convolution
    ``+ add`` (``act`` must then be "none"). With the fused kernels, a channels-last input gives a channels-last output.

    Args:
        x: ``[B, Cin, H, W]``; weight ``[Cout, Cin/groups, k, k]``; bias ``[Cout]`` or None.
        padding: zero padding on every side; groups: convolution groups.
        act: "none", "gelu", "leaky_relu" (slope ``slope``) or "sigmoid".
        add: ``[B, Cout, H', W']`` added after the bias, or None.
    """
    _check("conv2d", act, add)
    fuse = use_fusion(x, weight) and x.dim() == 4 and (add is None or use_fusion(add))
    if not fuse:
        if weight.shape[-2:] == (1, 1) and padding == 0 and groups == 1:
            y = conv1x1(x, weight, bias)
        else:
            y = F.conv2d(x, weight, bias, padding=padding, groups=groups)
        return _add_eager(y, add) if add is not None else _act_eager(y, act, slope)
    pad, one = [padding, padding], [1, 1]
    if add is not None:
        cl = x.is_contiguous(memory_format=torch.channels_last)
        add = add.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)  # as the output
        return torch.ops.mkldnn._convolution_pointwise.binary(x, add, weight, bias, pad, one, one, groups, "add", 1.0,
                                                              None, [], None)
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, one, one, groups, *_onednn_act(act, slope))
