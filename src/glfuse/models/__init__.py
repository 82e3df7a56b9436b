"""Registered architectures (importing this package registers every model) and :func:`prepare_inference`."""

from glfuse.models import baselines, hifuse, mactfusion, vdpf  # noqa: F401
from glfuse.models.inference import prepare_inference

__all__ = ["prepare_inference"]
