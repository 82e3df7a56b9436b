"""Typed YAML configs: presets in ``glfuse/configs/`` (``configs/`` in the repo), ``key=value`` overrides on the CLI.

Each system describes its config as nested dataclasses. :func:`build_config` merges a preset (name or path) with dotted
overrides (``train.epochs=5 model.name=hifuse_small``), then checks every key and type: an unknown key or a wrong type
fails with a message naming the key (``config key 'train.lr': expected float, got 'abc'``). The resolved config is
saved in every run directory (:func:`config_to_dict` + YAML). Resuming a run checks the new config against that
saved one (:func:`check_resume_config`): only :data:`RESUMABLE_KEYS` may change.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

import yaml

__all__ = ["ConfigError", "Range", "Match", "validate_config", "build_config", "from_dict", "config_to_dict",
           "preset_path", "list_presets", "save_config", "RESUMABLE_KEYS", "check_resume_config", "config_source"]

T = TypeVar("T")
PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config key is unknown or has a value of the wrong type."""


@dataclasses.dataclass(frozen=True)
class Range:
    """A declared numeric range for a config field: ``epochs: Annotated[int, Range(ge=1)] = 100``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)

    def check(self, value: Any, key: str) -> None:
        if value is None or isinstance(value, (list, tuple)):
            for i, v in enumerate(value or ()):
                self.check(v, f"{key}[{i}]")
            return
        ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        if not ok or value != value:  # NaN fails every range
            raise ConfigError(f"config key {key!r}: must be {self.describe()}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Match:
    """A declared pattern for a string field: ``device: Annotated[str, Match(r"auto|cpu|cuda(:\\d+)?", "auto | cpu |
    cuda | cuda:N")]``."""

    pattern: str
    allowed: str

    def check(self, value: Any, key: str) -> None:
        if value is not None and not re.fullmatch(self.pattern, str(value)):
            raise ConfigError(f"config key {key!r}: expected {self.allowed}, got {value!r}")


def list_presets() -> list[str]:
    """Names of the built-in YAML presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path) -> Path:
    """Resolve a preset name (``hifuse_covid_ct``) or a YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: config file not found")
        return p
    cand = PRESET_DIR / f"{name_or_path}.yaml"
    if not cand.is_file():
        raise FileNotFoundError(f"unknown preset {name_or_path!r}; available: {', '.join(list_presets())}")
    return cand


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key {key!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["train.epochs=5", "model.args.drop_rate=0.1"]`` → nested dict; values parsed as YAML scalars/lists."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        _set_dotted(out, key, yaml.safe_load(raw) if raw.strip() != "" else None)
    return out


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        out = _coerce(value, args[0], key)
        for rule in tp.__metadata__:
            if isinstance(rule, (Range, Match)):
                rule.check(out, key)
        return out
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"config key {key!r}: expected {_tname(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: expected one of {' | '.join(map(str, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        seq = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected int, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key {key!r}: expected {_tname(tp)}, got {value!r}")
    return value


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: expected a mapping")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; allowed in this section: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def validate_config(cfg: Any, prefix: str = "") -> Any:
    """Check every field of the dataclass ``cfg`` (recursively) against its declared type, ``Literal`` values,
    :class:`Range` and :class:`Match`; raises :class:`ConfigError` naming the first bad key. Returns ``cfg``.

    :func:`build_config` does this while building; call it for configs made in Python (``TrainConfig(epochs=0)``)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_config(value, f"{prefix}{f.name}.")
        else:
            _coerce(config_to_dict(value), typing.get_type_hints(type(cfg), include_extras=True)[f.name],
                    prefix + f.name)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Dataclass config → plain dict (tuples become lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def _read_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping (an empty file is ``{}``)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def build_config(cls: type[T], preset: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Preset (name or YAML path, optional) + ``key=value`` overrides → validated dataclass ``cls``."""
    data: dict = {}
    if preset is not None:
        data = _read_mapping(preset_path(preset))
        data.pop("description", None)
    data = _merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from glfuse.files import write_text

    return write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_source(config: str | Path | None, run_dir: str | Path | None, resume: bool, default: str | None = None,
                  example: str = "PRESET") -> str:
    """The preset/YAML a ``train`` command builds its config from: ``config`` when given; when resuming, the run's own
    ``run_dir/config.yaml``; otherwise ``default``. With no ``default``, a missing source is an error naming what to pass.
    """
    if config is not None:
        return str(config)
    if resume and run_dir is not None:
        saved = Path(run_dir) / "config.yaml"
        if saved.is_file():
            return str(saved)
        if default is None:
            raise FileNotFoundError(f"{saved}: no saved config to resume from (pass --config)")
    if default is None:
        raise ValueError(f"--config PRESET_OR_YAML is required (e.g. --config {example})")
    return default


#: keys that may differ when a run is resumed: how long it runs and how it is run, not what is trained or how
RESUMABLE_KEYS = ("train.epochs", "train.early_stop_patience", "train.eval_every", "train.save_every",
                  "train.eval_batch_size", "train.num_workers", "train.device", "train.progress", "train.tune_allocator",
                  "train.tracker")


def _changed_keys(cfg: Any, old: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, new value)`` for every field of the dataclass ``cfg`` whose value differs from
    ``old``; nested dataclass sections are walked, any other value (lists, free-form dicts) is compared whole."""
    out: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cfg):
        if f.name not in old:  # a field added since the run was saved: nothing to compare with
            continue
        value, saved = getattr(cfg, f.name), old[f.name]
        if dataclasses.is_dataclass(value) and isinstance(saved, dict):
            out += _changed_keys(value, saved, f"{prefix}{f.name}.")
        elif config_to_dict(value) != saved:
            out.append((prefix + f.name, saved, config_to_dict(value)))
    return out


def check_resume_config(cfg: Any, saved: str | Path) -> list[str]:
    """Compare the config of a resumed run with the one the run was started with (``saved``, its ``config.yaml``).

    Returns the dotted keys that changed (all in :data:`RESUMABLE_KEYS`, e.g. more ``train.epochs``). Any other change
    (data, model, loss, optimiser, schedule, seed, …) raises :class:`ConfigError` naming each key with both values: the
    resumed epochs would silently train something else than the saved weights and optimiser state were made for.
    A run without a saved config (nothing to compare with) returns ``[]``.
    """
    saved = Path(saved)
    if not saved.is_file():
        return []
    changed = _changed_keys(cfg, _read_mapping(saved))
    bad = [c for c in changed if c[0] not in RESUMABLE_KEYS]
    if bad:
        detail = "; ".join(f"{k}: run {a!r}, now {b!r}" for k, a, b in bad)
        raise ConfigError(f"{saved.parent}: cannot resume with a different config ({detail}). Only "
                          f"{', '.join(RESUMABLE_KEYS)} may change when resuming; resume without those overrides, or "
                          "start a new run in another output folder")
    return [k for k, _, _ in changed]
