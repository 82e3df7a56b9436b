"""glfuse — global–local feature fusion for medical imaging.

Three published systems on one foundation: HiFuse (2-D classification), VDPF (lesion staging from 3-D MRI) and
MACTFusion (multimodal image fusion). The package root holds the foundation only (registry, version, runtime); each
system is imported from its own package: ``glfuse.classify``, ``glfuse.staging``, ``glfuse.fusion``
(e.g. ``from glfuse.fusion import fuse_images``). See ``docs/architecture.md``.
"""

from glfuse._version import __version__
from glfuse.registry import create_model, is_model, list_models, load_official, model_info, register_model
from glfuse.runtime import tune_cpu_allocator

__all__ = [
    "create_model",
    "list_models",
    "is_model",
    "load_official",
    "model_info",
    "register_model",
    "tune_cpu_allocator",
    "__version__",
]
