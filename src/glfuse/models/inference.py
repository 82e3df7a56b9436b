"""Explicit inference preparation of a glfuse model: :func:`prepare_inference`.

The models' blocks each have one forward that reads like the paper (the *reference path*, used for training and
checked by the golden tests). CPU-inference speed-ups are not hidden behind ``torch.is_grad_enabled()`` checks; they are
separate variants of the blocks, switched in explicitly, in the spirit of RepVGG's re-parameterisation:

    model = glfuse.load_model("runs/fuse1/model")            # or create_model / load_official
    model = glfuse.models.prepare_inference(model, "fast")   # eval mode, fast CPU variants
    with torch.inference_mode():
        fused = model(vis_y, ir)

Modes (see :mod:`glfuse.layers.prepare` for the mechanism):

* ``"fast"``: CPU inference. MACTFusion: eval BatchNorms folded into the SD-Conv convolutions, each linear /
  convolution with its bias, activation or residual add in one oneDNN kernel (``GLFUSE_ONEDNN_FUSION=0`` or a build
  without the kernels falls back to plain ops), fresh tensors updated in place, attention partitions processed in
  cache-sized chunks, the two branches side by side with ≥ 2 intra-op threads. HiFuse and VDPF have no separate
  inference variants (their reference path is already the fast one); "fast" puts them in eval mode. A model prepared
  "fast" refuses calls with autograd enabled (clear error; use ``torch.no_grad()`` / ``torch.inference_mode()``).
* ``"portable"``: plain PyTorch ops only: no oneDNN post-op kernels, no FFT ops (MACTFusion's 31×31 convolution is the
  direct convolution, much slower on CPU); what export (ONNX, TorchScript, ``torch.export``) uses.
* ``"reference"``: back to the reference blocks (e.g. to train or take gradients again).

The model is changed in place (module classes only: parameters, buffers and state-dict keys are untouched, no copy is
made), put in eval mode and returned; ``model.glfuse_prepared`` records the mode and ``model.glfuse_prepared_variants``
which blocks run a variant. Calling it again with the same mode is a no-op.
"""

from __future__ import annotations

from torch import nn

# importing the variant modules registers them
from glfuse.layers import maxvit_fast  # noqa: F401
from glfuse.layers.prepare import MODES, PrepareMode, prepare_modules
from glfuse.models import mactfusion_fast  # noqa: F401

__all__ = ["MODES", "PrepareMode", "prepare_inference"]


def prepare_inference(model: nn.Module, mode: PrepareMode = "fast") -> nn.Module:
    """Prepare ``model`` (in place) for inference; returns it in eval mode (``mode="reference"``: training mode kept).

    Args:
        model: a glfuse model (any ``nn.Module``; blocks without a variant are left as they are).
        mode: "fast" (CPU inference), "portable" (plain ops, for export) or "reference" (undo).
    """
    variants = prepare_modules(model, mode)
    model.glfuse_prepared = None if mode == "reference" else mode
    model.glfuse_prepared_variants = variants
    return model if mode == "reference" else model.eval()
