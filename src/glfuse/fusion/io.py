"""Image input/output for fusion: read any common medical/2-D format as float32 in [0, 1], colour conversion, saving,
and pairing of two folders.

Reading (:func:`read_image`) returns ``(array, is_colour)``: ``array`` is ``HxW`` (grey) or ``HxWx3`` (RGB, correct
channel order), float32 in [0, 1].

* PNG / JPEG / TIFF / BMP through PIL. 8-bit ÷255, 16-bit ÷65535, 32-bit integer images ÷65535 when they fit in 16 bits
  (else min–max), float images kept if already in [0, 1] (else min–max). Palette images are expanded. RGBA drops the
  alpha channel. Any other channel count (grey+alpha = 2 channels, CMYK = 4 channels that are not RGBA, …) is an error.
  An RGB file whose three channels are identical is a grey image saved as RGB and is returned as grey.
* DICOM (``.dcm``/``.dicom``, or any file with the DICM preamble) through pydicom: RescaleSlope/RescaleIntercept
  applied, MONOCHROME1 inverted, then min–max to [0, 1] (optionally a DICOM window ``window=(center, width)``).
  Multi-frame files need ``slice_index``.
* NIfTI (``.nii``/``.nii.gz``) through nibabel: a 2-D image, or one slice of a 3-D volume (``slice_index``, default the
  middle slice, along ``axis``, default the last one); min–max to [0, 1]. The slice is returned as stored
  (array index ``[i, j]`` → row i, column j; no re-orientation).

Colour (spec decision 3, BT.601 on [0, 1] values, correct RGB order)::

    Y  = .299 R + .587 G + .114 B      Cr = .713 (R − Y) + .5      Cb = .564 (B − Y) + .5
    R  = Y + 1.403 (Cr − .5)           G  = Y − .714 (Cr − .5) − .344 (Cb − .5)      B = Y + 1.773 (Cb − .5)

Saving (:func:`save_image`): grey stays grey, RGB stays RGB; 8-bit value = ``rint(clip(x, 0, 1) · 255)`` (spec decision 3).
``minmax=True`` reproduces the official test script's files instead (clip, min–max stretch over the whole array,
×255, truncation) — only use it to compare with official outputs.

Errors are one line and name the file(s): ``ValueError`` for unreadable/corrupt files, wrong channel counts and size
mismatches, ``FileNotFoundError`` for missing files or partners.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_EXTS",
    "image_stem",
    "list_images",
    "pair_folders",
    "read_grey",
    "read_image",
    "read_pair",
    "resize_to",
    "rgb_to_y",
    "rgb_to_ycbcr",
    "save_image",
    "to_uint8",
    "ycbcr_to_rgb",
]

PIL_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTS = (".dcm", ".dicom")
NIFTI_EXTS = (".nii", ".nii.gz")
IMAGE_EXTS = PIL_EXTS + DICOM_EXTS + NIFTI_EXTS


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())


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
def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    lo, hi = float(np.min(x)), float(np.max(x))
    if not np.isfinite(lo) or not np.isfinite(hi):
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def _grey_if_equal(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0]), False
    return rgb, True


def _read_pil(path: Path) -> tuple[np.ndarray, bool]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode = im.mode
            if mode == "1":
                im = im.convert("L")
                mode = "L"
            if mode == "YCbCr":
                im = im.convert("RGB")
                mode = "RGB"
            bands = im.getbands()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: cannot be read as an image ({_one_line(e)})") from None
    if mode in ("L",):
        return arr.astype(np.float32) / np.float32(255), False
    if mode.startswith("I;16"):
        return arr.astype(np.float32) / np.float32(65535), False
    if mode == "I":
        a = arr.astype(np.float64)
        if a.min() >= 0 and a.max() <= 65535:
            return (a / 65535.0).astype(np.float32), False
        return _minmax(a), False
    if mode == "F":
        a = arr.astype(np.float32)
        if np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
            return a, False
        return _minmax(a), False
    if mode == "RGB":
        return _grey_if_equal(arr.astype(np.float32) / np.float32(255))
    if mode == "RGBA":
        return _grey_if_equal(arr[..., :3].astype(np.float32) / np.float32(255))
    raise ValueError(
        f"{path}: unsupported channel layout {mode!r} ({len(bands)} channel{'s' if len(bands) != 1 else ''}: "
        f"{''.join(bands)}); expected grey (1 channel), RGB (3) or RGBA (4)"
    )


def _read_dicom(path: Path, slice_index: int | None, window: tuple[float, float] | None) -> tuple[np.ndarray, bool]:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), force=True)
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes a one-line error naming the file
        raise ValueError(f"{path}: cannot be read as DICOM ({_one_line(e)})") from None
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if nframes > 1:
        if slice_index is None:
            raise ValueError(f"{path}: multi-frame DICOM with {nframes} frames; choose one with slice_index")
        if not -nframes <= slice_index < nframes:
            raise ValueError(f"{path}: slice_index {slice_index} out of range for {nframes} frames")
        arr = arr[slice_index]
    if spp == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"{path}: DICOM colour image with unexpected shape {arr.shape}")
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        return _grey_if_equal((arr.astype(np.float32) / np.float32(2**bits - 1)).clip(0, 1))
    if spp != 1 or arr.ndim != 2:
        raise ValueError(f"{path}: unsupported DICOM pixel layout (SamplesPerPixel {spp}, shape {arr.shape})")
    x = arr.astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    x = x * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        x = x.max() + x.min() - x
    if window is not None:
        c, w = float(window[0]), float(window[1])
        if w <= 0:
            raise ValueError(f"{path}: DICOM window width must be > 0, got {w}")
        return np.clip((x - (c - w / 2)) / w, 0, 1).astype(np.float32), False
    return _minmax(x), False


def _read_nifti(path: Path, slice_index: int | None, axis: int) -> tuple[np.ndarray, bool]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        vol = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: cannot be read as NIfTI ({_one_line(e)})") from None
    while vol.ndim > 2 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim == 2:
        return _minmax(vol), False
    if vol.ndim != 3:
        raise ValueError(f"{path}: NIfTI image of shape {vol.shape}; expected 2-D or 3-D")
    n = vol.shape[axis]
    k = n // 2 if slice_index is None else slice_index
    if not -n <= k < n:
        raise ValueError(f"{path}: slice_index {k} out of range for {n} slices along axis {axis}")
    return _minmax(np.take(vol, k, axis=axis)), False


def read_image(
    path: str | Path,
    *,
    slice_index: int | None = None,
    axis: int = -1,
    window: tuple[float, float] | None = None,
) -> tuple[np.ndarray, bool]:
    """Read one image as float32 in [0, 1]; returns ``(array HxW or HxWx3, is_colour)``.

    Args:
        path: PNG/JPEG/TIFF/BMP, DICOM or NIfTI file.
        slice_index: NIfTI volume slice (default middle) or DICOM frame (required for multi-frame).
        axis: NIfTI slicing axis (default last).
        window: DICOM only: ``(center, width)`` in rescaled units instead of min–max.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    kind = _kind(path)
    if kind == "nifti":
        return _read_nifti(path, slice_index, axis)
    if kind == "dicom":
        return _read_dicom(path, slice_index, window)
    return _read_pil(path)


def read_grey(path: str | Path, **kw) -> np.ndarray:
    """Read an image as grey float32 [0, 1]; a colour image gives its BT.601 Y channel."""
    arr, colour = read_image(path, **kw)
    return rgb_to_y(arr) if colour else arr


# ------------------------------------------------------------------------------------------------------------- colour
def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an ``HxWx3`` RGB array (float, any scale)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB array, got shape {rgb.shape}")
    rgb = rgb.astype(np.float32, copy=False)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.float32(0.299) * r + np.float32(0.587) * g + np.float32(0.114) * b


def rgb_to_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (``HxWx3``, [0, 1], R-G-B order) → ``(Y, Cb, Cr)`` with the spec's BT.601 formula."""
    rgb = np.asarray(rgb, dtype=np.float32)
    y = rgb_to_y(rgb)
    cr = np.float32(0.713) * (rgb[..., 0] - y) + np.float32(0.5)
    cb = np.float32(0.564) * (rgb[..., 2] - y) + np.float32(0.5)
    return y, cb, cr


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """``(Y, Cb, Cr)`` → RGB ``HxWx3`` in R-G-B order (not clamped)."""
    y = np.asarray(y, dtype=np.float32)
    dcr = np.asarray(cr, dtype=np.float32) - np.float32(0.5)
    dcb = np.asarray(cb, dtype=np.float32) - np.float32(0.5)
    r = y + np.float32(1.403) * dcr
    g = y - np.float32(0.714) * dcr - np.float32(0.344) * dcb
    b = y + np.float32(1.773) * dcb
    return np.stack([r, g, b], axis=-1).astype(np.float32)


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

    from glfuse.checkpoint import atomic_write

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


# ------------------------------------------------------------------------------------------------------------ pairing
def list_images(folder: str | Path) -> dict[str, Path]:
    """``{stem: path}`` of the supported images in ``folder`` (non-recursive, sorted); duplicate stems are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or not p.name.lower().endswith(IMAGE_EXTS):
            continue
        s = image_stem(p)
        if s in out:
            raise ValueError(f"{folder}: two images share the name {s!r} ({out[s].name}, {p.name})")
        out[s] = p
    return out


def _names(xs: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(xs[:limit])
    return shown + (f" … (+{len(xs) - limit} more)" if len(xs) > limit else "")


def pair_folders(
    a_dir: str | Path, b_dir: str | Path, *, allow_unmatched: bool = False
) -> list[tuple[str, Path, Path]]:
    """Match the images of two folders by file stem → sorted ``[(stem, a_path, b_path)]``.

    Unmatched names are never dropped silently: an error lists them (``FileNotFoundError``), or with
    ``allow_unmatched=True`` a warning lists them and only the matched pairs are returned.
    """
    a, b = list_images(a_dir), list_images(b_dir)
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"in {a_dir} without a partner in {b_dir}: {_names(only_a)}")
        if only_b:
            parts.append(f"in {b_dir} without a partner in {a_dir}: {_names(only_b)}")
        msg = "unmatched images — " + "; ".join(parts)
        if not allow_unmatched:
            raise FileNotFoundError(msg)
        warnings.warn(msg + " (skipped)", stacklevel=2)
    pairs = [(s, a[s], b[s]) for s in sorted(set(a) & set(b))]
    if not pairs:
        raise FileNotFoundError(f"no image pairs with matching names in {a_dir} and {b_dir}")
    return pairs


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


def read_pair(
    a_path: str | Path, b_path: str | Path, *, resize: bool = False, **read_kw
) -> tuple[tuple[np.ndarray, bool], tuple[np.ndarray, bool]]:
    """Read two registered images; a size mismatch is an error naming both files unless ``resize=True``
    (then ``b`` is resized bicubically to ``a``'s size)."""
    a = read_image(a_path, **read_kw)
    b = read_image(b_path, **read_kw)
    if a[0].shape[:2] != b[0].shape[:2]:
        if not resize:
            ha, wa = a[0].shape[:2]
            hb, wb = b[0].shape[:2]
            raise ValueError(
                f"size mismatch: {a_path} is {wa}x{ha} but {b_path} is {wb}x{hb} (pass --resize / resize=True to "
                f"resize the second to the first)"
            )
        b = (resize_to(b[0], a[0].shape[:2]), b[1])
    return a, b
