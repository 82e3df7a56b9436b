"""Fusion metrics on folders of image files: reading, pairing by stem and the per-image / summary tables.

The metrics themselves (:mod:`glfuse.metrics.fusion`) take arrays only; this module is the file side, owned by the
fusion system. Images are read by the shared reader (:func:`glfuse.data.image_io.read_grey` with ``scale="8bit"``):
float64 grey on 0–255 exactly as stored; colour images become BT.601 Y (0.299 R + 0.587 G + 0.114 B, unrounded — note
that OpenCV's grey reading would round Y to uint8). A file that cannot be decoded completely, or that holds NaN/inf or
values outside 0–255, is an error naming it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from glfuse.data import image_io
from glfuse.data.image_io import PIL_EXTS

IMAGE_SUFFIXES = frozenset(PIL_EXTS)

__all__ = ["IMAGE_SUFFIXES", "evaluate_folder", "pair_by_stem", "read_grey", "summarise"]


def read_grey(path: str | Path) -> np.ndarray:
    """Read an 8-bit image file as float64 grey 0–255 (colour → BT.601 Y; alpha dropped, palette expanded)."""
    return image_io.read_grey(path, scale="8bit")


def pair_by_stem(
    fused_dir: str | Path, a_dir: str | Path, b_dir: str | Path
) -> tuple[list[tuple[str, Path, Path, Path]], dict[str, list[str]]]:
    """Pair files by stem. Returns ``(pairs, unmatched)``; ``unmatched`` maps a folder to names missing elsewhere."""
    dirs = {"fused": fused_dir, "A": a_dir, "B": b_dir}
    pairs, unmatched = image_io.match_stems(dirs, PIL_EXTS)
    return pairs, {f"only in {k} ({Path(dirs[k])})": v for k, v in unmatched.items()}  # type: ignore[return-value]


def _flat(x: np.ndarray) -> bool:
    return bool(x.size) and float(x.max()) == float(x.min())


def summarise(rows: list[dict[str, Any]], notes: list[str] | None = None, **conventions: Any) -> dict[str, Any]:
    """``{"n", "mean", "std" (population), "conventions", "notes"}`` of per-image rows.

    A metric that is +inf on every image (PSNR of identical images) has mean +inf and std 0; a mix of finite and
    infinite values has mean ±inf and std NaN, any NaN gives NaN statistics — each with a note, never a numpy
    warning.
    """
    from glfuse.metrics.fusion import describe_conventions

    notes = list(notes or [])
    keys = [k for k in rows[0] if k != "image"]
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for k in keys:
        v = np.array([r[k] for r in rows], dtype=np.float64)
        if np.isfinite(v).all():
            mean[k], std[k] = float(np.mean(v)), float(np.std(v))
        elif (v == v[0]).all():
            mean[k], std[k] = float(v[0]), 0.0
        else:  # e.g. PSNR +inf on identical images next to finite ones, or NaN (image below a metric's minimum size)
            mean[k] = math.nan if np.isnan(v).any() else float(np.mean(v))
            std[k] = math.nan
            notes.append(f"{k}: non-finite value(s) on {int((~np.isfinite(v)).sum())} image(s); mean = {mean[k]}, "
                         "std reported as NaN (see per_image)")
    return {"n": len(rows), "mean": mean, "std": std, "conventions": describe_conventions(**conventions),
            "notes": notes}


def _read_triple(stem: str, pf: Path, pa: Path, pb: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    f, a, b = read_grey(pf), read_grey(pa), read_grey(pb)
    if not (f.shape == a.shape == b.shape):
        raise ValueError(f"{stem}: shapes differ: fused {pf} {f.shape}, A {pa} {a.shape}, B {pb} {b.shape}")
    flat = [n for n, x in (("fused", f), ("A", a), ("B", b)) if _flat(x)]
    note = None
    if flat:
        note = (f"{pf.name}: constant image ({', '.join(flat)}): values follow the reference evaluator's definitions "
                "for flat images (correlations 0, VIF 0, Qabf from the zero-padded border edges, PSNR +inf if equal)")
    return f, a, b, note


def evaluate_folder(
    fused_dir: str | Path,
    a_dir: str | Path,
    b_dir: str | Path,
    *,
    metrics: Iterable[str] | None = None,
    strict: bool = True,
    progress: bool = True,
    **conventions: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate every fused image in ``fused_dir`` against the same-named (by stem) sources in ``a_dir``/``b_dir``.

    Images are read with PIL (PNG/JPG/TIFF/BMP); colour images are converted to BT.601 Y on 0–255.  Names that are
    not present in all three folders raise ``ValueError`` listing them (``strict=True``; the CLI's
    ``--allow-unmatched`` is ``strict=False``) or are listed in a warning and skipped.  Returns ``(rows, summary)``:
    one dict per image (``image`` + metric values) and :func:`summarise`'s summary.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from glfuse.metrics.fusion import _resolve, evaluate

    conv = _resolve(conventions)
    pairs, unmatched = pair_by_stem(fused_dir, a_dir, b_dir)
    if unmatched:
        msg = "unmatched image names (not in all three folders): " + "; ".join(
            f"{where}: {', '.join(names)}" for where, names in unmatched.items()
        )
        if strict:
            raise ValueError(msg + " (pass --allow-unmatched / strict=False to evaluate the matched ones)")
        warnings.warn(msg + " — skipped", stacklevel=2)
    if not pairs:
        raise ValueError(f"no matched images in {fused_dir}, {a_dir}, {b_dir}")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    columns = (TextColumn("[bold]fusion metrics"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("eval", total=len(pairs))
        for stem, pf, pa, pb in pairs:
            f, a, b, note = _read_triple(stem, pf, pa, pb)
            if note:
                notes.append(note)
            with np.errstate(divide="ignore", invalid="ignore"):
                rows.append({"image": pf.name, **evaluate(f, a, b, metrics=metrics, **conv)})
            bar.advance(task)
    return rows, summarise(rows, notes, **conventions)
