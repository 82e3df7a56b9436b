"""Geometry-aware volume IO: one reader for NIfTI, NRRD and DICOM series that keeps the affine and brings volumes to RAS.

Reading (:func:`load_volume`)
-----------------------------
* NIfTI (``.nii`` / ``.nii.gz``) and NRRD (``.nrrd`` / ``.nhdr``) through MONAI ``LoadImage`` (nibabel / pynrrd
  underneath; the affine maps voxel indices to RAS millimetres — MONAI converts NRRD's LPS space). An NRRD without
  ``space directions`` gets the identity affine (spacing unknown).
* A DICOM series (a folder holding the files of **one** series) through pydicom: slices sorted along the slice normal
  (``ImagePositionPatient`` · (row × column direction)), ``RescaleSlope`` / ``RescaleIntercept`` applied, and the
  spacing between consecutive slices checked: a missing slice (a jump in position), duplicated positions or differing
  orientations are an error naming the folder. Stored array axes are ``(rows, columns, slices)``; the affine is built
  from ``ImagePositionPatient``, ``ImageOrientationPatient`` and ``PixelSpacing`` (DICOM LPS converted to RAS).

Orientation. ``load_volume(path)`` returns the array **reoriented to RAS** with MONAI ``Orientation("RAS")``: array
axis 0 runs towards the patient's Right, axis 1 towards Anterior, axis 2 towards Superior (so axial slices are
``array[:, :, k]``). The same anatomy stored RAS, LPS or with permuted axes therefore gives the same array.
``orientation=None`` keeps the stored axis order. :meth:`Volume.to_source` maps an array on the RAS grid back to the
stored axis order, so results can be written with the source file's own affine and header.

Geometry. :func:`geometry_mismatch` compares shapes and affines (tolerance in mm); :func:`check_same_geometry` raises a
``ValueError`` naming both files; :func:`resample_to` resamples a volume onto another's grid (MONAI ``ResampleToMatch``;
bilinear for images, nearest for masks).

Display slices. :func:`display_slice` turns a RAS plane into the radiological view (rows from anterior/superior down,
columns from the patient's right to left: ``slice[::-1, ::-1].T``); :func:`from_display_slice` inverts it.

Intensity normalisation (:func:`normalise`): ``percentile:LO,HI`` (clip at the volume's percentiles, scale to [0, 1]),
``window:C,W`` (a CT/PET window in the volume's units: ``clip((x - (C - W/2)) / W, 0, 1)``), ``minmax`` or ``none``
(values must already lie in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_NORM",
    "SLICE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Volume",
    "check_same_geometry",
    "display_slice",
    "from_display_slice",
    "geometry_mismatch",
    "is_dicom_series",
    "is_volume_file",
    "load_volume",
    "normalise",
    "parse_norm",
    "parse_window",
    "read_slice",
    "read_slice_image",
    "resample_to",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")
SLICE_SUFFIXES = (".dcm", ".dicom", *VOLUME_SUFFIXES)  # files read_slice / read_slice_image take
DEFAULT_NORM = "percentile:0.5,99.5"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".txt", ".csv", ".json")


@dataclass
class Volume:
    """A 3-D volume with its geometry.

    Attributes:
        array: the voxels (``orientation`` axis order; float32 for DICOM, the file's dtype otherwise).
        affine: 4x4 voxel index -> RAS mm for ``array``.
        source: the file or DICOM folder read.
        kind: ``"nifti"``, ``"nrrd"`` or ``"dicom"``.
        source_affine: 4x4 affine of the array as stored in the file (RAS mm).
        orientation: ``"RAS"`` or None (as stored).
        header: nibabel header (NIfTI), NRRD header dict, or the first DICOM dataset of the series (pixels dropped).
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path
    kind: str
    source_affine: np.ndarray
    orientation: str | None = "RAS"
    header: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each array axis in mm (column norms of the affine)."""
        return tuple(float(x) for x in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """An array on this volume's (RAS) grid -> the source file's axis order (inverse of the reorientation)."""
        if self.orientation is None:
            return np.asarray(array)
        return _reorient(np.asarray(array), self.affine, _axcodes(self.source_affine))[0]

    def with_array(self, array: np.ndarray) -> Volume:
        """A copy of this volume's geometry holding ``array`` (same shape)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} differs from the volume's {self.shape} ({self.source})")
        return Volume(array, self.affine, self.source, self.kind, self.source_affine, self.orientation, self.header,
                      dict(self.meta))


# ---------------------------------------------------------------------------------------------------------- detection
def is_volume_file(path: str | Path) -> bool:
    """True for a ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.nhdr`` file name."""
    return Path(path).name.lower().endswith(VOLUME_SUFFIXES)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and not f.name.lower().endswith(_IMAGE_SUFFIXES))


def is_dicom_series(path: str | Path) -> bool:
    """True for a folder holding at least two DICOM images of **one** series with slice positions (a volume, not a
    folder of unrelated 2-D DICOM images). Reads headers only."""
    p = Path(path)
    if not p.is_dir():
        return False
    import pydicom

    series, n = set(), 0
    for f in _dicom_files(p):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM
            return False
        if "ImagePositionPatient" not in ds:
            return False
        series.add(str(getattr(ds, "SeriesInstanceUID", "")))
        n += 1
        if len(series) > 1:
            return False
    return n >= 2


# ------------------------------------------------------------------------------------------------------------ reading
def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, float)))


def _reorient(array: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """MONAI ``Orientation`` on a channel-first MetaTensor -> (array, affine)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    t = MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=torch.as_tensor(affine, dtype=torch.float64))
    out = Orientation(axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(t)  # NIfTI/MONAI RAS world
    return np.ascontiguousarray(out.array[0]), np.asarray(out.affine, dtype=np.float64)


def load_volume(path: str | Path, *, orientation: str | None = "RAS") -> Volume:
    """Read a NIfTI / NRRD file or a DICOM-series folder with its geometry (see module docstring).

    Args:
        path: file or DICOM folder.
        orientation: ``"RAS"`` (default) reorients the array; None keeps the stored axis order.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: volume not found")
    if p.is_dir():
        arr, aff, header = _read_dicom_series(p)
        kind = "dicom"
    elif is_volume_file(p):
        arr, aff, header = _read_monai(p)
        kind = "nrrd" if p.name.lower().endswith((".nrrd", ".nhdr")) else "nifti"
    else:
        raise ValueError(f"{p}: unsupported volume format (expected .nii, .nii.gz, .nrrd, .nhdr or a DICOM folder)")
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{p}: expected a 3-D volume, got shape {arr.shape}")
    vol = Volume(arr, aff, p, kind, aff, None, header)
    if orientation is not None:
        vol.array, vol.affine = _reorient(arr, aff, orientation)
        vol.orientation = orientation
    return vol


def _read_monai(p: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    from monai.transforms import LoadImage

    nrrd_file = p.name.lower().endswith((".nrrd", ".nhdr"))
    try:
        img = LoadImage(image_only=True, dtype=None, reader="NrrdReader" if nrrd_file else "NibabelReader")(str(p))
    except KeyError as e:  # NRRD without "space directions": MONAI cannot build an affine
        if not nrrd_file:
            raise ValueError(f"{p}: cannot read volume ({e})") from e
        import nrrd

        arr, hdr = nrrd.read(str(p))
        return np.asarray(arr), np.eye(4), hdr
    except Exception as e:  # noqa: BLE001 - any reader failure becomes one line naming the file
        raise ValueError(f"{p}: cannot read volume ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    header = None
    if not nrrd_file:
        import nibabel as nib

        header = nib.load(str(p)).header
    return np.asarray(img.array), np.asarray(img.affine, dtype=np.float64), header


def _dicom_datasets(folder: Path) -> list:
    import pydicom
    from pydicom.errors import InvalidDicomError

    dss = []
    for f in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(str(f))
        except (InvalidDicomError, OSError):
            continue
        if "PixelData" in ds:
            dss.append(ds)
    if not dss:
        raise ValueError(f"{folder}: no DICOM image files found")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in dss}
    if len(series) > 1:
        raise ValueError(f"{folder}: holds {len(series)} DICOM series; put one series per folder")
    return dss


def _slice_positions(folder: Path, dss: list) -> tuple[list, np.ndarray | None, np.ndarray | None]:
    """Sort the datasets along the slice normal; returns (sorted, positions along the normal, IOP) or None geometry."""
    if not all("ImagePositionPatient" in d and len(getattr(d, "ImageOrientationPatient", [])) == 6 for d in dss):
        return sorted(dss, key=lambda d: int(getattr(d, "InstanceNumber", 0) or 0)), None, None
    oris = np.array([[float(x) for x in d.ImageOrientationPatient] for d in dss])
    if np.abs(oris - oris[0]).max() > 1e-4:
        raise ValueError(f"{folder}: DICOM slices have different ImageOrientationPatient; not one volume")
    normal = np.cross(oris[0, :3], oris[0, 3:])
    z = np.array([float(np.dot(normal, [float(x) for x in d.ImagePositionPatient])) for d in dss])
    order = np.argsort(z, kind="stable")
    return [dss[i] for i in order], z[order], oris[0]


def _check_spacing(folder: Path, z: np.ndarray, tol: float = 0.05) -> float:
    """Uniform slice spacing (relative ``tol``) or a ValueError naming the folder and the gap."""
    if len(z) < 2:
        return 0.0
    d = np.diff(z)
    if (d < 1e-4).any():
        i = int(np.argmax(d < 1e-4))
        raise ValueError(f"{folder}: two DICOM slices share the position {z[i]:.4g} mm along the slice normal "
                         f"(duplicate slice or two volumes in one folder)")
    step = float(np.median(d))
    bad = np.flatnonzero(np.abs(d - step) > tol * step + 1e-3)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{folder}: DICOM slice spacing is not uniform: {d[i]:.4g} mm between the slices at "
                         f"{z[i]:.4g} and {z[i + 1]:.4g} mm, {step:.4g} mm elsewhere ({bad.size} irregular gap(s); "
                         f"a missing slice?)")
    return step


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    dss, z, iop = _slice_positions(folder, _dicom_datasets(folder))
    shapes = {(int(d.Rows), int(d.Columns)) for d in dss}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: DICOM slices differ in size {sorted(shapes)}")
    out = []
    for d in dss:
        try:
            a = d.pixel_array.astype(np.float32)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{folder}: cannot decode {getattr(d, 'filename', 'a slice')} ({e})") from e
        out.append(a * float(getattr(d, "RescaleSlope", 1) or 1) + float(getattr(d, "RescaleIntercept", 0) or 0))
    arr = np.stack(out, axis=-1)
    ps = [float(x) for x in getattr(dss[0], "PixelSpacing", [1.0, 1.0])]
    aff = np.eye(4)
    if z is None:  # no geometry tags: spacing only
        thick = float(getattr(dss[0], "SpacingBetweenSlices", 0) or getattr(dss[0], "SliceThickness", 1) or 1)
        aff[:3, :3] = np.diag([ps[0], ps[1], thick])
    else:
        step = _check_spacing(folder, z)
        normal = np.cross(iop[:3], iop[3:])
        aff[:3, 0] = iop[3:] * ps[0]  # down the rows
        aff[:3, 1] = iop[:3] * ps[1]  # along a row
        aff[:3, 2] = normal * (step or float(getattr(dss[0], "SliceThickness", 1) or 1))
        aff[:3, 3] = [float(x) for x in dss[0].ImagePositionPatient]
        aff = _LPS @ aff
    header = dss[0].copy()
    if "PixelData" in header:
        del header.PixelData
    return arr, aff, header


# ----------------------------------------------------------------------------------------------------------- geometry
def geometry_mismatch(a: Volume, b: Volume, atol: float = 1e-3) -> str | None:
    """None when ``a`` and ``b`` share shape and affine (``atol`` mm), else what differs."""
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if not np.allclose(a.affine, b.affine, atol=atol):
        sa, sb = np.round(a.spacing, 4).tolist(), np.round(b.spacing, 4).tolist()
        oa, ob = np.round(a.affine[:3, 3], 3).tolist(), np.round(b.affine[:3, 3], 3).tolist()
        return f"affine differs (spacing {sa} vs {sb} mm, origin {oa} vs {ob} mm)"
    return None


def check_same_geometry(a: Volume, b: Volume, *, hint: str = "", atol: float = 1e-3) -> None:
    """Raise ``ValueError`` naming both sources when their grids differ."""
    why = geometry_mismatch(a, b, atol)
    if why:
        raise ValueError(f"{a.source} and {b.source} do not share one voxel grid: {why}" + (f"; {hint}" if hint else ""))


def resample_to(moving: Volume, reference: Volume, *, mode: str = "bilinear") -> Volume:
    """``moving`` resampled onto ``reference``'s grid (MONAI ``ResampleToMatch``; ``mode="nearest"`` for masks)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    src = MetaTensor(torch.from_numpy(np.ascontiguousarray(moving.array, dtype=np.float32))[None],
                     affine=torch.as_tensor(moving.affine, dtype=torch.float64))
    dst = MetaTensor(torch.zeros((1, *reference.shape)), affine=torch.as_tensor(reference.affine, dtype=torch.float64))
    out = ResampleToMatch(mode=mode, padding_mode="zeros", dtype=torch.float32)(src, dst)
    arr = np.asarray(out.array[0])
    if mode == "nearest" and not np.issubdtype(moving.array.dtype, np.floating):
        arr = np.rint(arr).astype(moving.array.dtype)
    res = reference.with_array(arr)
    res.meta["resampled_from"] = str(moving.source)
    return res


# ------------------------------------------------------------------------------------------------------------- slices
def display_slice(plane: np.ndarray) -> np.ndarray:
    """A RAS plane (the two remaining axes in order) -> radiological view ``plane[::-1, ::-1].T`` (works on [..., p, q]
    only for 2-D input)."""
    return np.ascontiguousarray(plane[::-1, ::-1].T)


def from_display_slice(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`display_slice`."""
    return np.ascontiguousarray(image.T[::-1, ::-1])


# ------------------------------------------------------------------------------------------------------ normalisation
def parse_norm(spec: str | None) -> tuple[str, tuple[float, ...]]:
    """``"percentile:0.5,99.5"`` / ``"window:40,400"`` / ``"minmax"`` / ``"none"`` -> (kind, numbers)."""
    s = (spec or DEFAULT_NORM).strip().lower()
    kind, _, rest = s.partition(":")
    try:
        nums = tuple(float(x) for x in rest.split(",")) if rest else ()
    except ValueError:
        raise ValueError(f"normalisation {spec!r}: numbers expected after ':'") from None
    if kind == "percentile" and len(nums) == 2 and 0 <= nums[0] < nums[1] <= 100:
        return kind, nums
    if kind == "window" and len(nums) == 2 and nums[1] > 0:
        return kind, nums
    if kind in ("minmax", "none") and not nums:
        return kind, nums
    raise ValueError(f"normalisation {spec!r}: expected percentile:LO,HI (0 <= LO < HI <= 100), window:CENTER,WIDTH "
                     f"(WIDTH > 0), minmax or none")


def normalise(array: np.ndarray, spec: str | None = DEFAULT_NORM, *, name: str = "volume") -> np.ndarray:
    """Scale ``array`` to float32 [0, 1] following ``spec`` (see :func:`parse_norm`); NaN/Inf is an error naming it."""
    x = np.asarray(array, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: {int(np.count_nonzero(~np.isfinite(x)))} NaN/Inf voxel(s)")
    kind, nums = parse_norm(spec)
    if kind == "window":
        c, w = nums
        return np.clip((x - (c - w / 2)) / w, 0, 1).astype(np.float32)
    if kind == "none":
        if x.size and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise ValueError(f"{name}: normalisation 'none' needs values in [0, 1], got {x.min():.4g}..{x.max():.4g}")
        return np.clip(x, 0, 1)
    lo, hi = (np.percentile(x, nums) if kind == "percentile" else (x.min(), x.max())) if x.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- 2-D slices (classify)
def _dicom_window(ds: Any) -> tuple[float, float] | None:
    from pydicom.multival import MultiValue

    c, w = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if c is None or w is None:
        return None
    try:
        c, w = (float(v[0] if isinstance(v, (MultiValue, list, tuple)) else v) for v in (c, w))
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if w > 0 else None


def parse_window(window: tuple[float, float] | str | None) -> tuple[float, float] | str | None:
    """``"40,400"`` -> ``(40.0, 400.0)``; ``"auto"``, None and tuples pass through (width must be > 0)."""
    if window is None or (isinstance(window, str) and window.strip().lower() == "auto"):
        return "auto" if window is not None else None
    if isinstance(window, str):
        try:
            c, w = (float(x) for x in window.split(","))
        except ValueError:
            raise ValueError(f"window {window!r}: expected CENTER,WIDTH (e.g. 40,400) or auto") from None
    else:
        c, w = (float(x) for x in window)
    if w <= 0:
        raise ValueError(f"window {window!r}: width must be > 0")
    return c, w


def read_slice_image(path: str | Path, in_chans: int = 3, window: tuple[float, float] | str | None = "auto"):
    """:func:`read_slice` as an 8-bit PIL image (``L`` or ``RGB``) for the classification loaders."""
    from PIL import Image

    x = np.rint(read_slice(path, window=window) * 255).astype(np.uint8)
    return Image.fromarray(x, mode="L").convert("RGB" if in_chans == 3 else "L")


def read_slice(path: str | Path, *, window: tuple[float, float] | str | None = "auto", slice_index: int | None = None,
               axis: int = 2) -> np.ndarray:
    """A 2-D float32 image in [0, 1] from a DICOM file or a NIfTI/NRRD volume (for classification).

    Args:
        path: a single-frame DICOM file, or a volume file (its slice ``slice_index`` along RAS ``axis``, default the
            middle axial slice, in the radiological view of :func:`display_slice`).
        window: ``(center, width)`` (or ``"C,W"``) in the image's units (e.g. Hounsfield units after the DICOM
            rescale); ``"auto"`` (default) uses the DICOM ``WindowCenter``/``WindowWidth`` tags when present, else
            min–max; None always min–max.
    """
    window = parse_window(window)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: image file not found")
    tag_window, invert = None, False
    if is_volume_file(p):
        vol = load_volume(p)
        n = vol.shape[axis % 3]
        k = n // 2 if slice_index is None else slice_index
        if not -n <= k < n:
            raise ValueError(f"{p}: slice_index {k} out of range for {n} slices along axis {axis}")
        x = display_slice(np.take(vol.array, k, axis=axis % 3).astype(np.float32))
    else:
        x, tag_window, invert = _read_dicom_slice(p)
    win = tag_window if window == "auto" else window
    y = normalise(x, "minmax" if win is None else f"window:{win[0]},{win[1]}", name=str(p))
    return (1.0 - y).astype(np.float32) if invert else y


def _read_dicom_slice(p: Path) -> tuple[np.ndarray, tuple[float, float] | None, bool]:
    import pydicom

    try:
        ds = pydicom.dcmread(str(p), force=True)
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise ValueError(f"{p}: cannot be read as DICOM ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    if arr.ndim != 2:
        raise ValueError(f"{p}: expected a single-frame grey DICOM image, got pixel array shape {arr.shape}")
    x = arr.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0)
                                                                                     or 0)
    # MONOCHROME1 (low values white): windowed in its own units, then inverted
    return x, _dicom_window(ds), str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1"
