"""glfuse.data.image_io (the one 2-D image layer; also as glfuse.fusion.io): reading, colour, saving, pairing, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from glfuse.cli.main import main
from glfuse.data.color import rgb_to_ycbcr, ycbcr_to_rgb
from glfuse.data.image_io import (
    pair_folders,
    read_image,
    read_pair,
    save_image,
    to_uint8,
)


def _one_line_naming(exc: BaseException, *names: str) -> None:
    msg = str(exc)
    assert "\n" not in msg, msg
    for n in names:
        assert n in msg, (n, msg)


# ------------------------------------------------------------------------------------------------------------- colour
def test_colour_round_trip_within_one_level():
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 32)] * 3, indexing="ij"), -1).reshape(-1, 1, 3).astype(np.float32)
    y, cb, cr = rgb_to_ycbcr(grid)
    back = ycbcr_to_rgb(y, cb, cr)
    assert np.abs(back - grid).max() <= 1 / 255
    # the spec's formulas, on correctly ordered RGB
    r, g, b = 0.8, 0.3, 0.1
    yy = 0.299 * r + 0.587 * g + 0.114 * b
    y1, cb1, cr1 = rgb_to_ycbcr(np.array([[[r, g, b]]], np.float32))
    assert y1[0, 0] == pytest.approx(yy, abs=1e-6)
    assert cr1[0, 0] == pytest.approx(0.713 * (r - yy) + 0.5, abs=1e-6)
    assert cb1[0, 0] == pytest.approx(0.564 * (b - yy) + 0.5, abs=1e-6)


def test_rgb_channel_order_preserved(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[0, 0] = (0, 0, 255)  # one blue pixel
    Image.fromarray(rgb).save(tmp_path / "c.png")
    arr, colour = read_image(tmp_path / "c.png")
    assert colour and arr.shape == (4, 5, 3) and arr.dtype == np.float32
    assert arr[1, 1, 0] == pytest.approx(200 / 255) and arr[1, 1, 2] == 0
    assert arr[0, 0, 2] == 1.0
    save_image(tmp_path / "c2.png", arr)
    with Image.open(tmp_path / "c2.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), rgb)


def test_grey_saved_as_rgb_reads_as_grey_and_16bit(tmp_path):
    g = (np.arange(20, dtype=np.uint8).reshape(4, 5) * 10)
    Image.fromarray(np.repeat(g[..., None], 3, -1)).save(tmp_path / "g.png")
    arr, colour = read_image(tmp_path / "g.png")
    assert not colour and arr.shape == (4, 5)
    np.testing.assert_allclose(arr * 255, g, atol=1e-4)
    g16 = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    arr16, colour16 = read_image(tmp_path / "g16.png")
    assert not colour16
    np.testing.assert_allclose(arr16, g16 / 65535, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------- saving
def test_eight_bit_rule(tmp_path):
    x = np.array([[-0.3, 0.0, 0.5 / 255, 1.5 / 255, 0.2, 0.49999, 1.0, 1.7]], np.float32)
    expect = np.rint(np.clip(x, 0, 1) * np.float32(255)).astype(np.uint8)
    assert expect.tolist() == [[0, 0, 0, 2, 51, 127, 255, 255]]
    np.testing.assert_array_equal(to_uint8(x), expect)
    save_image(tmp_path / "f.png", x)
    with Image.open(tmp_path / "f.png") as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), expect)
    # the official stretch only on request: clip, min-max over the array, x255, truncate
    y = np.array([[0.2, 0.4, 0.6]], np.float32)
    assert to_uint8(y, minmax=True).tolist() == [[0, 127, 255]]
    assert to_uint8(y).tolist() == [[51, 102, 153]]


# ------------------------------------------------------------------------------------------------------ DICOM / NIfTI
def _write_dicom(path, pixels: np.ndarray, slope: float, intercept: float) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_rescale_and_minmax(tmp_path):
    px = np.arange(48, dtype=np.uint16).reshape(6, 8) * 40 + 100
    _write_dicom(tmp_path / "ct.dcm", px, slope=2.0, intercept=-1024.0)
    arr, colour = read_image(tmp_path / "ct.dcm")
    hu = px * 2.0 - 1024.0
    assert not colour and arr.shape == (6, 8) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    # an explicit DICOM window in rescaled units
    win, _ = read_image(tmp_path / "ct.dcm", window=(0.0, 2000.0))
    np.testing.assert_allclose(win, np.clip((hu + 1000) / 2000, 0, 1), atol=1e-6)


def test_nifti_slices(tmp_path):
    import nibabel as nib

    vol = np.random.default_rng(0).uniform(-5, 300, size=(6, 7, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "v.nii.gz"))

    def mm(x):
        return (x - x.min()) / (x.max() - x.min())

    arr, colour = read_image(tmp_path / "v.nii.gz", slice_index=3)
    assert not colour and arr.shape == (6, 7)
    np.testing.assert_allclose(arr, mm(vol[:, :, 3]), atol=1e-6)
    with pytest.warns(UserWarning, match=r"v\.nii\.gz: 3-D volume .* slice 2 of 5 .*middle"):
        mid, _ = read_image(tmp_path / "v.nii.gz")  # default: middle slice of the last axis, with a warning
    with pytest.raises(ValueError, match="middle"):
        read_image(tmp_path / "v.nii.gz", strict=True)
    np.testing.assert_allclose(mid, mm(vol[:, :, 2]), atol=1e-6)
    ax0, _ = read_image(tmp_path / "v.nii.gz", slice_index=1, axis=0)
    np.testing.assert_allclose(ax0, mm(vol[1]), atol=1e-6)
    nib.save(nib.Nifti1Image(vol[:, :, 0], np.eye(4)), str(tmp_path / "s.nii"))
    two_d, _ = read_image(tmp_path / "s.nii")
    np.testing.assert_allclose(two_d, mm(vol[:, :, 0]), atol=1e-6)
    with pytest.raises(ValueError) as e:
        read_image(tmp_path / "v.nii.gz", slice_index=9)
    _one_line_naming(e.value, "v.nii.gz")


# ---------------------------------------------------------------------------------------------------------- bad input
def _pair_dirs(tmp_path, names_a, names_b, size_b=(8, 8)):
    a, b = tmp_path / "MRI", tmp_path / "CT"
    a.mkdir()
    b.mkdir()
    for n in names_a:
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(a / f"{n}.png")
    for n in names_b:
        Image.fromarray(np.full(size_b, 50, np.uint8)).save(b / f"{n}.png")
    return a, b


def test_missing_partner_is_listed(tmp_path):
    a, b = _pair_dirs(tmp_path, ["p1", "p2", "lonely"], ["p1", "p2", "other"])
    with pytest.raises(FileNotFoundError) as e:
        pair_folders(a, b)
    _one_line_naming(e.value, "lonely", "other")
    with pytest.warns(UserWarning, match="lonely"):
        pairs = pair_folders(a, b, allow_unmatched=True)
    assert [p[0] for p in pairs] == ["p1", "p2"]


def test_size_mismatch_names_both_files(tmp_path):
    a, b = _pair_dirs(tmp_path, ["p1"], ["p1"], size_b=(8, 12))
    with pytest.raises(ValueError) as e:
        read_pair(a / "p1.png", b / "p1.png")
    _one_line_naming(e.value, str(a / "p1.png"), str(b / "p1.png"))
    (ra, _), (rb, _) = read_pair(a / "p1.png", b / "p1.png", resize=True)
    assert ra.shape == rb.shape == (8, 8)


def test_corrupt_and_wrong_channel_files(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError) as e:
        read_image(tmp_path / "broken.png")
    _one_line_naming(e.value, "broken.png")
    Image.fromarray(np.zeros((4, 4, 2), np.uint8), mode="LA").save(tmp_path / "two.png")
    with pytest.raises(ValueError) as e:
        read_image(tmp_path / "two.png")
    _one_line_naming(e.value, "two.png", "2 channels")
    Image.new("CMYK", (4, 4)).save(tmp_path / "cmyk.tif")
    with pytest.raises(ValueError) as e:
        read_image(tmp_path / "cmyk.tif")
    _one_line_naming(e.value, "cmyk.tif", "4 channels")
    # RGBA is fine (alpha dropped)
    Image.new("RGBA", (4, 4), (10, 20, 30, 128)).save(tmp_path / "rgba.png")
    arr, colour = read_image(tmp_path / "rgba.png")
    assert colour and arr.shape == (4, 4, 3)
    with pytest.raises(FileNotFoundError) as e:
        read_image(tmp_path / "nothere.png")
    _one_line_naming(e.value, "nothere.png")


def test_cli_reports_bad_input_on_one_line(tmp_path, capsys):
    a, b = _pair_dirs(tmp_path, ["p1"], ["p1"])
    (b / "p1.png").write_bytes(b"garbage")
    rc = main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.count("\n") == 0 and err.startswith("glfuse: error:") and str(b / "p1.png") in err


# ------------------------------------------------------------------------------------------------- one IO layer
def test_training_and_inference_share_the_grey_to_y_rule(tmp_path):
    from glfuse.data.color import to_y
    from glfuse.fusion.api import Fuser, fuse_images
    from glfuse.fusion.train import _load_y

    g = np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    seen = {}

    def fn(vis_y, ir):
        seen["vis"] = vis_y
        return vis_y

    grey = read_image(tmp_path / "g.png")[0]
    fuse_images(Fuser("probe", "classical", fn), grey, grey)
    train_y = _load_y(tmp_path / "g.png")
    np.testing.assert_array_equal(seen["vis"], train_y)  # bit-identical: no train/inference skew
    np.testing.assert_array_equal(train_y, to_y(grey))
    assert train_y.dtype == np.float32
    import glfuse.fusion.io as legacy  # the historical module name still works and is the same code

    assert legacy.read_image is read_image and legacy.to_y is to_y


def test_one_listing_and_stem_pairing(tmp_path):
    from glfuse.data.image_io import images_by_stem, list_images, match_stems

    for d in ("a", "b", "a/sub", "a/.hidden"):
        (tmp_path / d).mkdir(parents=True)
    for p in ("a/x.png", "a/y.nii.gz", "a/sub/z.PNG", "a/.hidden/h.png", "a/.dot.png", "a/notes.txt", "b/x.tif",
              "b/w.png"):
        (tmp_path / p).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path / "a")] == ["x.png", "y.nii.gz"]
    assert [p.name for p in list_images(tmp_path / "a", recursive=True)] == ["z.PNG", "x.png", "y.nii.gz"]
    assert list(images_by_stem(tmp_path / "a")) == ["x", "y"]
    matched, unmatched = match_stems({"A": tmp_path / "a", "B": tmp_path / "b"})
    assert matched == [("x", tmp_path / "a/x.png", tmp_path / "b/x.tif")]
    assert unmatched == {"A": ["y.nii.gz"], "B": ["w.png"]}
    (tmp_path / "b/x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="two images share the name 'x'"):
        images_by_stem(tmp_path / "b")


def test_metrics_reader_keeps_stored_values(tmp_path):
    from glfuse.data.color import to_grey_y
    from glfuse.data.image_io import read_grey

    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    y8 = read_grey(tmp_path / "c.png", scale="8bit")
    assert y8.dtype == np.float64
    np.testing.assert_array_equal(y8, to_grey_y(rgb))  # the metrics' BT.601 Y, unrounded, on 0-255
    yu = read_grey(tmp_path / "c.png")
    assert yu.dtype == np.float32 and np.abs(yu * 255 - y8).max() < 1e-3
