"""Registered architectures. Importing this package registers every model."""

from glfuse.models import baselines, hifuse, mactfusion, vdpf  # noqa: F401
