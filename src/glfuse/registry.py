"""The public model registry: :func:`create_model`, :func:`list_models`, :func:`model_info`, :func:`load_official`, ...

The implementation sits at the bottom of the models layer (:mod:`glfuse.models._registry`) so that each model file can
register itself (``@register_model(...)``, ``@register_official(...)``) without importing a higher layer; everything
above the models imports it from here.
"""

from glfuse.models._registry import *  # noqa: F403 - this module is the registry's public face
from glfuse.models._registry import __all__  # noqa: F401
