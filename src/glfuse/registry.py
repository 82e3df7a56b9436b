"""Model registry in timm's style, plus the registry of official-checkpoint converters.

``@register_model`` registers a factory under its function name; ``create_model(name, **kw)`` builds it and records the
architecture name and constructor arguments on ``model.glfuse_cfg`` so that :mod:`glfuse.checkpoint` can save a
self-describing ``config.json``. ``load_official(name, path_or_state_dict, **kw)`` is the single entry point that turns an
official research checkpoint into one of our models (each system registers its converter with ``@register_official``).
"""

from __future__ import annotations

import fnmatch
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
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
_CONVERTERS: dict[str, Callable[..., nn.Module]] = {}


def _ensure_models_imported() -> None:
    # Importing the models package runs every @register_model decorator.
    import glfuse.models  # noqa: F401


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name (decorator)."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model name {name!r} registered twice")
    _MODELS[name] = fn
    return fn


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

    The name and keyword arguments are stored on ``model.glfuse_cfg`` (``{"arch": name, "model_args": kwargs}``).
    """
    model = model_entrypoint(name)(**kwargs)
    model.glfuse_cfg = {"arch": name, "model_args": dict(kwargs)}
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
