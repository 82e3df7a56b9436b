"""Model registry in timm's style, plus the registry of official-checkpoint converters.

It lives at the bottom of :mod:`glfuse.models` (like timm's ``timm/models/_registry.py``) so that model files register
themselves without importing upwards; :mod:`glfuse.registry` is its public face.

``@register_model`` registers a factory under its function name, with its declared contract (:class:`ModelInfo`, like
timm's pretrained configs): what it takes as input (an image, an image + lesion-box mask, or a registered modality pair),
channels, default input size, whether the factory takes ``img_size``, and which constructor arguments are init-only
(e.g. a weights file used once to initialise: never recorded, so a saved model never depends on that file).
Systems ask :func:`model_info` instead of guessing from a name prefix or a ``forward`` signature.
``create_model(name, **kw)`` builds a model and records the architecture name and the (non-init-only) constructor
arguments on ``model.glfuse_cfg`` so that :mod:`glfuse.checkpoint` can save a self-describing ``config.json``.
``load_official(name, path_or_state_dict, **kw)`` is the single entry point that turns an
official research checkpoint into one of our models (each system registers its converter with ``@register_official``).
"""

from __future__ import annotations

import fnmatch
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

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

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}
_CONVERTERS: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class ModelInfo:
    """The declared contract of a registered model.

    Args:
        input: ``"image"`` (``forward(x)``, a classifier), ``"image+box"`` (``forward(image, box_mask)``, VDPF) or
            ``"pair"`` (``forward(vis_y, ir)``, a fusion network).
        in_chans: input channels by default (per input for two-input models).
        img_size: default input size (square), or None when any size works.
        size_arg: the factory takes ``img_size`` (position embeddings / windows depend on it).
        init_only: constructor arguments used only to initialise (weights files); never recorded in ``model_args``.
        paper: the publication, for reports and model cards.
    """

    input: Literal["image", "image+box", "pair"] = "image"
    in_chans: int = 3
    img_size: int | None = 224
    size_arg: bool = False
    init_only: tuple[str, ...] = ()
    paper: str = ""

    @property
    def dual(self) -> bool:
        """True for two-input models (``image+box`` or ``pair``)."""
        return self.input != "image"


def _ensure_models_imported() -> None:
    # Importing the models package runs every @register_model decorator.
    import glfuse.models  # noqa: F401


def register_model(fn: Callable[..., nn.Module] | None = None, **info: Any) -> Any:
    """Register a model factory under its function name (decorator): ``@register_model`` or
    ``@register_model(input="pair", in_chans=1, img_size=None)`` with :class:`ModelInfo` fields."""

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS and _MODELS[name] is not f:
            raise ValueError(f"model name {name!r} registered twice")
        _MODELS[name] = f
        _INFO[name] = ModelInfo(**info)
        return f

    return deco(fn) if fn is not None else deco


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model (``timm:<name>``: a plain image classifier)."""
    model_entrypoint(name)  # a clear error for unknown names
    return _INFO.get(name, ModelInfo())


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern`` (e.g. ``"hifuse*"``)."""
    _ensure_models_imported()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    """True if ``name`` is a registered model."""
    _ensure_models_imported()
    return name in _MODELS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The factory registered under ``name``; a clear error lists close matches otherwise.

    ``timm:<name>`` resolves to a timm model (optional ``glfuse[timm]`` extra; never downloads weights).
    """
    _ensure_models_imported()
    if name.startswith("timm:"):
        import functools

        from glfuse.models.baselines import create_timm_model

        return functools.partial(create_timm_model, name[len("timm:"):])
    if name not in _MODELS:
        import difflib

        close = difflib.get_close_matches(name, list(_MODELS), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} See `glfuse models` for the list.")
    return _MODELS[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("hifuse_tiny", num_classes=7)``.

    The name and keyword arguments are stored on ``model.glfuse_cfg`` (``{"arch": name, "model_args": kwargs}``), less
    the model's init-only arguments (:attr:`ModelInfo.init_only`). An argument the factory does not take fails naming it.
    """
    fn = model_entrypoint(name)
    try:
        model = fn(**kwargs)
    except TypeError as e:
        if "argument" not in str(e):
            raise
        raise ValueError(f"model {name!r}: bad constructor argument(s) {sorted(kwargs)} ({e})") from e
    skip = model_info(name).init_only
    model.glfuse_cfg = {"arch": name, "model_args": {k: v for k, v in kwargs.items() if k not in skip}}
    return model


def register_official(*names: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a converter ``fn(name, state_dict, **model_kwargs) -> nn.Module`` for the given model names."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for n in names:
            _CONVERTERS[n] = fn
        return fn

    return deco


def _torch_load_safe(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a refused pickle or a broken file becomes one line naming ``path``."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message is several lines of advice to retry with weights_only=False: never do that here
        raise ValueError(f"{path} is not a safe checkpoint (it needs arbitrary code to load); re-save its "
                         "state_dict with torch.save or convert it to safetensors in a trusted environment") from None
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: cannot be read as a weights-only torch checkpoint ({first})") from None


def read_state_dict(path_or_state_dict: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read a state dict safely from ``.safetensors`` or a torch file (``weights_only=True``), on CPU.

    Unwraps a ``state_dict`` / ``model`` / ``model_state_dict`` wrapper and strips ``module.`` prefixes (DDP / DataParallel).
    """
    if isinstance(path_or_state_dict, Mapping):
        sd: Any = dict(path_or_state_dict)
        where = "the given state dict"
    else:
        path = Path(path_or_state_dict)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint file not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                sd = load_file(str(path), device="cpu")
            except Exception as e:  # noqa: BLE001 - SafetensorError names no file
                raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None
        else:
            sd = _torch_load_safe(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{where}: does not contain a state dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def load_official(name: str, path_or_state_dict: str | Path | Mapping[str, torch.Tensor], **model_kwargs: Any) -> nn.Module:
    """Build model ``name`` and load an official (research-code) checkpoint into it through its converter.

    Example: ``load_official("mactfusion", "fusion_model_CTMRI.pth")`` or ``load_official("hifuse_small", sd, num_classes=2)``.
    The returned model is in eval mode and carries ``glfuse_cfg`` like :func:`create_model`'s models.
    """
    _ensure_models_imported()
    if name not in _CONVERTERS:
        raise KeyError(f"no official-checkpoint converter for {name!r}; available: {', '.join(sorted(_CONVERTERS))}")
    sd = read_state_dict(path_or_state_dict)
    model = _CONVERTERS[name](name, sd, **model_kwargs)
    if not hasattr(model, "glfuse_cfg"):
        model.glfuse_cfg = {"arch": name, "model_args": dict(model_kwargs)}
    return model.eval()
