"""The glfuse version (one place; read by the package root, saved model configs and the CLI)."""

__version__ = "0.1.0"
