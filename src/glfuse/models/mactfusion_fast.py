"""CPU-inference variants of the MACTFusion blocks (see :mod:`glfuse.layers.prepare`; the MaxViT blocks' variants are in
:mod:`glfuse.layers.maxvit_fast`).

Switched in by ``glfuse.models.prepare_inference(model, "fast")``. Same parameters and maths as
:mod:`glfuse.models.mactfusion`, arranged for inference without autograd: every convolution runs with its bias,
activation or residual add in one oneDNN kernel (:mod:`glfuse.layers.fused`; plain eager ops where unavailable), SAFM's
γ/β convolutions run as one, fresh tensors are updated in place, and with ≥ 2 intra-op threads the two branches (and
the two fusion modules) run side by side (:attr:`FastMACTFusion.parallel_branches`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from glfuse.layers import fused
from glfuse.layers.prepare import register_variant
from glfuse.models.mactfusion import GRDB, SAFM, CrossModalityFusion, MACTFusion, ReconLayer

__all__ = ["FastCrossModalityFusion", "FastGRDB", "FastMACTFusion", "FastReconLayer", "FastSAFM", "side_by_side"]


@register_variant(GRDB)
class FastGRDB(GRDB):
    """GRDB with LeakyReLU / the ``fuse + grad_proj`` add fused into the convolutions, gradients summed in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = fused.conv2d(x, self.dense1.weight, self.dense1.bias, padding=1, act="leaky_relu", slope=0.2)
        x1 = torch.cat([x, d1], dim=1)
        d2 = fused.conv2d(x1, self.dense2.weight, self.dense2.bias, padding=1, act="leaky_relu", slope=0.2)
        x2 = torch.cat([x1, d2], dim=1)
        c = x.shape[1]
        gx, gy = F.conv2d(x, self.sobel_x, padding=1, groups=c), F.conv2d(x, self.sobel_y, padding=1, groups=c)
        g = gx.abs_().add_(gy.abs_())
        out = fused.conv2d(x2, self.fuse.weight, self.fuse.bias)
        out = fused.conv2d(g, self.grad_proj.weight, self.grad_proj.bias, add=out)  # fuse(x2) + grad_proj(g)
        return F.leaky_relu(out, 0.1, inplace=True)


@register_variant(SAFM)
class FastSAFM(SAFM):
    """SAFM with the γ/β convolutions as one convolution and the elementwise maths in place."""

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
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


@register_variant(CrossModalityFusion)
class FastCrossModalityFusion(CrossModalityFusion):
    """Cross-modality fusion with the sigmoid fused into the gate convolution and the gating done in place."""

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        fc = self.cross(f1, self.safm(f1, f2))
        gate = fused.conv2d(f2, self.gate.weight, self.gate.bias, act="sigmoid")
        return fc.add_(f1).mul_(gate).add_(f1)  # f1 + gate * (f1 + fc), in place on the fresh fc


@register_variant(ReconLayer)
class FastReconLayer(ReconLayer):
    """Reconstruction layer with the LeakyReLU fused into the convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return fused.conv2d(x, self.conv.weight, self.conv.bias, act="leaky_relu", slope=0.1)


def side_by_side(fa: Callable[[], torch.Tensor], fb: Callable[[], torch.Tensor],
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


@register_variant(MACTFusion)
class FastMACTFusion(MACTFusion):
    """MACTFusion whose two branches (and two fusion modules) run side by side with ≥ 2 intra-op threads.

    The branches are independent: each runs with half of the intra-op threads (small ops scale badly across threads).
    Same ops, same results as one after the other.
    """

    #: run the two branches in two Python threads when ≥ 2 intra-op threads are set (see :func:`side_by_side`)
    parallel_branches: bool = True

    def forward(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        n_threads = torch.get_num_threads()
        if not (self.parallel_branches and n_threads >= 2):
            return super().forward(vis_y, ir)
        vis_p, ir_p = self._pad(vis_y, ir)
        h, w = vis_y.shape[-2:]
        f_vis, f_ir = side_by_side(lambda: self.branch(vis_p, "vis"), lambda: self.branch(ir_p, "ir"), n_threads)
        fused_maps = side_by_side(lambda: self.vis_fusion(f_vis, f_ir), lambda: self.ir_fusion(f_ir, f_vis), n_threads)
        return self.decoder(torch.cat(fused_maps, dim=1))[:, :, :h, :w]
