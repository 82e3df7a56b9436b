"""2-D image classification datasets: an image-folder tree, a CSV list, or COVID-CT-style split files.

All three produce an :class:`ImageDataset` — a list of ``(path, label)`` items plus ``class_names`` — that decodes with
PIL, converts any mode (RGB, RGBA, L, P, I;16, ...) to RGB (or L when ``in_chans=1``), accepts any size, and applies a
transform (see :mod:`glfuse.data.transforms`). ``dataset[i]`` is ``(image, label)``.

Every file is decoded completely when the dataset is built (PIL ``load()``, what training will decode: ``verify()``
would let a truncated JPEG through), so a corrupt, truncated or too large image (pixel limit,
:func:`glfuse.data.image_io.max_pixels`) fails before training starts, with its path. By default that is an error; with
``skip_bad=True`` bad files are left out and a warning lists them.

Sources:

* :func:`image_folder` — ``root/<class>/**/<image>``; classes are the sub-folder names, sorted → index 0, 1, ...
* :func:`image_csv` — a CSV with a header ``path,label``; paths relative to the CSV's folder; labels are class names or
  integer indices.
* :func:`split_files` — COVID-CT layout: ``<split_dir>/<class>/<split>*.txt`` (one file name per line), images under
  ``root``. Each split class folder (``COVID``) is mapped to an image folder of ``root`` by, in order:
  an explicit ``class_dirs={"COVID": "CT_COVID"}``; the split file's name after the split word
  (``trainCT_COVID.txt`` → ``CT_COVID/``) if that folder exists; a folder named exactly like the class; the single folder
  whose last ``_``/``-``-separated word equals the class, case-insensitively (``CT_COVID`` for ``COVID``, never
  ``CT_NonCOVID``). Anything else is an error listing the folders. Class order = sorted split class folder names.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from glfuse.data.image_io import check_image, list_images, open_pil
from glfuse.files import display_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "check_images",
    "image_csv",
    "image_folder",
    "list_images",
    "load_image",
    "resolve_split_class_dirs",
    "split_files",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp",
                    ".dcm", ".dicom", ".nii", ".nii.gz")  # DICOM / NIfTI slices: CT window from tags or given


def load_image(path: str | Path, in_chans: int = 3, window: tuple[float, float] | str | None = "auto"):
    """Decode an image with PIL and convert it to ``RGB`` (``in_chans=3``) or ``L`` (``in_chans=1``).

    Transparent images are composited on black; 16-bit/32-bit/float grey is min–max stretched to 8 bits. DICOM and
    NIfTI slices (``.dcm``, ``.nii``, ``.nii.gz``) are windowed (:func:`glfuse.data.volume_io.read_slice`): ``window``
    ``"auto"`` takes the DICOM's own WindowCenter/Width (min–max otherwise), ``(C, W)`` or ``"C,W"`` a CT window,
    ``None`` min–max. Raises ``ValueError`` naming the file when it cannot be decoded or exceeds the pixel limit
    (:func:`glfuse.data.image_io.max_pixels`).
    """
    from PIL import Image

    from glfuse.data.volume_io import SLICE_SUFFIXES, read_slice_image

    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if str(path).lower().endswith(SLICE_SUFFIXES):
        return read_slice_image(path, in_chans, window)
    with open_pil(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            import numpy as np

            arr = np.asarray(im, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            im = Image.fromarray(arr.astype(np.uint8), mode="L")
        if im.mode == "P":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA"):
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
            im = Image.alpha_composite(bg, im.convert("RGBA"))
        return im.convert("RGB" if in_chans == 3 else "L")


def check_images(paths: Sequence[str | Path], skip_bad: bool = False) -> list[bool]:
    """Decode every image completely (as training will); returns a keep-mask. Bad files (corrupt, truncated, too
    large) raise ``ValueError`` listing them unless ``skip_bad``, which warns with the list instead."""
    bad: list[tuple[str, str]] = []
    keep = []
    for p in paths:
        why = check_image(p)
        keep.append(why is None)
        if why is not None:
            bad.append((display_path(p), why))
    if bad:
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:20]) + (f"; ... {len(bad) - 20} more" if len(bad) > 20 else "")
        if not skip_bad:
            raise ValueError(f"{len(bad)} unreadable image(s): {listing} (set data.skip_bad=true / skip_bad=True to "
                             "leave them out)")
        warnings.warn(f"skipping {len(bad)} unreadable image(s): {listing}", stacklevel=3)
    return keep


class ImageDataset(Dataset):
    """``(path, label)`` items → ``(transform(image), label)``; ``class_names[label]`` names the class (label -1 =
    unlabelled)."""

    def __init__(self, items: Sequence[tuple[str | Path, int]], class_names: Sequence[str], transform: Callable | None = None,
                 *, in_chans: int = 3, skip_bad: bool = False, validate: bool = True,
                 window: tuple[float, float] | str | None = "auto") -> None:
        items = [(Path(p), int(y)) for p, y in items]
        n_cls = len(class_names)
        for p, y in items:
            if not -1 <= y < n_cls:
                raise ValueError(f"{p}: label {y} out of range for {n_cls} classes {list(class_names)}")
        if validate:
            keep = check_images([p for p, _ in items], skip_bad=skip_bad)
            items = [it for it, k in zip(items, keep) if k]
        self.items = items
        self.class_names = list(class_names)
        self.transform = transform
        self.in_chans = in_chans
        self.window = window  # DICOM/NIfTI slices only (load_image)

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.items]

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.items]

    def class_counts(self) -> dict[str, int]:
        counts = {c: 0 for c in self.class_names}
        for _, y in self.items:
            if y >= 0:
                counts[self.class_names[y]] += 1
        return counts

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, y = self.items[i]
        img = load_image(path, self.in_chans, self.window)
        if self.transform is not None:
            img = self.transform(img)
        return img, y

    def __repr__(self) -> str:
        return f"ImageDataset({len(self)} images, classes={self.class_names})"


def image_folder(root: str | Path, transform: Callable | None = None, *, class_names: Sequence[str] | None = None,
                 in_chans: int = 3, skip_bad: bool = False, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 ) -> ImageDataset:
    """``root/<class>/...`` tree. Without ``class_names`` the sorted sub-folder names are the classes; with them (e.g.
    the training set's classes for a test folder) every sub-folder must be one of them (missing ones are allowed)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise ValueError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    if class_names is None:
        class_names = subdirs
    else:
        class_names = list(class_names)
        extra = [d for d in subdirs if d not in class_names]
        if extra:
            raise ValueError(f"{root}: sub-folder(s) {extra} are not among the classes {class_names}")
    items = []
    for y, c in enumerate(class_names):
        if not (root / c).is_dir():
            continue
        files = list_images(root / c, extensions, recursive=True)
        if not files and c in subdirs:
            raise ValueError(f"{root / c}: class folder holds no images ({', '.join(extensions)})")
        items += [(p, y) for p in files]
    if not items:
        raise ValueError(f"{root}: no images found")
    return ImageDataset(items, class_names, transform, in_chans=in_chans, skip_bad=skip_bad)


def image_csv(csv_path: str | Path, transform: Callable | None = None, *, class_names: Sequence[str] | None = None,
              in_chans: int = 3, skip_bad: bool = False) -> ImageDataset:
    """CSV with header ``path,label`` (extra columns ignored); paths relative to the CSV's folder (absolute allowed).

    Labels are class names, or integers when every label is an integer (then class names default to "0", "1", ...).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: CSV file not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise ValueError(f"{csv_path}: needs a header with columns 'path' and 'label', got {fields}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    rows = [r for r in rows if r.get("path")]
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    labels = [r["label"] for r in rows]
    for i, lab in enumerate(labels):
        if lab == "":
            raise ValueError(f"{csv_path}: row {i + 2} ({rows[i]['path']}) has an empty label")
    if class_names is None:
        if all(re.fullmatch(r"\d+", lab) for lab in labels):
            class_names = [str(i) for i in range(max(int(lab) for lab in labels) + 1)]
        else:
            class_names = sorted(set(labels))
    class_names = list(class_names)
    index = {c: i for i, c in enumerate(class_names)}
    items = []
    for i, (r, lab) in enumerate(zip(rows, labels)):
        if lab in index:
            y = index[lab]
        elif re.fullmatch(r"\d+", lab) and int(lab) < len(class_names):
            y = int(lab)
        else:
            raise ValueError(f"{csv_path}: row {i + 2}: label {lab!r} is not one of the classes {class_names}")
        p = Path(r["path"])
        items.append((p if p.is_absolute() else csv_path.parent / p, y))
    return ImageDataset(items, class_names, transform, in_chans=in_chans, skip_bad=skip_bad)


def _last_word(name: str) -> str:
    return re.split(r"[_\-\s]+", name.strip())[-1].lower()


def resolve_split_class_dirs(root: str | Path, split_dir: str | Path,
                             class_dirs: dict[str, str] | None = None) -> dict[str, Path]:
    """Map each split class folder of ``split_dir`` to its image folder under ``root`` (rules in the module doc)."""
    root, split_dir = Path(root), Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: split-file folder not found")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<split>*.txt)")
    image_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and d.resolve() != split_dir.resolve()
                        and not d.name.startswith("."))
    class_dirs = dict(class_dirs or {})
    out: dict[str, Path] = {}
    for c in classes:
        if c in class_dirs:
            d = root / class_dirs[c]
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: image folder for split class {c!r} (class_dirs) not found")
            out[c] = d
            continue
        cands: list[str] = []
        for f in sorted((split_dir / c).glob("*.txt")):
            m = re.match(r"(train|val|valid|validation|test)(.+)$", f.stem, flags=re.IGNORECASE)
            if m and (root / m.group(2).lstrip("_-")).is_dir():
                cands.append(m.group(2).lstrip("_-"))
        cands = sorted(set(cands))
        if len(cands) != 1:
            cands = [c] if c in image_dirs else [d for d in image_dirs if _last_word(d) == c.lower()]
        if len(cands) != 1:
            why = "ambiguous: " + ", ".join(cands) if cands else "none matches"
            raise ValueError(f"{split_dir / c}: cannot tell which image folder of {root} holds class {c!r} ({why}; "
                             f"folders: {', '.join(image_dirs)}); set data.class_dirs={{{c}: <folder>}}")
        out[c] = root / cands[0]
    used = [d.name for d in out.values()]
    dup = sorted({u for u in used if used.count(u) > 1})
    if dup:
        raise ValueError(f"{split_dir}: several split classes map to the same image folder {dup}; set data.class_dirs")
    return out


def split_files(root: str | Path, split: str = "train", transform: Callable | None = None, *,
                split_dir: str | Path | None = None, class_dirs: dict[str, str] | None = None,
                class_names: Sequence[str] | None = None, in_chans: int = 3, skip_bad: bool = False) -> ImageDataset:
    """COVID-CT-style split: ``<split_dir>/<class>/<split>*.txt`` lists file names found in the class's image folder.

    ``split_dir`` defaults to ``root/Data-split``. ``class_names`` (e.g. from a trained model) must equal the split's
    classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data root not found")
    split_dir = Path(split_dir) if split_dir is not None else root / "Data-split"
    if not split_dir.is_absolute() and not split_dir.exists() and (root / split_dir).is_dir():
        split_dir = root / split_dir
    dirs = resolve_split_class_dirs(root, split_dir, class_dirs)
    classes = sorted(dirs)
    if class_names is not None and list(class_names) != classes:
        raise ValueError(f"{split_dir}: split classes {classes} differ from the expected classes {list(class_names)}")
    items = []
    for y, c in enumerate(classes):
        files = sorted(f for f in (split_dir / c).glob("*.txt") if f.name.lower().startswith(split.lower()))
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise FileNotFoundError(f"{split_dir / c}: expected one split file {split}*.txt, found {found}")
        for line in files[0].read_text().splitlines():
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            p = dirs[c] / name
            items.append((p, y))
        if not any(y2 == y for _, y2 in items):
            raise ValueError(f"{files[0]}: lists no images")
    return ImageDataset(items, classes, transform, in_chans=in_chans, skip_bad=skip_bad)
