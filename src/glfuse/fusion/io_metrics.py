"""Small image-reading helpers for evaluating fusion results (the general fusion IO lives in ``glfuse.fusion.io``).

Images are read with PIL and returned as float64 grey on 0–255; colour images become BT.601 Y
(0.299 R + 0.587 G + 0.114 B, unrounded — note that OpenCV's grey reading would round Y to uint8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})

__all__ = ["IMAGE_SUFFIXES", "list_images", "pair_by_stem", "read_grey"]


def read_grey(path: str | Path) -> np.ndarray:
    """Read an 8-bit image as float64 grey 0–255 (colour → BT.601 Y; alpha and palette handled by PIL)."""
    from PIL import Image

    from glfuse.metrics.fusion import to_grey_y

    with Image.open(path) as im:
        im.load()
        if im.mode in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(im, dtype=np.float64)
            if im.mode != "L" and arr.size and (arr.max() > 255 or arr.min() < 0):
                raise ValueError(f"{path}: mode {im.mode} with values outside 0–255; fusion metrics expect 8-bit")
            return arr
        if im.mode == "1":
            return np.asarray(im.convert("L"), dtype=np.float64)
        return to_grey_y(np.asarray(im.convert("RGB")))


def list_images(folder: str | Path) -> dict[str, Path]:
    """Map stem → path for the 8-bit image files (PNG/JPG/TIFF/BMP) directly in ``folder``; duplicate stems are an
    error. The listing itself is :func:`glfuse.fusion.io.list_images`."""
    from glfuse.fusion.io import list_images as _list_all

    return {s: p for s, p in _list_all(folder).items() if p.suffix.lower() in IMAGE_SUFFIXES}


def pair_by_stem(
    fused_dir: str | Path, a_dir: str | Path, b_dir: str | Path
) -> tuple[list[tuple[str, Path, Path, Path]], dict[str, list[str]]]:
    """Pair files by stem. Returns ``(pairs, unmatched)``; ``unmatched`` maps a folder to names missing elsewhere."""
    dirs = {"fused": list_images(fused_dir), "A": list_images(a_dir), "B": list_images(b_dir)}
    common = sorted(set.intersection(*(set(d) for d in dirs.values())))
    unmatched: dict[str, list[str]] = {}
    for key, files in dirs.items():
        extra = sorted(files[s].name for s in files if s not in common)
        if extra:
            unmatched[f"only in {key} ({Path({'fused': fused_dir, 'A': a_dir, 'B': b_dir}[key])})"] = extra
    pairs = [(s, dirs["fused"][s], dirs["A"][s], dirs["B"][s]) for s in common]
    return pairs, unmatched
