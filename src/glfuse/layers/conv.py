"""Convolution layers that compute ``nn.Conv2d``'s maths with a faster kernel for their shape or memory layout.

Each is an ``nn.Conv2d`` subclass with the same parameters and state-dict keys; only the kernel differs:

* :class:`PointwiseConv2d`: a 1×1 convolution run as one GEMM (``F.linear``) on the NHWC view of a channels-last map
  (PyTorch's CPU 1×1 convolution is several times slower there);
* :class:`FFTConv2d`: a large-kernel convolution computed with float64 FFTs (:func:`fft_conv2d`; MACTFusion's 31×31
  grouped convolution takes ~9 s per 256² image with the direct CPU kernel);
* :class:`NCHWConv2d`: a convolution that runs on NCHW (contiguous) data and keeps its weight NCHW even when the model is
  moved to ``channels_last`` (for HiFuse's dense 2304-channel 3×3 on a 7×7 map oneDNN's NCHW kernel is ~20 % faster).

They serve training and inference alike. ``glfuse.models.prepare_inference(model, "portable")`` turns
:class:`FFTConv2d` back into a plain ``nn.Conv2d`` (no FFT ops, e.g. for ONNX export).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glfuse.layers.prepare import register_variant

__all__ = ["FFTConv2d", "NCHWConv2d", "PointwiseConv2d", "fft_conv2d"]


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


class PointwiseConv2d(nn.Conv2d):
    """1×1 convolution (stride 1, no padding, no groups); on a channels-last map it runs as ``F.linear`` on the NHWC view.

    The NHWC view of a channels-last map is a contiguous ``[B·H·W, C_in]`` matrix, so the convolution is one GEMM; the
    output is channels-last. Other inputs take ``F.conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, **kwargs) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            w = self.weight.flatten(1)  # [C_out, C_in] (a view for both weight memory formats)
            return F.linear(x.permute(0, 2, 3, 1), w, self.bias).permute(0, 3, 1, 2)
        return F.conv2d(x, self.weight, self.bias)


class FFTConv2d(nn.Conv2d):
    """Stride-1 zero-padded convolution without bias computed by :func:`fft_conv2d` (same maths as ``nn.Conv2d``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if (self.bias is not None or self.stride != (1, 1) or self.dilation != (1, 1) or self.padding_mode != "zeros"
                or isinstance(self.padding, str) or self.padding[0] != self.padding[1]):
            raise ValueError("FFTConv2d: only stride 1, no dilation, equal zero padding and no bias are supported")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fft_conv2d(x, self.weight, self.padding[0], self.groups)


# portable form (export): the direct convolution, same parameters (the FFT ops are not exportable to e.g. ONNX)
register_variant(FFTConv2d, "portable")(nn.Conv2d)


class NCHWConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed on NCHW data with an NCHW weight, whatever the model's memory format.

    The input is made contiguous, the output is returned in the input's memory format; ``module.to(memory_format=...)``
    leaves the weight NCHW (an NCHW input with a channels-last weight is slower than either layout).
    """

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        if not self.weight.is_contiguous():
            self.weight.data = self.weight.data.contiguous()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x.contiguous())
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)
        return y
