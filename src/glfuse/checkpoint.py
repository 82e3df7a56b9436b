"""Checkpoints: weights as ``model.safetensors`` + ``config.json``; training state separately, plain types only.

All writes are atomic (temporary file in the same folder, then ``os.replace``), so a crash never leaves a half-written
checkpoint. Loading never unpickles arbitrary objects: weights come from safetensors, training state from
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glfuse.files import atomic_write, save_json  # noqa: F401 - re-exported (they used to live here)

__all__ = [
    "atomic_write",
    "save_json",
    "save_model",
    "load_model",
    "load_config",
    "publish_dir",
    "fault_point",
    "save_training_state",
    "load_training_state",
    "unwrap_model",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP / DataParallel / torch.compile wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def save_model(
    model: nn.Module,
    out_dir: str | Path,
    *,
    arch: str | None = None,
    model_args: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Save ``model.safetensors`` + ``config.json`` into ``out_dir``.

    Args:
        model: the model; ``arch``/``model_args`` default to ``model.glfuse_cfg`` set by ``create_model``.
        out_dir: target folder (created).
        extra: more config entries, e.g. ``class_names`` and ``preprocessing``.
        overwrite: if False and weights exist already, raise ``FileExistsError``.
    """
    from safetensors.torch import save_file

    model = unwrap_model(model)
    out_dir = Path(out_dir)
    cfg = dict(getattr(model, "glfuse_cfg", {}))
    arch = arch or cfg.get("arch")
    if arch is None:
        raise ValueError("save_model needs arch= (model was not built with glfuse.create_model)")
    model_args = dict(model_args if model_args is not None else cfg.get("model_args", {}))
    weights = out_dir / WEIGHTS_NAME
    if weights.exists() and not overwrite:
        raise FileExistsError(f"{weights} exists; pass --overwrite to replace it")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "arch": arch}))
    config = {"arch": arch, "model_args": model_args, "glfuse_version": _version()}
    config.update(extra or {})
    save_json(config, out_dir / CONFIG_NAME)
    return out_dir


def _version() -> str:
    from glfuse._version import __version__

    return __version__


def load_config(model_dir: str | Path) -> dict[str, Any]:
    """Read ``config.json`` of a saved model folder."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (is {model_dir} a glfuse model folder?)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if "arch" not in cfg:
        raise ValueError(f"{path}: missing 'arch'")
    return cfg


def load_model(model_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly; returns (model in eval mode, config)."""
    from safetensors.torch import load_file

    from glfuse.registry import create_model

    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    weights = model_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights file not found")
    model = create_model(cfg["arch"], **cfg.get("model_args", {}))
    try:
        sd = load_file(str(weights), device=str(map_location))
    except Exception as e:  # noqa: BLE001 - SafetensorError (truncated/corrupt) names no file
        raise ValueError(f"{weights}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: does not match {cfg['arch']} {cfg.get('model_args', {})}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model.eval(), cfg


def publish_dir(tmp: str | Path, dst: str | Path) -> None:
    """Make the complete folder ``tmp`` become ``dst`` as one unit: ``dst`` → ``dst.old``, ``tmp`` → ``dst``, then the
    old copy is removed. A crash between the renames leaves ``dst.old`` complete (``glfuse.runs.recover_run``)."""
    import shutil

    tmp, dst = Path(tmp), Path(dst)
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    fault_point(f"publish:{dst.name}:built")
    if dst.exists():
        os.replace(dst, old)
    fault_point(f"publish:{dst.name}:swap")
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Crash-test hook: with ``GLFUSE_FAULT_AT=NAME#K`` in the environment the process SIGKILLs itself the K-th time it
    passes point ``NAME`` (``publish:last:built``, ``publish:last:swap``, ``publish:best:swap``, ``epoch:trained``,
    ``epoch:saved``). Used by the fault-loop tests; a no-op otherwise."""
    spec = os.environ.get("GLFUSE_FAULT_AT")
    if not spec:
        return
    want, _, k = spec.partition("#")
    if want != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(k or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def save_training_state(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically save optimizer/scheduler/epoch/RNG/best-metric state (tensors and plain Python types only)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Load a training state saved by :func:`save_training_state` with ``weights_only=True``."""
    return torch.load(str(path), map_location="cpu", weights_only=True)
