"""Volumes, lesion boxes and case labels for slice-based staging (VDPF).

Readers
-------
One reader for every format: :func:`glfuse.data.volume_io.load_volume` (NIfTI, NRRD, DICOM series; affine kept,
reoriented to RAS by default; DICOM slice spacing checked). :func:`read_volume` here is its array-only form, by default
**as stored**: NIfTI / NRRD in file axis order, a DICOM series as ``(rows, columns, slices)``.

Slices and boxes
----------------
A 2-D slice ``i`` along ``axis`` is ``np.moveaxis(volume, axis, 0)[i]``; its first axis is *y* (rows), its second *x*
(columns). A box is ``(x_min, y_min, x_max, y_max)`` in pixel indices, **inclusive** on both ends (a one-pixel lesion is
the box ``(x, y, x, y)``). :func:`boxes_from_mask` gives one box per connected component (8-connectivity in the slice
plane) of every slice in one vectorised pass: a single ``scipy.ndimage.label`` call over the whole volume with a
structuring element that does not connect neighbouring slices, then ``find_objects``. :func:`read_boxes_csv` reads
``case_id,slice,x_min,y_min,x_max,y_max`` rows; :func:`boxes_to_mask` paints the union of a slice's boxes.

Preprocessing (spec "Decisions for glfuse — data and recipe")
-------------------------------------------------------------
:func:`clip_percentiles` (0.09th / 99.91st percentile of the whole volume), :func:`minmax_slices` (each slice to [0, 1];
a constant slice becomes 0), :func:`resize_slices` (image bicubic, clamped back to [0, 1] since bicubic overshoots;
box mask ``nearest-exact`` so it stays binary).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from glfuse.data.volume_io import VOLUME_SUFFIXES, load_volume

__all__ = [
    "VOLUME_SUFFIXES",
    "boxes_from_mask",
    "boxes_to_mask",
    "clip_percentiles",
    "is_volume_path",
    "minmax_slices",
    "normalise_label",
    "read_boxes_csv",
    "read_dicom_series",
    "read_labels_csv",
    "read_nifti",
    "read_nrrd",
    "read_volume",
    "resize_slices",
    "take_slices",
    "volume_stem",
]

_MISSING = {"", "na", "n/a", "nan", "none", "null", "?", "-"}


# --------------------------------------------------------------------------------------------------------------- readers
def is_volume_path(path: str | Path) -> bool:
    """True for a NIfTI/NRRD file or a folder (DICOM series)."""
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """File name without its volume suffix (``mask.nii.gz`` -> ``mask``); a folder's name."""
    name = Path(path).name
    low = name.lower()
    for s in VOLUME_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return name


def read_volume(path: str | Path, orientation: str | None = None) -> np.ndarray:
    """Voxel array of a NIfTI / NRRD file or a DICOM-series folder (:func:`glfuse.data.volume_io.load_volume`).

    ``orientation=None`` (default here) keeps the stored axis order; ``"RAS"`` reorients. Use ``load_volume`` to keep
    the affine."""
    return load_volume(path, orientation=orientation).array


def read_nifti(path: str | Path) -> np.ndarray:
    """NIfTI voxel array as stored (see :func:`read_volume`)."""
    return read_volume(path)


def read_nrrd(path: str | Path) -> np.ndarray:
    """NRRD voxel array as stored (see :func:`read_volume`)."""
    return read_volume(path)


def read_dicom_series(folder: str | Path) -> np.ndarray:
    """A folder with the files of one DICOM series -> ``(rows, columns, slices)`` float32 (rescale applied, slice
    spacing checked)."""
    return read_volume(folder)


# ----------------------------------------------------------------------------------------------------------------- boxes
def _axis(ndim: int, axis: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"slice axis {axis} out of range for a {ndim}-D volume")
    return axis % ndim


def boxes_from_mask(mask: np.ndarray, axis: int = -1) -> dict[int, np.ndarray]:
    """One box per in-plane connected component of every slice: ``{slice: int array [k, 4] (x0, y0, x1, y1)}``.

    Slices without lesion are absent. Boxes on a slice are ordered by (y_min, x_min).
    """
    from scipy import ndimage

    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {mask.shape}")
    ax = _axis(3, axis)
    m = np.moveaxis(np.asarray(mask) != 0, ax, 0)  # [S, rows, cols]
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = True  # 8-connected within a slice, never across slices
    lab, n = ndimage.label(m, structure=struct)
    if n == 0:
        return {}
    objs = ndimage.find_objects(lab)
    arr = np.array([[o[0].start, o[2].start, o[1].start, o[2].stop - 1, o[1].stop - 1] for o in objs], dtype=np.int64)
    order = np.lexsort((arr[:, 1], arr[:, 2], arr[:, 0]))  # by slice, then y0, then x0
    arr = arr[order]
    out: dict[int, np.ndarray] = {}
    slices, starts = np.unique(arr[:, 0], return_index=True)
    for s, a, b in zip(slices, starts, [*starts[1:], len(arr)]):
        out[int(s)] = arr[a:b, 1:]
    return out


def boxes_to_mask(boxes: Iterable[Iterable[int]], shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask ``shape`` (rows, cols) with the union of the inclusive boxes set to 1."""
    m = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[int(y0): int(y1) + 1, int(x0): int(x1) + 1] = 1
    return m


def read_boxes_csv(path: str | Path) -> dict[str, dict[int, np.ndarray]]:
    """``case_id,slice,x_min,y_min,x_max,y_max`` rows -> ``{case_id: {slice: int array [k, 4]}}``.

    Boxes are inclusive pixel indices; ``x_min > x_max`` or ``y_min > y_max`` is an error naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: boxes CSV not found")
    need = ["case_id", "slice", "x_min", "y_min", "x_max", "y_max"]
    out: dict[str, dict[int, list]] = {}
    with open(path, newline="") as f:
        rd = csv.DictReader(f)
        missing = [c for c in need if c not in (rd.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (need {','.join(need)})")
        for ln, row in enumerate(rd, start=2):
            cid = (row["case_id"] or "").strip()
            try:
                s, x0, y0, x1, y1 = (int(float(row[c])) for c in need[1:])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{ln}: case {cid}: non-integer slice/box value") from e
            if x0 > x1 or y0 > y1:
                raise ValueError(f"{path}:{ln}: case {cid}: box ({x0},{y0},{x1},{y1}) has x_min > x_max or y_min > y_max")
            out.setdefault(cid, {}).setdefault(s, []).append((x0, y0, x1, y1))
    return {c: {s: np.asarray(b, np.int64) for s, b in d.items()} for c, d in out.items()}


# ---------------------------------------------------------------------------------------------------------------- labels
def normalise_label(value: object) -> str | None:
    """CSV cell -> label string (``"2.0"`` -> ``"2"``) or None when missing."""
    if value is None:
        return None
    s = str(value).strip()
    if s.lower() in _MISSING:
        return None
    try:
        f = float(s)
        if math.isfinite(f) and f == int(f):
            return str(int(f))
    except ValueError:
        pass
    return s


def read_labels_csv(path: str | Path, label_column: str, id_column: str = "case_id") -> dict[str, str | None]:
    """``{case_id: label or None (missing)}`` from a CSV with an id column and the chosen label column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels CSV not found")
    with open(path, newline="") as f:
        rd = csv.DictReader(f)
        cols = rd.fieldnames or []
        for c in (id_column, label_column):
            if c not in cols:
                raise ValueError(f"{path}: no column {c!r} (columns: {', '.join(cols)})")
        out: dict[str, str | None] = {}
        for ln, row in enumerate(rd, start=2):
            cid = (row[id_column] or "").strip()
            if not cid:
                continue
            if cid in out:
                raise ValueError(f"{path}:{ln}: case {cid} listed twice")
            out[cid] = normalise_label(row[label_column])
    return out


# --------------------------------------------------------------------------------------------------------- preprocessing
def clip_percentiles(volume: np.ndarray, lo: float = 0.09, hi: float = 99.91) -> np.ndarray:
    """Clip the whole volume at its ``lo``-th / ``hi``-th percentiles (float32)."""
    v = np.asarray(volume, dtype=np.float32)
    a, b = np.percentile(v, [lo, hi])
    return np.clip(v, a, b)


def take_slices(volume: np.ndarray, axis: int = -1) -> np.ndarray:
    """``[S, rows, cols]`` view with the slicing axis first."""
    return np.moveaxis(volume, _axis(volume.ndim, axis), 0)


def minmax_slices(slices: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Each ``[rows, cols]`` slice of ``[S, rows, cols]`` min–max scaled to [0, 1] (constant slice -> 0)."""
    x = np.asarray(slices, dtype=np.float32)
    lo = x.min(axis=(1, 2), keepdims=True)
    rng = x.max(axis=(1, 2), keepdims=True) - lo
    return np.where(rng > eps, (x - lo) / np.where(rng > eps, rng, 1.0), 0.0).astype(np.float32)


def resize_slices(slices: np.ndarray, size: int | tuple[int, int], *, mask: bool = False) -> np.ndarray:
    """Resize ``[S, rows, cols]`` to ``[S, *size]``: image bicubic (clamped to [0, 1]), mask nearest (stays binary)."""
    import torch
    import torch.nn.functional as F

    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = np.asarray(slices)
    if x.shape[1:] == hw:
        return x.astype(np.uint8 if mask else np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    if mask:
        return F.interpolate(t, size=hw, mode="nearest-exact")[:, 0].numpy().astype(np.uint8)
    return F.interpolate(t, size=hw, mode="bicubic", align_corners=False).clamp_(0, 1)[:, 0].numpy()
