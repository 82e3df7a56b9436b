"""2-D image input/output for every glfuse system: reading, listing, pairing by file stem, saving.

Reading (:func:`read_image`) returns ``(array, is_colour)`` — an :class:`ImageRead`, which also carries ``notes``: what
was done to the data on the way (min–max stretch, NaN/inf replaced, a slice taken from a volume).

``scale="unit"`` (default; classification, fusion): float32 in [0, 1], ``HxW`` grey or ``HxWx3`` RGB.

* PNG / JPEG / TIFF / BMP through PIL. 8-bit ÷255, 16-bit ÷65535, 32-bit integer images ÷65535 when they fit in 16 bits
  (else min–max), float images kept if already in [0, 1] (else min–max; NaN/inf are set to 0 first, with a warning).
  Palette images are expanded. RGBA drops the alpha channel. Any other channel count (grey+alpha = 2 channels, CMYK,
  …) is an error. An RGB file whose three channels are identical is a grey image saved as RGB and is returned as grey.
* DICOM (``.dcm``/``.dicom``, or any file with the DICM preamble) through pydicom: RescaleSlope/RescaleIntercept
  applied, MONOCHROME1 inverted, then min–max to [0, 1] (optionally a DICOM window ``window=(center, width)``).
  Multi-frame files need ``slice_index``.
* NIfTI (``.nii``/``.nii.gz``) through nibabel: a 2-D image, or one slice of a 3-D volume (``slice_index``; without it
  the middle slice, with a warning, along ``axis``, default the last one); min–max to [0, 1]. The slice is returned as
  stored (array index ``[i, j]`` → row i, column j; no re-orientation).

``scale="8bit"`` (fusion metrics): the values the file stores, float64 on 0–255, never stretched: 8-bit grey/RGB as
they are; 16/32-bit integer or float grey as stored, which must be finite and within 0–255 (an error otherwise).

``strict=True`` turns the silent repairs (NaN/inf replaced, middle slice of a volume chosen) into errors.

Every decoder sees at most :func:`max_pixels` pixels (default 64 Mpx, environment variable ``GLFUSE_MAX_PIXELS``, 0 =
no limit): a larger image — e.g. a decompression bomb, a 140 KB PNG of 144 Mpx — is an error naming the file before it
is decoded. :func:`check_image` decodes a file completely (what training will decode), so truncated files are caught.

Saving (:func:`save_image`): grey stays grey, RGB stays RGB; 8-bit value = ``rint(clip(x, 0, 1) · 255)`` (spec decision 3).
``minmax=True`` reproduces the official MACTFusion test script's files instead (clip, min–max stretch over the whole
array, ×255, truncation) — only use it to compare with official outputs. Colour conversion is :mod:`glfuse.data.color`.

Errors are one line and name the file(s): ``ValueError`` for unreadable/corrupt/too large files, wrong channel counts
and size mismatches, ``FileNotFoundError`` for missing files or partners.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from glfuse.data.color import rgb_to_y
from glfuse.files import atomic_write
from glfuse.files import display_path as _shown

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTS",
    "PIL_EXTS",
    "ImageRead",
    "check_image",
    "image_stem",
    "images_by_stem",
    "list_images",
    "match_stems",
    "max_pixels",
    "open_pil",
    "pair_folders",
    "read_grey",
    "read_image",
    "read_pair",
    "resize_to",
    "save_image",
    "to_uint8",
]

PIL_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTS = (".dcm", ".dicom")
NIFTI_EXTS = (".nii", ".nii.gz")
IMAGE_EXTS = PIL_EXTS + DICOM_EXTS + NIFTI_EXTS
DEFAULT_MAX_PIXELS = 64_000_000


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())




# ------------------------------------------------------------------------------------------------------- pixel limit
def max_pixels() -> int:
    """The pixel limit of every image reader: ``GLFUSE_MAX_PIXELS`` (an integer, 0 = none) or 64 Mpx."""
    raw = os.environ.get("GLFUSE_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        n = int(float(raw))
    except ValueError:
        raise ValueError(f"GLFUSE_MAX_PIXELS must be a whole number of pixels (0 = no limit), got {raw!r}") from None
    if n < 0:
        raise ValueError(f"GLFUSE_MAX_PIXELS must be >= 0 (0 = no limit), got {n}")
    return n


def _check_pixels(path: str | Path, shape: Sequence[int]) -> None:
    limit = max_pixels()
    n = int(np.prod([int(s) for s in shape[:2]]))
    if limit and n > limit:
        dims = "x".join(str(int(s)) for s in shape[:2])
        raise ValueError(f"{_shown(path)}: image of {dims} = {n / 1e6:.1f} Mpx exceeds the pixel limit of "
                         f"{limit / 1e6:.1f} Mpx (not decoded; set GLFUSE_MAX_PIXELS to raise it, 0 for no limit)")


@contextmanager
def open_pil(path: str | Path) -> Iterator[Any]:
    """Open an image with PIL after checking its size against :func:`max_pixels` (header only, nothing decoded).

    Any PIL error (unreadable, truncated on ``load()``, decompression bomb) becomes one ``ValueError`` naming the file.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies (below)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{_shown(path)}: image too large to decode safely ({_one_line(e)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{_shown(path)}: cannot be read as an image ({_one_line(e)})") from None
    with im:
        w, h = im.size
        _check_pixels(path, (h, w))
        try:
            yield im
        except (OSError, SyntaxError, ValueError) as e:
            if isinstance(e, ValueError) and _shown(path) in str(e):
                raise
            raise ValueError(f"{_shown(path)}: cannot be read as an image ({_one_line(e)})") from None


def check_image(path: str | Path) -> str | None:
    """None if ``path`` decodes completely (DICOM/NIfTI: read as :func:`read_image` does); otherwise the reason."""
    p = Path(path)
    if not p.is_file():
        return "file not found"
    try:
        if _kind(p) == "pil":
            with open_pil(p) as im:
                im.load()  # decode everything: verify() would not notice a truncated JPEG
        else:
            read_image(p, slice_index=0)
    except ValueError as e:
        msg = str(e)
        return msg.split(": ", 1)[1] if msg.startswith(_shown(p) + ": ") else msg
    return None


# ------------------------------------------------------------------------------------------------------------ stems
def image_stem(path: str | Path) -> str:
    """File name without its image extension (``a.nii.gz`` → ``a``)."""
    name = Path(path).name
    low = name.lower()
    for ext in sorted(IMAGE_EXTS, key=len, reverse=True):
        if low.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _kind(path: Path) -> str:
    low = path.name.lower()
    if low.endswith(NIFTI_EXTS):
        return "nifti"
    if low.endswith(DICOM_EXTS):
        return "dicom"
    if low.endswith(PIL_EXTS):
        return "pil"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            return "dicom"
    except OSError:
        pass
    return "pil"


# ------------------------------------------------------------------------------------------------------------ reading
class ImageRead(tuple):
    """``(array, is_colour)`` as returned by :func:`read_image`, plus ``notes``: how the data were changed on reading
    (``[{"what": ..., "warn": bool}]``; ``warn`` marks repairs the user should know about)."""

    notes: list[dict[str, Any]]

    def __new__(cls, array: np.ndarray, colour: bool, notes: Sequence[dict[str, Any]] = ()) -> ImageRead:
        self = super().__new__(cls, (array, bool(colour)))
        self.notes = list(notes)
        return self

    @property
    def array(self) -> np.ndarray:
        return self[0]

    @property
    def colour(self) -> bool:
        return self[1]


def _minmax(x: np.ndarray, notes: list[dict[str, Any]]) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        n_nan, n_inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        notes.append({"what": f"{n_nan} NaN and {n_inf} inf value(s) set to 0", "warn": True})
        x = np.where(bad, np.float32(0), x)
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        notes.append({"what": f"constant image ({lo:.6g}) read as 0", "warn": False})
        return np.zeros_like(x, dtype=np.float32)
    notes.append({"what": f"values min-max stretched from [{lo:.6g}, {hi:.6g}] to [0, 1]", "warn": False})
    return ((x - lo) / (hi - lo)).astype(np.float32)


def _grey_if_equal(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0]), False
    return rgb, True


def _decode_pil(path: Path) -> tuple[np.ndarray, str]:
    """Decoded pixels (palette expanded, 1-bit → L, YCbCr → RGB) and the PIL mode."""
    with open_pil(path) as im:
        im.load()
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "1":
            im = im.convert("L")
        elif mode == "YCbCr":
            im = im.convert("RGB")
        mode = im.mode
        if mode not in ("L", "I", "F", "RGB", "RGBA") and not mode.startswith("I;16"):
            bands = im.getbands()
            raise ValueError(f"{_shown(path)}: unsupported channel layout {mode!r} ({len(bands)} "
                             f"channel{'s' if len(bands) != 1 else ''}: {''.join(bands)}); expected grey (1 channel), "
                             "RGB (3) or RGBA (4)")
        return np.asarray(im), mode


def _pil_8bit(path: Path, arr: np.ndarray, mode: str) -> tuple[np.ndarray, bool]:
    """The stored values as float64 on 0–255 (fusion metrics): never stretched."""
    if mode in ("RGB", "RGBA"):
        return arr[..., :3].astype(np.float64), True
    a = arr.astype(np.float64)
    if mode != "L":
        n_bad = int((~np.isfinite(a)).sum())
        if n_bad:
            raise ValueError(f"{_shown(path)}: contains {int(np.isnan(a).sum())} NaN and "
                             f"{n_bad - int(np.isnan(a).sum())} inf value(s); fusion metrics need finite 0-255 values")
        if a.size and (a.max() > 255 or a.min() < 0):
            raise ValueError(f"{_shown(path)}: mode {mode} with values outside 0-255 ({a.min():.6g}..{a.max():.6g}); "
                             "fusion metrics expect 8-bit images")
    return a, False


def _pil_unit(arr: np.ndarray, mode: str, notes: list[dict[str, Any]]) -> tuple[np.ndarray, bool]:
    """float32 in [0, 1] (module doc's rules)."""
    if mode == "L":
        return arr.astype(np.float32) / np.float32(255), False
    if mode.startswith("I;16"):
        return arr.astype(np.float32) / np.float32(65535), False
    if mode == "I":
        a = arr.astype(np.float64)
        if a.min() >= 0 and a.max() <= 65535:
            return (a / 65535.0).astype(np.float32), False
        return _minmax(a, notes), False
    if mode == "F":
        a = arr.astype(np.float32)
        if np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
            return a, False
        return _minmax(a, notes), False
    return _grey_if_equal(arr[..., :3].astype(np.float32) / np.float32(255))


def _read_dicom(path: Path, slice_index: int | None, window: tuple[float, float] | None,
                notes: list[dict[str, Any]]) -> tuple[np.ndarray, bool]:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), force=True)
        _check_pixels(path, (int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)))
        arr = ds.pixel_array
    except ValueError as e:
        if str(e).startswith(_shown(path)):
            raise
        raise ValueError(f"{_shown(path)}: cannot be read as DICOM ({_one_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes a one-line error naming the file
        raise ValueError(f"{_shown(path)}: cannot be read as DICOM ({_one_line(e)})") from None
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if nframes > 1:
        if slice_index is None:
            raise ValueError(f"{_shown(path)}: multi-frame DICOM with {nframes} frames; choose one with slice_index")
        if not -nframes <= slice_index < nframes:
            raise ValueError(f"{_shown(path)}: slice_index {slice_index} out of range for {nframes} frames")
        arr = arr[slice_index]
        notes.append({"what": f"frame {slice_index} of {nframes}", "warn": False})
    if spp == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"{_shown(path)}: DICOM colour image with unexpected shape {arr.shape}")
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        return _grey_if_equal((arr.astype(np.float32) / np.float32(2**bits - 1)).clip(0, 1))
    if spp != 1 or arr.ndim != 2:
        raise ValueError(f"{_shown(path)}: unsupported DICOM pixel layout (SamplesPerPixel {spp}, shape {arr.shape})")
    x = arr.astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    x = x * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        x = x.max() + x.min() - x
    if window is not None:
        c, w = float(window[0]), float(window[1])
        if w <= 0:
            raise ValueError(f"{_shown(path)}: DICOM window width must be > 0, got {w}")
        notes.append({"what": f"DICOM window centre {c:g}, width {w:g}", "warn": False})
        return np.clip((x - (c - w / 2)) / w, 0, 1).astype(np.float32), False
    return _minmax(x, notes), False


def _read_nifti(path: Path, slice_index: int | None, axis: int, notes: list[dict[str, Any]]) -> tuple[np.ndarray, bool]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{_shown(path)}: cannot be read as NIfTI ({_one_line(e)})") from None
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in (2, 3):
        raise ValueError(f"{_shown(path)}: NIfTI image of shape {tuple(img.shape)}; expected 2-D or 3-D")
    plane = shape if len(shape) == 2 else tuple(s for i, s in enumerate(shape) if i != axis % 3)
    _check_pixels(path, plane)
    try:
        vol = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{_shown(path)}: cannot be read as NIfTI ({_one_line(e)})") from None
    if vol.ndim == 2:
        return _minmax(vol, notes), False
    n = vol.shape[axis]
    k = n // 2 if slice_index is None else slice_index
    if not -n <= k < n:
        raise ValueError(f"{_shown(path)}: slice_index {k} out of range for {n} slices along axis {axis}")
    notes.append({"what": f"3-D volume {vol.shape}: slice {k} of {n} along axis {axis}"
                          + (" (the middle one; choose with slice_index)" if slice_index is None else ""),
                  "warn": slice_index is None})
    return _minmax(np.take(vol, k, axis=axis), notes), False


def read_image(
    path: str | Path,
    *,
    slice_index: int | None = None,
    axis: int = -1,
    window: tuple[float, float] | None = None,
    scale: str = "unit",
    strict: bool = False,
) -> ImageRead:
    """Read one image; returns ``(array HxW or HxWx3, is_colour)`` (an :class:`ImageRead` with ``.notes``).

    Args:
        path: PNG/JPEG/TIFF/BMP, DICOM or NIfTI file.
        slice_index: NIfTI volume slice (default the middle one, with a warning) or DICOM frame (required for
            multi-frame).
        axis: NIfTI slicing axis (default last).
        window: DICOM only: ``(center, width)`` in rescaled units instead of min–max.
        scale: ``"unit"`` (float32 [0, 1]) or ``"8bit"`` (float64 0–255 as stored; PIL formats only).
        strict: raise instead of warning when the data had to be repaired (NaN/inf set to 0, middle slice chosen).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{_shown(path)}: image file not found")
    if scale not in ("unit", "8bit"):
        raise ValueError(f"scale must be 'unit' or '8bit', got {scale!r}")
    kind = _kind(path)
    notes: list[dict[str, Any]] = []
    if scale == "8bit":
        if kind != "pil":
            raise ValueError(f"{_shown(path)}: scale='8bit' reads PNG/JPEG/TIFF/BMP files only, not {kind}")
        return ImageRead(*_pil_8bit(path, *_decode_pil(path)))
    if kind == "nifti":
        arr, colour = _read_nifti(path, slice_index, axis, notes)
    elif kind == "dicom":
        arr, colour = _read_dicom(path, slice_index, window, notes)
    else:
        arr, colour = _pil_unit(*_decode_pil(path), notes)
    serious = [n["what"] for n in notes if n["warn"]]
    if serious:
        if strict:
            raise ValueError(f"{_shown(path)}: input would be altered: {'; '.join(serious)} (strict inputs)")
        warnings.warn(f"{_shown(path)}: {'; '.join(serious)}", stacklevel=2)
    return ImageRead(arr, colour, notes)


def read_grey(path: str | Path, **kw: Any) -> np.ndarray:
    """Read an image as grey (same arguments as :func:`read_image`); a colour image gives its BT.601 Y channel.

    ``scale="unit"``: float32 [0, 1]; ``scale="8bit"``: float64 0–255 (the fusion metrics' reader).
    """
    arr, colour = read_image(path, **kw)
    return rgb_to_y(arr) if colour else arr


# ------------------------------------------------------------------------------------------------------------- saving
def to_uint8(x: np.ndarray, *, minmax: bool = False) -> np.ndarray:
    """Float image → uint8.

    Default (spec decision 3): ``rint(clip(x, 0, 1) · 255)`` (round half to even, computed in float32).
    ``minmax=True``: the official test script's rule — clip to [0, 1], stretch min–max over the whole array (all
    channels together), ×255, truncate — only for reproducing official files.
    """
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    if minmax:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
        return (x * np.float32(255)).astype(np.uint8)
    return np.rint(x * np.float32(255)).astype(np.uint8)


def save_image(path: str | Path, x: np.ndarray, *, minmax: bool = False, bits: int = 8) -> Path:
    """Save a float [0, 1] image (``HxW`` grey or ``HxWx3`` RGB) atomically; format from the extension.

    ``bits=16`` writes a 16-bit grey PNG/TIFF (``rint(clip(x,0,1)·65535)``); colour is always 8-bit.
    """
    from PIL import Image


    path = Path(path)
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)):
        raise ValueError(f"{path}: cannot save an array of shape {x.shape} (expected HxW or HxWx3)")
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}.get(
        path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported output extension (use .png, .tif, .bmp or .jpg)")
    if bits == 16:
        if x.ndim != 2 or fmt not in ("PNG", "TIFF"):
            raise ValueError(f"{path}: 16-bit output needs a grey image and .png/.tif")
        im = Image.fromarray(np.rint(np.clip(x.astype(np.float64), 0, 1) * 65535).astype(np.uint16))
    elif bits == 8:
        im = Image.fromarray(to_uint8(x, minmax=minmax))
    else:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    return atomic_write(path, lambda tmp: im.save(tmp, format=fmt))



# ------------------------------------------------------------------------------------------------------- list / pair
def list_images(folder: str | Path, extensions: Sequence[str] = IMAGE_EXTS, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted; hidden files and folders skipped; extensions case-insensitive, ``.nii.gz``
    allowed), searching sub-folders with ``recursive=True``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{_shown(folder)}: folder not found")
    exts = tuple(e.lower() for e in extensions)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.name.lower().endswith(exts)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def images_by_stem(folder: str | Path, extensions: Sequence[str] = IMAGE_EXTS) -> dict[str, Path]:
    """``{stem: path}`` of the images directly in ``folder`` (sorted); two files with one stem are an error."""
    out: dict[str, Path] = {}
    for p in list_images(folder, extensions):
        s = image_stem(p)
        if s in out:
            raise ValueError(f"{_shown(folder)}: two images share the name {s!r} ({out[s].name}, {p.name})")
        out[s] = p
    return out


def match_stems(folders: Mapping[str, str | Path], extensions: Sequence[str] = IMAGE_EXTS,
                ) -> tuple[list[tuple[str, ...]], dict[str, list[str]]]:
    """Match the images of several folders by file stem.

    Returns ``(matched, unmatched)``: ``matched`` = sorted ``[(stem, path_in_1st, path_in_2nd, ...)]`` (folders in the
    order given), ``unmatched`` = ``{label: [file names of that folder with no partner in every other folder]}``
    (labels with none left out).
    """
    listed = {k: images_by_stem(d, extensions) for k, d in folders.items()}
    common = sorted(set.intersection(*(set(v) for v in listed.values())))
    unmatched = {k: sorted(v[s].name for s in v if s not in common) for k, v in listed.items()}
    matched = [(s, *(v[s] for v in listed.values())) for s in common]
    return matched, {k: v for k, v in unmatched.items() if v}


def _names(xs: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(_shown(x) for x in xs[:limit])
    return shown + (f" … (+{len(xs) - limit} more)" if len(xs) > limit else "")


def pair_folders(
    a_dir: str | Path, b_dir: str | Path, *, allow_unmatched: bool = False
) -> list[tuple[str, Path, Path]]:
    """Match the images of two folders by file stem → sorted ``[(stem, a_path, b_path)]``.

    Unmatched names are never dropped silently: an error lists them (``FileNotFoundError``), or with
    ``allow_unmatched=True`` a warning lists them and only the matched pairs are returned.
    """
    pairs, unmatched = match_stems({"a": a_dir, "b": b_dir})
    if unmatched:
        parts = []
        if "a" in unmatched:
            parts.append(f"in {_shown(a_dir)} without a partner in {_shown(b_dir)}: {_names(unmatched['a'])}")
        if "b" in unmatched:
            parts.append(f"in {_shown(b_dir)} without a partner in {_shown(a_dir)}: {_names(unmatched['b'])}")
        msg = "unmatched images — " + "; ".join(parts)
        if not allow_unmatched:
            raise FileNotFoundError(msg)
        warnings.warn(msg + " (skipped)", stacklevel=2)
    if not pairs:
        raise FileNotFoundError(f"no image pairs with matching names in {_shown(a_dir)} and {_shown(b_dir)}")
    return pairs  # type: ignore[return-value]


def resize_to(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float image (grey or RGB) to ``(H, W)``, clipped to [0, 1]."""
    from PIL import Image

    h, w = hw
    if x.shape[:2] == (h, w):
        return x
    chans = [x] if x.ndim == 2 else [x[..., c] for c in range(x.shape[-1])]
    out = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC)) for c in chans]
    y = out[0] if x.ndim == 2 else np.stack(out, axis=-1)
    return np.clip(y, 0, 1).astype(np.float32)


def read_pair(a_path: str | Path, b_path: str | Path, *, resize: bool = False, **read_kw: Any) -> tuple[ImageRead, ImageRead]:
    """Read two registered images; a size mismatch is an error naming both files unless ``resize=True``
    (then ``b`` is resized bicubically to ``a``'s size)."""
    a = read_image(a_path, **read_kw)
    b = read_image(b_path, **read_kw)
    if a[0].shape[:2] != b[0].shape[:2]:
        ha, wa = a[0].shape[:2]
        hb, wb = b[0].shape[:2]
        if not resize:
            raise ValueError(
                f"size mismatch: {_shown(a_path)} is {wa}x{ha} but {_shown(b_path)} is {wb}x{hb} (pass --resize / "
                f"resize=True to resize the second to the first)"
            )
        b = ImageRead(resize_to(b[0], a[0].shape[:2]), b[1],
                      [*b.notes, {"what": f"resized bicubically from {wb}x{hb} to {wa}x{ha}", "warn": False}])
    return a, b
