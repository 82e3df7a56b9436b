"""The public model registry: :func:`create_model`, :func:`list_models`, :func:`model_info`, :func:`load_official`, ...

The implementation sits at the bottom of the models layer (:mod:`glfuse.models._registry`) so that each model file can
register itself (``@register_model(...)``, ``@register_official(...)``) without importing a higher layer; everything
above the models imports it from here.
"""

from glfuse.models._registry import (
    ModelInfo,
    create_model,
    is_model,
    list_models,
    load_official,
    model_entrypoint,
    model_info,
    read_state_dict,
    register_model,
    register_official,
)

__all__ = [
    "ModelInfo",
    "model_info",
    "register_model",
    "create_model",
    "list_models",
    "is_model",
    "model_entrypoint",
    "register_official",
    "load_official",
    "read_state_dict",
]
