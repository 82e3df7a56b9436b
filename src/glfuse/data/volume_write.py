"""Write volumes that share a reference volume's geometry: NIfTI (the reference's affine and header) or a DICOM series.

:func:`save_nifti_like` maps an array on the reference's RAS grid back to the reference file's stored axis order and
writes it with the reference's own affine (NIfTI: its header too, data type float32, no scaling), atomically.

:func:`save_dicom_series_like` writes one file per slice along a RAS ``axis`` (default 2, axial) with pydicom:
new Study (unless the reference is DICOM), Series and SOP Instance UIDs; ``ImageType`` ``DERIVED\\SECONDARY``;
patient / study / frame-of-reference tags carried over from a DICOM reference; ``ImagePositionPatient``,
``ImageOrientationPatient``, ``PixelSpacing``, ``SliceThickness`` and ``SpacingBetweenSlices`` from the reference
geometry (RAS converted to DICOM's LPS). Slices are stored in the radiological view of
:func:`glfuse.data.volume_io.display_slice` (axial: rows anterior to posterior, columns patient right to left, i.e.
``ImageOrientationPatient`` 1\\0\\0\\0\\1\\0 for an axis-aligned volume), so viewers that ignore the geometry tags
still show the usual picture. Intensity: values in [0, 1] are stored as unsigned 12-bit integers ``rint(clip(x,0,1)·4095)``
with ``RescaleSlope = 1/4095``, ``RescaleIntercept = 0`` (so the rescaled value is the fused intensity in [0, 1]),
window centre 0.5 / width 1; the rule is also written to ``DerivationDescription``. The series is written to a temporary
folder and moved into place, so a crash never leaves a partial series.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from glfuse.checkpoint import atomic_write
from glfuse.data.volume_io import Volume, display_slice

__all__ = ["DICOM_RESCALE", "save_dicom_series_like", "save_nifti_like"]

DICOM_RESCALE = "stored = rint(clip(x, 0, 1) * 4095) (unsigned 12-bit); x = stored * RescaleSlope (1/4095) + 0"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SOP_CLASS = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_CARRY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate",
          "StudyTime", "StudyID", "StudyDescription", "AccessionNumber", "ReferringPhysicianName",
          "FrameOfReferenceUID", "PositionReferenceIndicator", "BodyPartExamined", "PatientPosition")


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")


def save_nifti_like(array: np.ndarray, reference: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``array`` (on ``reference``'s grid) as NIfTI with the reference's affine (and header when it is NIfTI)."""
    import nibabel as nib

    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI output must end in .nii or .nii.gz")
    _check_target(path, overwrite)
    data = np.asarray(reference.to_source(np.asarray(array, dtype=np.float32)), dtype=np.float32)
    header = reference.header.copy() if isinstance(reference.header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(data, reference.source_affine, header=header)
    img.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    if header is not None:  # keep the reference's sform/qform codes, with its affine
        img.set_sform(reference.source_affine, int(header["sform_code"]) or 1)
        img.set_qform(reference.source_affine, int(header["qform_code"]) or 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"

    def write(tmp: str) -> None:
        nib.save(img, tmp + suffix)
        Path(tmp + suffix).replace(tmp)

    atomic_write(path, write)
    return path


def _ds(v: float) -> str:
    return f"{float(v) + 0.0:.10g}"  # + 0.0: no "-0" in the tags


def _base_dataset(reference: Volume, description: str, series_uid: str, study_uid: str, for_uid: str) -> Any:
    from pydicom.dataset import Dataset

    ref = reference.header if reference.kind == "dicom" else None
    modality = str(getattr(ref, "Modality", "MR") or "MR") if ref is not None else "MR"
    ds = Dataset()
    for tag in _CARRY:
        if ref is not None and tag in ref:
            setattr(ds, tag, getattr(ref, tag))
    ds.PatientName = ds.get("PatientName", "glfuse^fusion")
    ds.PatientID = ds.get("PatientID", "glfuse")
    ds.StudyInstanceUID = ds.get("StudyInstanceUID", study_uid)
    ds.FrameOfReferenceUID = ds.get("FrameOfReferenceUID", for_uid)
    ds.SOPClassUID = _SOP_CLASS.get(modality, _SECONDARY_CAPTURE)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(getattr(ref, "SeriesNumber", 0) or 0) + 1000 if ref is not None else 1000
    ds.SeriesDescription = description[:64]
    ds.ImageType = ["DERIVED", "SECONDARY", "FUSION"]
    ds.DerivationDescription = (description + "; " + DICOM_RESCALE)[:1024]
    ds.Manufacturer = "glfuse"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(1 / 4095), "0", "US"
    ds.WindowCenter, ds.WindowWidth = "0.5", "1"
    return ds


def _plane_geometry(affine: np.ndarray, axis: int) -> tuple[int, int, np.ndarray]:
    p, q = [i for i in range(3) if i != axis]
    lps = _LPS @ affine
    return p, q, lps


def save_dicom_series_like(array: np.ndarray, reference: Volume, out_dir: str | Path, *, axis: int = 2,
                           description: str = "glfuse fusion", overwrite: bool = False) -> list[Path]:
    """Write ``array`` (float in [0, 1], on ``reference``'s RAS grid) as a DICOM series into ``out_dir``.

    Args:
        array: 3-D array with ``reference.shape``.
        reference: the volume whose geometry (and, when DICOM, patient/study tags) the series takes.
        out_dir: folder for ``IM_0001.dcm`` ...; must not exist unless ``overwrite``.
        axis: RAS axis the slices run along (default 2, axial).
        description: ``SeriesDescription``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    arr = np.asarray(array, dtype=np.float32)
    if arr.shape != reference.shape:
        raise ValueError(f"array shape {arr.shape} differs from the reference {reference.source} {reference.shape}")
    if reference.orientation is None:
        raise ValueError(f"{reference.source}: write DICOM from a volume loaded with orientation='RAS'")
    p, q, lps = _plane_geometry(reference.affine, axis)
    col_dir, row_dir = -lps[:3, p], -lps[:3, q]  # radiological view: pixel [r, c] = voxel (n_p-1-c, n_q-1-r)
    iop = [_ds(v) for v in (*(col_dir / np.linalg.norm(col_dir)), *(row_dir / np.linalg.norm(row_dir)))]
    spacing = [_ds(np.linalg.norm(row_dir)), _ds(np.linalg.norm(col_dir))]
    thick = _ds(np.linalg.norm(lps[:3, axis]))
    base = _base_dataset(reference, description, generate_uid(), generate_uid(), generate_uid())
    stored = np.rint(np.clip(arr, 0, 1) * 4095).astype(np.uint16)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    files = []
    try:
        for k in range(arr.shape[axis]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = base.SOPClassUID
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            name = f"IM_{k + 1:04d}.dcm"
            ds = FileDataset(name, base.copy(), file_meta=meta, preamble=b"\0" * 128)
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.InstanceNumber = k + 1
            idx = np.zeros(4)
            idx[axis], idx[p], idx[q], idx[3] = k, arr.shape[p] - 1, arr.shape[q] - 1, 1.0
            ds.ImagePositionPatient = [_ds(v) for v in (lps @ idx)[:3]]
            ds.ImageOrientationPatient = iop
            ds.PixelSpacing = spacing
            ds.SliceThickness = ds.SpacingBetweenSlices = thick
            pixels = display_slice(np.take(stored, k, axis=axis))  # [n_q, n_p]
            ds.Rows, ds.Columns = pixels.shape
            ds.PixelData = pixels.tobytes()
            ds.save_as(str(tmp / name), enforce_file_format=True)
            files.append(out_dir / name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.replace(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files
