"""3-D fusion of registered volumes: slice-wise equals the 2-D API, NIfTI keeps the MRI affine, DICOM series out,
geometry mismatch / --resample, CLI volume branch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from glfuse.cli.main import main
from glfuse.data.volume_io import display_slice, load_volume, normalise
from glfuse.fusion.api import fuse_images
from glfuse.fusion.volume import fuse_volumes


def _pair(tmp_path, shape=(24, 20, 5), mri_affine=None, ct_affine=None, ct_shape=None):
    import nibabel as nib

    rng = np.random.default_rng(0)
    zz = np.linspace(0, 1, shape[2])[None, None]
    xx = np.linspace(0, 1, shape[0])[:, None, None]
    mri = (100 + 300 * np.sin(5 * xx) * np.cos(3 * zz) + 20 * rng.standard_normal(shape)).astype(np.float32)
    ct = np.where(xx + 0 * zz > 0.6, 1000.0, -50.0) + 0 * mri
    if ct_shape is not None:
        ct = ct[: ct_shape[0], : ct_shape[1], : ct_shape[2]]
    aff = mri_affine if mri_affine is not None else np.diag([-0.9, -0.9, 3.0, 1.0])  # LPS-like storage
    nib.save(nib.Nifti1Image(mri, aff), str(tmp_path / "mri.nii.gz"))
    nib.save(nib.Nifti1Image(ct.astype(np.float32), ct_affine if ct_affine is not None else aff),
             str(tmp_path / "ct.nii.gz"))
    return tmp_path / "mri.nii.gz", tmp_path / "ct.nii.gz", aff


class _Stub(nn.Module):
    """fused = 0.25 vis + 0.75 ir (tests batching and mapping)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.25))

    def forward(self, vis_y, ir):
        return self.w * vis_y + (1 - self.w) * ir


@pytest.mark.parametrize("model", ["average", "stub"])
def test_nifti_out_matches_slicewise_2d_fusion_and_keeps_affine(tmp_path, model):
    import nibabel as nib

    a, b, aff = _pair(tmp_path)
    m = _Stub() if model == "stub" else model
    rec = fuse_volumes(m, a, b, tmp_path / "fused.nii.gz", batch_size=2, b_norm="window:40,400", progress=False)
    img = nib.load(str(tmp_path / "fused.nii.gz"))
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    assert img.shape == (24, 20, 5)
    va, vb = load_volume(a), load_volume(b)
    na, nb = normalise(va.array, "percentile:0.5,99.5"), normalise(vb.array, "window:40,400")
    fused_ras = load_volume(tmp_path / "fused.nii.gz").array
    for k in range(5):
        ref = fuse_images(m, display_slice(na[:, :, k]), display_slice(nb[:, :, k]))
        np.testing.assert_allclose(display_slice(fused_ras[:, :, k]), ref, atol=1e-5)
    saved = json.loads((tmp_path / "fused.fusion.json").read_text())
    assert saved["normalisation"]["b"] == "window:40,400" and rec["format"] == "nifti"
    with pytest.raises(FileExistsError):
        fuse_volumes("average", a, b, tmp_path / "fused.nii.gz", progress=False)


def test_geometry_mismatch_and_resample(tmp_path):
    a, b, aff = _pair(tmp_path, ct_affine=np.diag([-1.8, -1.8, 3.0, 1.0]), ct_shape=(12, 10, 5))
    with pytest.raises(ValueError, match="do not share one voxel grid") as e:
        fuse_volumes("average", a, b, tmp_path / "f.nii.gz", progress=False)
    assert "mri.nii.gz" in str(e.value) and "ct.nii.gz" in str(e.value) and "--resample" in str(e.value)
    rec = fuse_volumes("average", a, b, tmp_path / "f.nii.gz", resample=True, progress=False)
    assert rec["resampled"] and rec["other"]["shape"] == [24, 20, 5]


def test_cli_volume_to_dicom_and_nifti(tmp_path, capsys):
    import pydicom

    a, b, _ = _pair(tmp_path)
    rc = main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(tmp_path / "dcm"),
               "--format", "dicom", "--batch-size", "3"])
    assert rc == 0
    files = sorted((tmp_path / "dcm").glob("*.dcm"))
    assert len(files) == 5
    ds = pydicom.dcmread(str(files[0]))
    assert "DERIVED" in list(ds.ImageType) and float(ds.RescaleSlope) == pytest.approx(1 / 4095)
    back, ref = load_volume(tmp_path / "dcm"), load_volume(a)
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-4)
    assert back.shape == ref.shape
    # the NIfTI branch is chosen from the output name; existing output needs --overwrite
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(tmp_path / "o.nii.gz")]) == 0
    nifti = load_volume(tmp_path / "o.nii.gz").array
    np.testing.assert_allclose(back.array, np.rint(nifti * 4095) / 4095, atol=1e-5)
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(tmp_path / "o.nii.gz")]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_cli_dicom_series_inputs_detected(tmp_path, capsys):
    from glfuse.data.volume_write import save_dicom_series_like

    a, b, _ = _pair(tmp_path)
    for src, name in ((a, "mri_dcm"), (b, "ct_dcm")):
        v = load_volume(src)
        save_dicom_series_like(normalise(v.array, "minmax"), v, tmp_path / name)
    # two DICOM-series folders, output folder without extension: a fused DICOM series (no --volume/--format needed)
    assert main(["fuse", "run", "--model", "average", "--a", str(tmp_path / "mri_dcm"), "--b", str(tmp_path / "ct_dcm"),
                 "-o", str(tmp_path / "fused"), "--a-norm", "none", "--b-norm", "none"]) == 0
    out, ref = load_volume(tmp_path / "fused"), load_volume(tmp_path / "mri_dcm")
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    ct = load_volume(tmp_path / "ct_dcm").array
    np.testing.assert_allclose(out.array, (ref.array + ct) / 2, atol=1 / 4095 + 1e-6)  # one 12-bit step
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(tmp_path / "x.png"),
                 "--volume"]) == 1
    assert "x.png" in capsys.readouterr().err
