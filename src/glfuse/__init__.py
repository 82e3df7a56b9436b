"""glfuse — global–local feature fusion for medical imaging.

Three published systems on one foundation: HiFuse (2-D classification), VDPF (lesion staging from 3-D MRI) and
MACTFusion (multimodal image fusion).
"""

from glfuse.registry import create_model, is_model, list_models, load_official, register_model
from glfuse.runtime import tune_cpu_allocator

__version__ = "0.1.0"

__all__ = [
    "create_model",
    "list_models",
    "is_model",
    "load_official",
    "register_model",
    "tune_cpu_allocator",
    "fuse_images",
    "__version__",
]


def fuse_images(model, a, b, **kwargs):
    """Fuse a registered image pair; see :func:`glfuse.fusion.api.fuse_images`."""
    from glfuse.fusion.api import fuse_images as _fuse

    return _fuse(model, a, b, **kwargs)
