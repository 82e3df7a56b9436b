"""Dataset -> slice cache for VDPF staging (``glfuse stage prepare``) and case-level splits (``glfuse stage split``).

Input layout: ``IMAGES/<case_id>/`` holds the case's image volume (NIfTI / NRRD file or a DICOM-series folder) and, unless
a boxes CSV is given, a mask volume matching ``mask_name`` (default ``mask``). The image matches ``image_name`` when
given, else it is the only other volume in the folder. Names are patterns, case-insensitive: the exact file name, the
name without its suffix (``GT_W`` or ``GT_W.nii.gz``) or a glob (``*flair*``). Every case folder's problem is reported
in one error. Labels come from a CSV (``case_id,<label column>``); ``predict_only`` needs none. Labelled data with a
single class is rejected here; a split that leaves a class out of train (too few cases) is rejected by ``make_split``.

Volumes are read with :func:`glfuse.data.volume_io.load_volume` and reoriented to RAS (``orientation``, recorded in
``cases.json``; ``None`` keeps the stored axes) before slicing, so ``axis`` is a RAS axis (2 = axial; -1 = the last).
The mask must share the image's voxel grid (shape and affine; an error naming both files) unless ``resample_mask``
(nearest-neighbour onto the image grid, MONAI).

Each volume is preprocessed as the spec says: clip at its 0.09th / 99.91st percentiles, slices along ``axis`` min–max
scaled to [0, 1], resized to ``size``² (image bicubic, box mask nearest). The box mask of a slice is the union of its
lesion boxes (one box per connected component of the mask on that slice, or the CSV boxes). By default only slices with
at least one box are kept (they are the only ones VDPF trains and evaluates on); ``all_slices=True`` keeps every slice.

Cache folder: ``slices.npz`` (compressed; ``image`` [S, size, size] float16 or float32, ``mask`` [S, size, size] uint8,
``case_index`` [S] int32, ``slice_index`` [S] int32, ``label`` [S] int64 (class index, -1 for none), ``has_lesion`` [S]
bool) and ``cases.json`` (classes, preprocessing, per-case records with their row range in the arrays, and the cases that
were left out and why).

Bad input is reported by case id and file: a missing label only warns and leaves the case out (safe: nothing about the
case is wrong, it just cannot be used); an empty mask, a box outside its slice, NaN/Inf voxels or a mask whose shape
differs from its image stop the run with a ``ValueError``. Boxes CSV coordinates refer to the slices of the reoriented
volume.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from glfuse.checkpoint import atomic_write, save_json
from glfuse.data import volumes as V

__all__ = [
    "CACHE_ARRAYS",
    "CASES_JSON",
    "CaseInput",
    "StagingDataWarning",
    "discover_cases",
    "load_cache_index",
    "name_matches",
    "make_split",
    "prepare",
    "preprocess_case",
    "read_split",
    "stratified_kfold",
    "stratified_split",
    "summary_table",
]

CACHE_ARRAYS = "slices.npz"
CASES_JSON = "cases.json"
CACHE_VERSION = 1


class StagingDataWarning(UserWarning):
    """A case was left out (missing label, no image folder, ...)."""


@dataclass
class CaseInput:
    """One case to prepare: its image volume and either a mask volume or boxes per slice."""

    case_id: str
    image: Path
    mask: Path | None = None
    boxes: dict[int, np.ndarray] | None = None
    boxes_source: str | None = None  # file the boxes came from (for messages)
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------------ discovery
def _volumes_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and V.is_volume_path(p))


def name_matches(path: str | Path, pattern: str) -> bool:
    """Case-insensitive match of a volume file/folder against a name pattern: the exact name, the name without its
    volume suffix (``GT_W`` matches ``GT_W.nii.gz``; ``GT_W.nii.gz`` matches too), or a glob (``*flair*``) tried on
    both."""
    name, stem, pat = Path(path).name.lower(), V.volume_stem(path).lower(), pattern.strip().lower()
    if any(ch in pat for ch in "*?["):
        return fnmatch(name, pat) or fnmatch(stem, pat)
    return pat in (name, stem) or V.volume_stem(pat) == stem


def _pick(d: Path, vols: list[Path], pattern: str | None, what: str, problems: list[str]) -> Path | None:
    """The one volume of ``vols`` matching ``pattern`` (None: the only one), else a problem noted for ``d``."""
    cand = vols if pattern is None else [p for p in vols if name_matches(p, pattern)]
    if len(cand) == 1:
        return cand[0]
    found = ", ".join(p.name for p in vols) or "no volumes"
    if not cand:
        problems.append(f"case {d.name}: no {what} matching {pattern!r} in {d} (found: {found})"
                        + ("; or pass --boxes" if what == "mask" else ""))
    elif pattern is None:
        problems.append(f"case {d.name}: cannot tell the {what} volume in {d} (found: {found}); pass --image-name")
    else:
        problems.append(f"case {d.name}: {len(cand)} files match the {what} name {pattern!r} in {d} "
                        f"({', '.join(p.name for p in cand)}); use a more specific name")
    return None


def discover_cases(
    images: str | Path,
    *,
    image_name: str | None = None,
    mask_name: str = "mask",
    boxes_csv: str | Path | None = None,
    need_masks: bool = True,
) -> list[CaseInput]:
    """Case folders under ``images`` (sorted by id) with their image and mask (or CSV boxes).

    ``image_name`` / ``mask_name`` are name patterns (:func:`name_matches`: exact, without suffix, or a glob). Every
    case folder's problem (missing mask, no or several matching images) is collected and reported in **one**
    ``FileNotFoundError``. ``need_masks=False`` (boxes given elsewhere) does not look for masks.
    """
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: images folder not found")
    boxes = V.read_boxes_csv(boxes_csv) if boxes_csv is not None else None
    cases: list[CaseInput] = []
    problems: list[str] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        vols = _volumes_in(d)
        if not vols:
            continue
        masks = [p for p in vols if name_matches(p, mask_name)]
        mask = _pick(d, vols, mask_name, "mask", problems) if boxes is None and need_masks else None
        img = _pick(d, [p for p in vols if p not in masks], image_name, "image", problems)
        if img is None:
            continue
        c = CaseInput(case_id=d.name, image=img, mask=mask)
        if boxes is not None:
            c.boxes, c.boxes_source = boxes.get(d.name, {}), str(boxes_csv)
        cases.append(c)
    if problems:
        raise FileNotFoundError(f"{root}: {len(problems)} problem(s): " + "; ".join(problems))
    if not cases:
        raise ValueError(f"{root}: no case folders with volumes found")
    return cases


# -------------------------------------------------------------------------------------------------------- preprocessing
def _read_case_volumes(case: CaseInput, orientation: str | None, resample_mask: bool) -> tuple[np.ndarray, Any]:
    """The case's image array and its mask array (None with boxes), on one grid; errors name the case and files."""
    from glfuse.data.volume_io import geometry_mismatch, load_volume, resample_to

    cid = case.case_id
    img = load_volume(case.image, orientation=orientation)
    vol = img.array
    if np.issubdtype(vol.dtype, np.floating) or np.issubdtype(vol.dtype, np.complexfloating):
        bad = int(np.count_nonzero(~np.isfinite(vol)))
        if bad:
            raise ValueError(f"case {cid} ({case.image}): {bad} NaN/Inf voxel(s)")
    if case.mask is None:
        return vol, None
    mk = load_volume(case.mask, orientation=orientation)
    why = geometry_mismatch(img, mk)
    if why and not resample_mask:
        if mk.shape != img.shape:
            raise ValueError(f"case {cid} ({case.mask}): mask shape {mk.shape} differs from image shape {img.shape} "
                             f"({case.image}); pass --resample-mask to resample the mask onto the image grid")
        raise ValueError(f"case {cid} ({case.mask}): mask grid differs from the image's ({case.image}): {why}; pass "
                         f"--resample-mask to resample the mask onto the image grid")
    m = mk.array
    if np.issubdtype(m.dtype, np.floating) and not np.isfinite(m).all():
        raise ValueError(f"case {cid} ({case.mask}): NaN/Inf voxel(s) in the mask")
    if why:
        m = resample_to(mk.with_array((m != 0).astype(np.float32)), img, mode="nearest").array
    return vol, m


def _case_boxes(case: CaseInput, m: np.ndarray | None, ax: int, n_slices: int,
                plane: tuple[int, ...]) -> dict[int, np.ndarray]:
    cid = case.case_id
    if m is not None:
        boxes = V.boxes_from_mask(m, axis=ax)
        if not boxes:
            raise ValueError(f"case {cid} ({case.mask}): empty mask (no lesion voxels), so no lesion boxes")
        return boxes
    boxes = case.boxes or {}
    src = case.boxes_source or "boxes"
    if not boxes:
        raise ValueError(f"case {cid} ({src}): no lesion boxes for this case")
    for s, b in boxes.items():
        if not 0 <= s < n_slices:
            raise ValueError(f"case {cid} ({src}): slice {s} outside the volume ({n_slices} slices along axis {ax}; "
                             f"image {case.image})")
        b = np.asarray(b)
        if (b[:, :2] < 0).any() or (b[:, 2] >= plane[1]).any() or (b[:, 3] >= plane[0]).any():
            bad = b[((b[:, :2] < 0).any(1)) | (b[:, 2] >= plane[1]) | (b[:, 3] >= plane[0])][0].tolist()
            raise ValueError(f"case {cid} ({src}): box {tuple(bad)} on slice {s} lies outside the "
                             f"{plane[1]}x{plane[0]} (width x height) slice of {case.image}")
    return boxes


def preprocess_case(
    case: CaseInput, *, axis: int = -1, size: int = 224, all_slices: bool = False,
    clip: tuple[float, float] = (0.09, 99.91), orientation: str | None = "RAS", resample_mask: bool = False,
) -> dict[str, Any]:
    """Read, check and preprocess one case -> ``{"image" [S,size,size] f32, "mask" [S,size,size] u8, "slice_index",
    "has_lesion", "n_slices", "n_boxes", "shape"}``. Raises ``ValueError`` naming the case and file on bad input.

    Volumes are reoriented to ``orientation`` (default RAS; None keeps the stored axes) before slicing along ``axis``;
    the mask must share the image's grid (shape and affine) unless ``resample_mask``."""
    vol, m = _read_case_volumes(case, orientation, resample_mask)
    ax = axis % 3
    n_slices = vol.shape[ax]
    plane = tuple(s for i, s in enumerate(vol.shape) if i != ax)  # (rows, cols)
    boxes = _case_boxes(case, m, ax, n_slices, plane)
    vol = V.clip_percentiles(vol, *clip)
    sl = V.take_slices(vol, ax)
    lesion = np.zeros(n_slices, bool)
    lesion[list(boxes)] = True
    keep = np.arange(n_slices) if all_slices else np.flatnonzero(lesion)
    img = V.minmax_slices(sl[keep])
    bm = np.zeros((len(keep), *plane), np.uint8)
    for j, s in enumerate(keep):
        if s in boxes:
            bm[j] = V.boxes_to_mask(boxes[int(s)], plane)
    return {
        "image": V.resize_slices(img, size),
        "mask": V.resize_slices(bm, size, mask=True),
        "slice_index": keep.astype(np.int32),
        "has_lesion": lesion[keep],
        "n_slices": int(n_slices),
        "n_lesion_slices": int(lesion.sum()),
        "n_boxes": int(sum(len(b) for b in boxes.values())),
        "shape": list(vol.shape),
    }


def _class_order(labels: list[str]) -> list[str]:
    uniq = sorted(set(labels))
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return uniq


# -------------------------------------------------------------------------------------------------------------- prepare
def _labelled(found: list[CaseInput], labels: str | Path, label_column: str, id_column: str, images: str | Path,
              all_listed: bool) -> tuple[list[CaseInput], list[dict[str, str]]]:
    """Cases with a label (warning about and recording the others)."""
    lab = V.read_labels_csv(labels, label_column, id_column)
    skipped: list[dict[str, str]] = []
    usable: list[CaseInput] = []
    for c in found:
        c.label = lab.get(c.case_id)
        if c.label is None:
            why = "missing label" if c.case_id in lab else "not listed"
            msg = f"case {c.case_id} ({labels}): {why} in column {label_column!r}; case left out"
            warnings.warn(msg, StagingDataWarning, stacklevel=3)
            skipped.append({"case_id": c.case_id, "reason": f"{why} in column {label_column!r}", "file": str(labels)})
            continue
        usable.append(c)
    if all_listed:
        on_disk = {c.case_id for c in found}
        for cid in sorted(set(lab) - on_disk):
            warnings.warn(f"case {cid} ({labels}): listed in the labels CSV but has no image folder under {images}; "
                          "ignored", StagingDataWarning, stacklevel=3)
            skipped.append({"case_id": cid, "reason": "no image folder", "file": str(images)})
    if not usable:
        raise ValueError(f"{labels}: no case has a label in column {label_column!r}")
    return usable, skipped


def _check_classes(usable: list[CaseInput], cls: list[str], labels: str | Path, label_column: str) -> None:
    bad = sorted({c.label for c in usable} - set(cls))  # type: ignore[arg-type]
    if bad:
        raise ValueError(f"{labels}: label value(s) {', '.join(bad)} not among the given classes {cls}")
    counts = Counter(c.label for c in usable)
    if len(counts) < 2:
        only = next(iter(counts))
        raise ValueError(f"{labels}: all {len(usable)} usable case(s) have the label {only!r} in column "
                         f"{label_column!r}; staging needs at least 2 classes (use --predict-only to prepare cases "
                         f"for prediction only)")
    few = [k for k in cls if counts.get(k, 0) < 2]
    if few:
        shown = ", ".join(f"{k}: {counts.get(k, 0)}" for k in few)
        warnings.warn(f"{labels}: class(es) with fewer than 2 cases ({shown}); a case-level split cannot put them in "
                      f"both train and test", StagingDataWarning, stacklevel=3)


def _build_arrays(usable: list[CaseInput], cls: list[str], pre: dict[str, Any], progress: bool,
                  console: Any) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    from rich.progress import Progress

    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "mask", "case_index", "slice_index", "label",
                                                          "has_lesion")}
    records, row = [], 0
    with Progress(disable=not progress, transient=True, console=console) as bar:
        job = bar.add_task("prepare", total=len(usable))
        for ci, c in enumerate(usable):
            r = preprocess_case(c, axis=pre["axis"], size=pre["size"], all_slices=pre["all_slices"],
                                orientation=pre["orientation"], resample_mask=pre["resample_mask"])
            n = len(r["slice_index"])
            li = cls.index(c.label) if c.label is not None else -1
            arrays["image"].append(r["image"].astype(pre["dtype"]))
            arrays["mask"].append(r["mask"])
            arrays["case_index"].append(np.full(n, ci, np.int32))
            arrays["slice_index"].append(r["slice_index"])
            arrays["label"].append(np.full(n, li, np.int64))
            arrays["has_lesion"].append(r["has_lesion"])
            records.append({"case_id": c.case_id, "label": c.label, "label_index": li, "image": str(c.image),
                            "mask": str(c.mask) if c.mask else None, "boxes": c.boxes_source, "shape": r["shape"],
                            "n_slices": r["n_slices"], "n_lesion_slices": r["n_lesion_slices"],
                            "n_boxes": r["n_boxes"], "rows": [row, row + n]})
            row += n
            bar.advance(job)
    return {k: np.concatenate(v) for k, v in arrays.items()}, records


def prepare(
    images: str | Path,
    labels: str | Path | None,
    label_column: str | None,
    out_dir: str | Path,
    *,
    id_column: str = "case_id",
    boxes_csv: str | Path | None = None,
    image_name: str | None = None,
    mask_name: str = "mask",
    axis: int = -1,
    size: int = 224,
    dtype: str = "float16",
    all_slices: bool = False,
    classes: list[str] | None = None,
    cases: list[str] | None = None,
    orientation: str | None = "RAS",
    resample_mask: bool = False,
    predict_only: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Build the slice cache in ``out_dir``; returns the ``cases.json`` content (see module docstring).

    ``classes`` fixes the class order (default: sorted label values, numerically when all numeric); ``cases`` restricts
    to these case ids (in that order of appearance on disk). ``predict_only=True`` needs no labels (every case is
    kept, label index -1; such a cache can be predicted on, not split or trained on). Labelled data with a single class
    is an error.
    """
    out = Path(out_dir)
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    if not predict_only and (labels is None or label_column is None):
        raise ValueError("labels CSV and label column are required (--labels, --label-column) unless --predict-only")
    if (out / CASES_JSON).exists() and not overwrite:
        raise FileExistsError(f"{out / CASES_JSON} exists; pass --overwrite to rebuild the cache")
    found = discover_cases(images, image_name=image_name, mask_name=mask_name, boxes_csv=boxes_csv)
    if cases is not None:
        unknown = sorted(set(cases) - {c.case_id for c in found})
        if unknown:
            raise ValueError(f"case(s) {', '.join(unknown)} not found under {images}")
        found = [c for c in found if c.case_id in set(cases)]
    if predict_only:
        usable, skipped, cls = found, [], list(classes or [])
    else:
        usable, skipped = _labelled(found, labels, label_column, id_column, images, cases is None)  # type: ignore[arg-type]
        cls = list(classes) if classes else _class_order([c.label for c in usable])  # type: ignore[misc]
        _check_classes(usable, cls, labels, label_column)  # type: ignore[arg-type]
    pre = {"axis": axis, "size": size, "dtype": dtype, "orientation": orientation, "clip_percentiles": [0.09, 99.91],
           "slice_minmax": True, "image_resize": "bicubic", "mask_resize": "nearest", "all_slices": all_slices,
           "resample_mask": resample_mask}
    cat, records = _build_arrays(usable, cls, pre, progress, console)
    out.mkdir(parents=True, exist_ok=True)

    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **cat)

    atomic_write(out / CACHE_ARRAYS, w)
    index = {
        "version": CACHE_VERSION,
        "label_column": None if predict_only else label_column,
        "predict_only": predict_only,
        "classes": cls,
        "preprocessing": pre,
        "sources": {"images": str(images), "labels": None if predict_only else str(labels),
                    "boxes": str(boxes_csv) if boxes_csv else None},
        "n_slices": int(len(cat["label"])),
        "cases": records,
        "skipped": skipped,
    }
    save_json(index, out / CASES_JSON)
    return index


def load_cache_index(cache_dir: str | Path) -> dict[str, Any]:
    """Read ``cases.json`` of a cache folder."""
    p = Path(cache_dir) / CASES_JSON
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not a staging cache (run `glfuse stage prepare` first)")
    return json.loads(p.read_text())


def summary_table(index: dict[str, Any], title: str = "staging cache"):
    """A rich Table: cases, slices, lesion slices and boxes per class, plus left-out cases."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("class", "cases", "slices", "lesion slices", "boxes"):
        t.add_column(col, justify="right" if col != "class" else "left")
    tot = Counter()
    for k in index["classes"]:
        rs = [r for r in index["cases"] if r["label"] == k]
        vals = (len(rs), sum(r["n_slices"] for r in rs), sum(r["n_lesion_slices"] for r in rs),
                sum(r["n_boxes"] for r in rs))
        tot.update(dict(zip(("c", "s", "l", "b"), vals)))
        t.add_row(str(k), *map(str, vals))
    if index.get("predict_only"):
        rs = index["cases"]
        vals = (len(rs), sum(r["n_slices"] for r in rs), sum(r["n_lesion_slices"] for r in rs),
                sum(r["n_boxes"] for r in rs))
        tot.update(dict(zip(("c", "s", "l", "b"), vals)))
        t.add_row("(no labels: predict only)", *map(str, vals))
    t.add_row("[bold]all", *(f"[bold]{tot[k]}" for k in ("c", "s", "l", "b")))
    if index.get("skipped"):
        t.caption = "left out: " + "; ".join(f"{s['case_id']} ({s['reason']})" for s in index["skipped"])
    return t


# --------------------------------------------------------------------------------------------------------------- splits
def stratified_split(ids: list[str], labels: list[str], val: float = 0.15, test: float = 0.15,
                     seed: int = 0) -> dict[str, list[str]]:
    """Seeded stratified train/val/test split of case ids (:func:`glfuse.data.splits.make_splits`)."""
    from glfuse.data.splits import make_splits

    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise ValueError(f"val ({val}) and test ({test}) fractions must be in [0, 1) with val + test < 1")
    s = make_splits(ids, labels, ratios=(1 - val - test, val, test), seed=seed)
    return {k: sorted(c for c, _ in v) for k, v in s.items()}


def stratified_kfold(ids: list[str], labels: list[str], k: int = 5, val: float = 0.15,
                     seed: int = 0) -> list[dict[str, list[str]]]:
    """Seeded stratified k-fold over cases (:func:`glfuse.data.splits.make_kfold`): fold i tests on part i; a
    stratified ``val`` fraction of the remaining cases validates, the rest trains."""
    from glfuse.data.splits import make_kfold

    folds = []
    for i, f in enumerate(make_kfold(ids, labels, k=k, seed=seed)):
        rest = f["train"]
        s = stratified_split([c for c, _ in rest], [lab for _, lab in rest], val=val, test=0.0, seed=seed + 1 + i)
        folds.append({"train": s["train"], "val": s["val"], "test": sorted(c for c, _ in f["val"])})
    return folds


def _check_split_parts(cache: Path, parts: list[dict[str, list[str]]], labels: dict[str, str], val: float,
                       test: float) -> None:
    """Every train part holds every class; val/test parts asked for are not empty (else: too few cases)."""
    counts = Counter(labels.values())
    shown = ", ".join(f"class {k}: {n}" for k, n in sorted(counts.items()))
    if len(counts) < 2:
        raise ValueError(f"{cache}: all {len(labels)} case(s) have one class ({shown}); staging needs at least 2 classes")
    for i, p in enumerate(parts):
        where = f"fold {i}: " if len(parts) > 1 else ""
        lacking = sorted(set(counts) - {labels[c] for c in p["train"]})
        empty = [n for n, f in (("val", val), ("test", test)) if f > 0 and not p[n]]
        if lacking or empty:
            why = (f"the train part lacks class(es) {', '.join(lacking)}" if lacking
                   else f"the {' and '.join(empty)} part{'s' if len(empty) > 1 else ''} would be empty")
            raise ValueError(f"{cache}: too few cases for this split ({where}{why}; cases per {shown}); lower --val/--test "
                             f"or -k, or add cases")


def make_split(cache_dir: str | Path, out: str | Path, *, val: float = 0.15, test: float = 0.15, seed: int = 0,
               k: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a case-level split JSON for a cache: ``{"kind": "holdout", "train", "val", "test"}`` or
    ``{"kind": "kfold", "folds": [...]}``. Splits are by case, never by slice."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    index = load_cache_index(cache_dir)
    if index.get("predict_only"):
        raise ValueError(f"{Path(cache_dir) / CASES_JSON}: a --predict-only cache has no labels; it cannot be split "
                         f"(predict on it with `glfuse stage predict MODEL --images ...`)")
    ids = [r["case_id"] for r in index["cases"]]
    labels = [r["label"] for r in index["cases"]]
    doc: dict[str, Any] = {"cache": str(cache_dir), "seed": seed, "val_fraction": val, "label_column": index["label_column"],
                           "classes": index["classes"]}
    if k:
        if k < 2:
            raise ValueError(f"-k must be at least 2, got {k}")
        doc.update(kind="kfold", k=k, folds=stratified_kfold(ids, labels, k=k, val=val, seed=seed))
        parts = doc["folds"]
    else:
        doc.update(kind="holdout", test_fraction=test, **stratified_split(ids, labels, val=val, test=test, seed=seed))
        parts = [doc]
    _check_split_parts(Path(cache_dir), parts, dict(zip(ids, labels)), val, 0.0 if k else test)
    save_json(doc, out)
    return doc


def read_split(path: str | Path, fold: int | None = None) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` case-id lists from a split file (``fold`` picks one fold of a k-fold file)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: split file not found (run `glfuse stage split` first)")
    doc = json.loads(p.read_text())
    if doc.get("kind") == "kfold":
        if fold is None:
            raise ValueError(f"{p}: is a {doc['k']}-fold split; choose data.fold (0..{doc['k'] - 1})")
        if not 0 <= fold < len(doc["folds"]):
            raise ValueError(f"{p}: fold {fold} out of range 0..{len(doc['folds']) - 1}")
        doc = doc["folds"][fold]
    return {k: list(doc.get(k, [])) for k in ("train", "val", "test")}
