"""Volume readers, lesion boxes, label/box CSVs and the VDPF preprocessing (tiny volumes written by the tests)."""

from __future__ import annotations

import numpy as np
import pytest

from glfuse.data import volumes as V


def _vol(shape=(12, 10, 4), seed=0):
    return np.random.default_rng(seed).integers(0, 200, size=shape).astype(np.int16)


def test_nifti_roundtrip(tmp_path):
    import nibabel as nib

    v = _vol()
    for name in ("a.nii", "a.nii.gz"):
        nib.save(nib.Nifti1Image(v, np.eye(4)), str(tmp_path / name))
        out = V.read_volume(tmp_path / name)
        assert out.shape == v.shape and np.array_equal(out, v)


def test_nrrd_roundtrip(tmp_path):
    import nrrd

    v = _vol()
    nrrd.write(str(tmp_path / "a.nrrd"), v)
    out = V.read_volume(tmp_path / "a.nrrd")
    assert out.shape == v.shape and np.array_equal(out, v)


def _write_dicom_series(folder, vol, order):
    """Write vol [rows, cols, n] as n DICOM files in the given file order (positions along z = slice index)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    series = generate_uid()
    for k, i in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"f{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "MR"
        ds.Rows, ds.Columns = vol.shape[:2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * i]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.InstanceNumber = 100 - i  # deliberately disagrees with the position: position must win
        ds.RescaleSlope, ds.RescaleIntercept = 2, -5
        ds.PixelData = np.ascontiguousarray(vol[:, :, i].astype(np.uint16)).tobytes()
        ds.save_as(str(folder / f"f{k}.dcm"), enforce_file_format=True)
    (folder / "README.txt").write_text("not dicom")  # ignored


def test_dicom_series_sorted_by_position(tmp_path):
    v = _vol((8, 6, 5)).astype(np.uint16)
    _write_dicom_series(tmp_path / "ser", v, order=[3, 0, 4, 1, 2])
    out = V.read_volume(tmp_path / "ser")
    assert out.shape == (8, 6, 5)
    np.testing.assert_allclose(out, v.astype(np.float32) * 2 - 5)


def test_read_volume_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        V.read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported"):
        V.read_volume(tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM"):
        V.read_volume(tmp_path / "empty")


def test_boxes_from_mask_components_and_axis():
    m = np.zeros((10, 12, 3), np.uint8)  # slices along the last axis
    m[1:3, 2:5, 0] = 1  # slice 0: component A rows 1-2, cols 2-4
    m[6:9, 8:11, 0] = 1  # slice 0: component B
    m[4, 4, 2] = 1  # slice 2: a one-pixel lesion
    m[7, 7, 1] = 0
    b = V.boxes_from_mask(m, axis=-1)
    assert sorted(b) == [0, 2]
    np.testing.assert_array_equal(b[0], [[2, 1, 4, 2], [8, 6, 10, 8]])  # (x0, y0, x1, y1), inclusive
    np.testing.assert_array_equal(b[2], [[4, 4, 4, 4]])
    # components touching only across slices stay separate boxes per slice
    m2 = np.zeros((3, 5, 5), np.uint8)
    m2[0, 1:3, 1:3] = 1
    m2[1, 1:3, 1:3] = 1
    b2 = V.boxes_from_mask(m2, axis=0)
    assert sorted(b2) == [0, 1] and len(b2[0]) == 1 and len(b2[1]) == 1
    # diagonal neighbours are one component (8-connectivity)
    m3 = np.zeros((1, 4, 4), np.uint8)
    m3[0, 0, 0] = m3[0, 1, 1] = 1
    assert V.boxes_from_mask(m3, axis=0)[0].tolist() == [[0, 0, 1, 1]]
    assert V.boxes_from_mask(np.zeros((2, 2, 2)), axis=0) == {}


def test_boxes_to_mask_roundtrip():
    m = V.boxes_to_mask([[2, 1, 4, 2], [8, 6, 10, 8]], (10, 12))
    assert m.sum() == 3 * 2 + 3 * 3 and m[1, 2] == 1 and m[2, 4] == 1 and m[3, 4] == 0


def test_boxes_csv(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("case_id,slice,x_min,y_min,x_max,y_max\nA,3,1,2,5,6\nA,3,7,7,8,9\nB,0,0,0,1,1\n")
    b = V.read_boxes_csv(p)
    assert set(b) == {"A", "B"} and b["A"][3].tolist() == [[1, 2, 5, 6], [7, 7, 8, 9]]
    p.write_text("case_id,slice,x_min,y_min,x_max,y_max\nA,3,5,2,1,6\n")
    with pytest.raises(ValueError, match=r"boxes.csv:2: case A"):
        V.read_boxes_csv(p)
    p.write_text("case_id,slice,x_min\nA,3,5\n")
    with pytest.raises(ValueError, match="missing column"):
        V.read_boxes_csv(p)


def test_labels_csv(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("case_id,grade,other\nA,2,x\nB,1.0,y\nC,,z\nD,NA,w\n")
    assert V.read_labels_csv(p, "grade") == {"A": "2", "B": "1", "C": None, "D": None}
    with pytest.raises(ValueError, match="no column 'stage'"):
        V.read_labels_csv(p, "stage")


def test_percentile_clip_and_slice_minmax():
    v = np.arange(10000, dtype=np.float32).reshape(100, 10, 10)
    c = V.clip_percentiles(v, 0.09, 99.91)
    lo, hi = np.percentile(v, [0.09, 99.91])
    assert c.min() == pytest.approx(lo) and c.max() == pytest.approx(hi) and c.min() > 0 and c.max() < 9999
    s = V.minmax_slices(np.stack([np.full((4, 4), 7.0), np.arange(16.0).reshape(4, 4)]))
    assert s[0].max() == 0 and s[1].min() == 0 and s[1].max() == 1
    np.testing.assert_allclose(s[1], np.arange(16.0).reshape(4, 4) / 15)
    assert V.take_slices(np.zeros((3, 4, 5)), -1).shape == (5, 3, 4)


def test_resize_image_bicubic_and_mask_nearest_binary():
    rng = np.random.default_rng(0)
    img = rng.random((2, 37, 53)).astype(np.float32)
    out = V.resize_slices(img, 224)
    assert out.shape == (2, 224, 224) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    m = np.zeros((2, 37, 53), np.uint8)
    m[0, 5:20, 10:30] = 1
    mo = V.resize_slices(m, 224, mask=True)
    assert mo.shape == (2, 224, 224) and set(np.unique(mo)) <= {0, 1}
    assert mo[1].sum() == 0
    frac_in, frac_out = m[0].mean(), mo[0].mean()
    assert abs(frac_in - frac_out) < 0.02
