"""Seeded, stratified train/val/test splits and k-fold splits of any list of items (image paths, case ids, ...).

``make_splits(items, labels, ratios=(0.7, 0.1, 0.2), seed=0)`` → ``{"train": [(item, label), ...], "val": ..., "test": ...}``;
``make_kfold(items, labels, k=5, seed=0)`` → ``[{"train": [...], "val": [...]}, ...]`` (every item is in exactly one
fold's ``val``). Within each class the items are shuffled with ``random.Random(seed)`` and cut by the ratios
(largest-remainder rounding, so the per-class counts add up exactly). The result depends only on the items, labels and
seed — not on the input order. :func:`write_split_csvs` writes ``<name>.csv`` files (header ``path,label``) readable by
:func:`glfuse.data.images.image_csv`; for case-level splits the first column simply holds the case id.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["make_kfold", "make_splits", "read_split_csv", "write_kfold_csvs", "write_split_csvs"]


def _by_class(items: Sequence[Any], labels: Sequence[Hashable], seed: int) -> dict[Hashable, list[Any]]:
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} items but {len(labels)} labels")
    if len(set(map(str, items))) != len(items):
        raise ValueError("items must be unique")
    groups: dict[Hashable, list[Any]] = {}
    for it, lab in sorted(zip(items, labels), key=lambda t: (str(t[1]), str(t[0]))):
        groups.setdefault(lab, []).append(it)
    for i, lab in enumerate(sorted(groups, key=str)):
        random.Random(f"{seed}:{i}:{lab}").shuffle(groups[lab])
    return groups


def _counts(n: int, ratios: Sequence[float]) -> list[int]:
    total = sum(ratios)
    exact = [n * r / total for r in ratios]
    out = [math.floor(e) for e in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: n - sum(out)]:
        out[i] += 1
    return out


def make_splits(items: Sequence[Any], labels: Sequence[Hashable], ratios: Sequence[float] = (0.7, 0.1, 0.2),
                seed: int = 0, names: Sequence[str] = ("train", "val", "test")) -> dict[str, list[tuple[Any, Any]]]:
    """Stratified split into ``len(ratios)`` parts named ``names`` (ratios are normalised; 0 gives an empty part)."""
    if len(ratios) != len(names):
        raise ValueError(f"{len(ratios)} ratios for {len(names)} split names {list(names)}")
    if any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be >= 0 and not all 0, got {list(ratios)}")
    out: dict[str, list[tuple[Any, Any]]] = {n: [] for n in names}
    for lab, members in _by_class(items, labels, seed).items():
        start = 0
        for name, c in zip(names, _counts(len(members), ratios)):
            out[name] += [(m, lab) for m in members[start : start + c]]
            start += c
    return out


def make_kfold(items: Sequence[Any], labels: Sequence[Hashable], k: int = 5, seed: int = 0,
               ) -> list[dict[str, list[tuple[Any, Any]]]]:
    """Stratified k-fold: fold ``i``'s ``val`` is the i-th of k near-equal parts of every class; ``train`` the rest."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    parts: list[list[tuple[Any, Any]]] = [[] for _ in range(k)]
    offset = 0
    for lab, members in _by_class(items, labels, seed).items():
        # deal round-robin, continuing where the previous class stopped, so fold sizes differ by at most one
        for j, m in enumerate(members):
            parts[(offset + j) % k].append((m, lab))
        offset = (offset + len(members)) % k
    if min(len(p) for p in parts) == 0:
        raise ValueError(f"{len(items)} items are too few for {k} folds")
    return [{"train": [x for j, p in enumerate(parts) if j != i for x in p], "val": list(parts[i])} for i in range(k)]


def _write_csv(rows: Sequence[tuple[Any, Any]], path: Path, relative_to: Path | None, header: Sequence[str]) -> None:
    from glfuse.files import write_csv

    def rel(item: Any) -> str:
        s = str(item)
        return os.path.relpath(s, relative_to) if relative_to is not None and Path(s).is_absolute() else s

    write_csv(path, [[rel(item), lab] for item, lab in rows], header=header)


def write_split_csvs(splits: Mapping[str, Sequence[tuple[Any, Any]]], out_dir: str | Path, *, overwrite: bool = False,
                     relative_paths: bool = True, header: Sequence[str] = ("path", "label")) -> dict[str, Path]:
    """Write ``out_dir/<name>.csv`` per split. Absolute paths are written relative to ``out_dir`` (as
    :func:`~glfuse.data.images.image_csv` expects) unless ``relative_paths=False``. Refuses to replace files unless
    ``overwrite``."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.csv" for name in splits}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite (overwrite=True) to replace it")
    base = out_dir.resolve() if relative_paths else None
    for name, rows in splits.items():
        _write_csv(rows, paths[name], base, header)
    return paths


def write_kfold_csvs(folds: Sequence[Mapping[str, Sequence[tuple[Any, Any]]]], out_dir: str | Path, *,
                     overwrite: bool = False, relative_paths: bool = True,
                     header: Sequence[str] = ("path", "label")) -> list[dict[str, Path]]:
    """Write ``out_dir/fold<i>/{train,val}.csv`` for each fold (i = 0..k-1)."""
    return [write_split_csvs(f, Path(out_dir) / f"fold{i}", overwrite=overwrite, relative_paths=relative_paths,
                             header=header) for i, f in enumerate(folds)]


def read_split_csv(path: str | Path) -> list[tuple[str, str]]:
    """Rows ``(first column, second column)`` of a split CSV written by :func:`write_split_csvs` (header skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]
