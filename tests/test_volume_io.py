"""Geometry-aware volume IO: RAS reorientation, DICOM series checks, geometry checks, resampling, NIfTI/DICOM writers."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from glfuse.data import volume_io as VIO
from glfuse.data.volume_write import save_dicom_series_like, save_nifti_like


def _anatomy(shape=(10, 12, 8), seed=0):
    """Asymmetric test 'anatomy' on a RAS grid (every axis distinguishable)."""
    rng = np.random.default_rng(seed)
    v = rng.random(shape).astype(np.float32)
    v[:3, :4, :2] += 5.0
    return v


def _ras_affine(spacing=(1.0, 1.5, 2.0), origin=(-5.0, 3.0, 10.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def _as_lps_permuted(v, aff):
    """Same anatomy stored LPS with axes permuted (S, P, L): array and affine describing the same world points."""
    w = v[::-1, ::-1, :]  # R->L and A->P flips
    a = aff.copy()
    n = np.array(v.shape)
    a[:3, 3] = aff[:3, :3] @ np.array([n[0] - 1, n[1] - 1, 0]) + aff[:3, 3]
    a[:3, 0] *= -1
    a[:3, 1] *= -1
    w = np.transpose(w, (2, 1, 0))  # axes (S, P, L)
    a = a[:, [2, 1, 0, 3]]
    return np.ascontiguousarray(w), a


def test_ras_lps_permuted_give_identical_arrays_and_slices(tmp_path):
    import nibabel as nib
    import nrrd

    v, aff = _anatomy(), _ras_affine()
    w, aff2 = _as_lps_permuted(v, aff)
    assert w.shape != v.shape
    nib.save(nib.Nifti1Image(v, aff), str(tmp_path / "ras.nii.gz"))
    nib.save(nib.Nifti1Image(w, aff2), str(tmp_path / "lps_perm.nii.gz"))
    # NRRD in LPS space: directions/origin in LPS (flip x, y of the RAS affine)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff2
    nrrd.write(str(tmp_path / "lps_perm.nrrd"), w, {"space": "left-posterior-superior",
                                                      "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]})
    ref = VIO.load_volume(tmp_path / "ras.nii.gz")
    for name in ("lps_perm.nii.gz", "lps_perm.nrrd"):
        other = VIO.load_volume(tmp_path / name)
        assert other.shape == ref.shape == v.shape
        np.testing.assert_array_equal(other.array, ref.array)
        np.testing.assert_allclose(other.affine, ref.affine, atol=1e-6)
        assert VIO.geometry_mismatch(ref, other) is None
        for k in (0, 3, 7):  # axial slices identical
            np.testing.assert_array_equal(other.array[:, :, k], v[:, :, k])
        np.testing.assert_allclose(other.spacing, (1.0, 1.5, 2.0))
        # back to the stored order
        np.testing.assert_array_equal(other.to_source(other.array), w)
    raw = VIO.load_volume(tmp_path / "lps_perm.nii.gz", orientation=None)
    assert raw.shape == w.shape and raw.orientation is None


def _write_series(folder, vol, z_positions, *, iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), spacing=(0.8, 0.9), extra=None):
    """vol [rows, cols, n] as n DICOM files at the given z positions (LPS)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    for i, z in enumerate(z_positions):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(f"s{i}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series, study, "CT"
        ds.PatientName, ds.PatientID = "Test^Patient", "P123"
        ds.Rows, ds.Columns = vol.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.ImagePositionPatient = [-10.0, -20.0, float(z)]
        ds.ImageOrientationPatient = list(iop)
        ds.PixelSpacing = list(spacing)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.InstanceNumber = i + 1
        for k, val in (extra or {}).items():
            setattr(ds, k, val)
        ds.PixelData = np.ascontiguousarray(vol[:, :, i].astype(np.uint16)).tobytes()
        ds.save_as(str(folder / f"s{i:03d}.dcm"), enforce_file_format=True)


def test_dicom_series_geometry_and_gap(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 3000, size=(6, 7, 5)).astype(np.uint16)
    _write_series(tmp_path / "ok", vol, [0, 2.5, 5, 7.5, 10])
    v = VIO.load_volume(tmp_path / "ok", orientation=None)
    np.testing.assert_allclose(v.array, vol.astype(np.float32) - 1024)
    np.testing.assert_allclose(v.spacing, (0.8, 0.9, 2.5))
    # row index runs along +y (LPS) = -A (RAS); column index along +x (LPS) = -R
    np.testing.assert_allclose(v.affine[:3, 0], [0, -0.8, 0])
    np.testing.assert_allclose(v.affine[:3, 1], [-0.9, 0, 0])
    np.testing.assert_allclose(v.affine[:3, 3], [10.0, 20.0, 0.0])
    assert VIO.is_dicom_series(tmp_path / "ok")
    # a missing slice: z jumps 5 -> 10
    _write_series(tmp_path / "gap", vol[:, :, :4], [0, 2.5, 5, 10])
    with pytest.raises(ValueError, match=r"gap.*not uniform|not uniform.*missing slice") as e:
        VIO.load_volume(tmp_path / "gap")
    assert str(tmp_path / "gap") in str(e.value) and "\n" not in str(e.value)
    _write_series(tmp_path / "dup", vol[:, :, :3], [0, 2.5, 2.5])
    with pytest.raises(ValueError, match="share the position"):
        VIO.load_volume(tmp_path / "dup")


def test_geometry_check_and_resample(tmp_path):
    import nibabel as nib

    v = _anatomy((8, 8, 6))
    nib.save(nib.Nifti1Image(v, _ras_affine((1, 1, 1), (0, 0, 0))), str(tmp_path / "a.nii.gz"))
    nib.save(nib.Nifti1Image(v[::2, ::2], _ras_affine((2, 2, 1), (0, 0, 0))), str(tmp_path / "b.nii.gz"))
    a, b = VIO.load_volume(tmp_path / "a.nii.gz"), VIO.load_volume(tmp_path / "b.nii.gz")
    with pytest.raises(ValueError) as e:
        VIO.check_same_geometry(a, b)
    assert "a.nii.gz" in str(e.value) and "b.nii.gz" in str(e.value)
    r = VIO.resample_to(b, a, mode="nearest")
    assert r.shape == a.shape and VIO.geometry_mismatch(a, r) is None
    # nearest: voxel (2i, 2j) of the fine grid sits exactly on voxel (i, j) of the coarse one
    np.testing.assert_allclose(r.array[::2, ::2], v[::2, ::2], atol=1e-6)


def test_normalise_specs():
    x = np.array([-1000.0, 0.0, 40.0, 240.0, 3000.0], np.float32)
    np.testing.assert_allclose(VIO.normalise(x, "window:40,400"), [0, 0.4, 0.5, 1.0, 1.0], atol=1e-6)
    y = VIO.normalise(x, "minmax")
    assert y.min() == 0 and y.max() == 1
    p = VIO.normalise(np.arange(1001, dtype=np.float32), "percentile:10,90")
    assert p[100] == 0 and p[900] == 1 and 0 < p[500] < 1
    for bad in ("window:40,-1", "percentile:90,10", "foo", "window:a,b"):
        with pytest.raises(ValueError, match="normalisation"):
            VIO.normalise(x, bad)
    with pytest.raises(ValueError, match="NaN"):
        VIO.normalise(np.array([np.nan, 1.0]), "minmax", name="vol.nii")


def test_read_slice_dicom_window_and_nifti(tmp_path):
    import nibabel as nib

    vol = np.full((4, 5, 1), 1024 + 40, np.uint16)  # HU 40 after rescale
    vol[0, 0, 0] = 1024 + 240  # HU 240
    _write_series(tmp_path / "ct", vol, [0], extra={"WindowCenter": 40, "WindowWidth": 400})
    f = next((tmp_path / "ct").iterdir())
    img = VIO.read_slice(f)  # window from the tags
    assert img.shape == (4, 5) and img.dtype == np.float32
    assert img[1, 1] == pytest.approx(0.5) and img[0, 0] == pytest.approx(1.0)
    img2 = VIO.read_slice(f, window=(140, 200))
    assert img2[1, 1] == pytest.approx(0.0) and img2[0, 0] == pytest.approx(1.0)
    assert VIO.read_slice(f, window=None)[1, 1] == 0.0  # min-max
    assert np.array_equal(VIO.read_slice(f, window="140,200"), img2)
    with pytest.raises(ValueError, match="width must be > 0"):
        VIO.read_slice(f, window="40,0")
    pil = VIO.read_slice_image(f, in_chans=3)
    assert pil.mode == "RGB" and pil.size == (5, 4) and pil.getpixel((1, 1)) == (128, 128, 128)
    v = _anatomy((6, 7, 5))
    nib.save(nib.Nifti1Image(v, np.eye(4)), str(tmp_path / "v.nii.gz"))
    s = VIO.read_slice(tmp_path / "v.nii.gz", slice_index=1)
    ref = v[:, :, 1][::-1, ::-1].T
    np.testing.assert_allclose(s, (ref - ref.min()) / (ref.max() - ref.min()), atol=1e-6)


def test_nifti_out_keeps_source_affine_and_header(tmp_path):
    import nibabel as nib

    v, aff = _anatomy(), _ras_affine()
    w, aff2 = _as_lps_permuted(v, aff)
    nib.save(nib.Nifti1Image(w, aff2), str(tmp_path / "src.nii.gz"))
    ref = VIO.load_volume(tmp_path / "src.nii.gz")
    out = save_nifti_like(ref.array * 0.5, ref, tmp_path / "out.nii.gz")
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, aff2, atol=1e-6)
    np.testing.assert_allclose(np.asarray(img.dataobj), w * 0.5, rtol=1e-6)
    with pytest.raises(FileExistsError):
        save_nifti_like(ref.array, ref, out)


def test_dicom_series_out_reads_back(tmp_path):
    import nibabel as nib
    import pydicom

    v, aff = _anatomy((10, 12, 6)), _ras_affine()
    w, aff2 = _as_lps_permuted(v, aff)
    nib.save(nib.Nifti1Image(w, aff2), str(tmp_path / "src.nii.gz"))
    ref = VIO.load_volume(tmp_path / "src.nii.gz")
    x = VIO.normalise(ref.array, "minmax")
    files = save_dicom_series_like(x, ref, tmp_path / "dcm", axis=2)
    assert len(files) == 6
    ds = pydicom.dcmread(str(files[0]))
    assert "DERIVED" in list(ds.ImageType) and ds.SeriesInstanceUID and ds.Modality == "MR"
    # radiological view: columns run to the patient's left (+x LPS), rows to posterior (+y LPS)
    assert [float(x) for x in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert (ds.Rows, ds.Columns) == (12, 10)
    back = VIO.load_volume(tmp_path / "dcm")
    assert back.shape == ref.shape
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(back.array, np.rint(x * 4095) / 4095, atol=1e-5)
    with pytest.raises(FileExistsError):
        save_dicom_series_like(x, ref, tmp_path / "dcm")
    exe = shutil.which("dcm2niix")
    if exe is None:
        pytest.skip("dcm2niix not installed")
    (tmp_path / "conv").mkdir()
    subprocess.run([exe, "-z", "y", "-f", "conv", "-o", str(tmp_path / "conv"), str(tmp_path / "dcm")], check=True,
                   capture_output=True)
    conv = VIO.load_volume(tmp_path / "conv" / "conv.nii.gz")
    assert conv.shape == ref.shape
    np.testing.assert_allclose(conv.affine, ref.affine, atol=1e-3)
    np.testing.assert_allclose(conv.array.astype(np.float32), np.rint(x * 4095) / 4095, atol=1e-4)


def test_dicom_out_carries_patient_study(tmp_path):
    import pydicom

    vol = np.random.default_rng(0).integers(0, 3000, size=(6, 7, 4)).astype(np.uint16)
    _write_series(tmp_path / "ct", vol, [0, 2, 4, 6])
    ref = VIO.load_volume(tmp_path / "ct")
    save_dicom_series_like(VIO.normalise(ref.array, "minmax"), ref, tmp_path / "out")
    src = pydicom.dcmread(str(next((tmp_path / "ct").iterdir())))
    outs = [pydicom.dcmread(str(f)) for f in sorted((tmp_path / "out").iterdir())]
    assert {o.SeriesInstanceUID for o in outs} != {src.SeriesInstanceUID} and len({o.SOPInstanceUID for o in outs}) == 4
    assert all(o.StudyInstanceUID == src.StudyInstanceUID and o.PatientID == "P123" for o in outs)
    back = VIO.load_volume(tmp_path / "out")
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-4)
