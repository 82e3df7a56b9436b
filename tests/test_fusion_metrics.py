"""Fusion metrics: golden values of the reference evaluator (24 Harvard CT–MRI pairs) and synthetic properties."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from glfuse.fusion.io_metrics import evaluate_folder, pair_by_stem, read_grey
from glfuse.metrics import fusion as M

# --------------------------------------------------------------------------------------------------------------------
# golden values
# --------------------------------------------------------------------------------------------------------------------
# golden column -> (our metric, conventions, relative tolerance)
GOLDEN_COLUMNS = {
    "EN": ("EN", {}, 1e-4),
    "SD": ("SD", {}, 1e-4),
    "SF": ("SF", {}, 1e-4),
    "AG": ("AG", {}, 1e-4),
    "MI": ("MI", {"mi_base": math.e}, 1e-4),
    "MSE": ("MSE", {"mse_reduction": "mean"}, 1e-4),
    "CC": ("CC", {"cc_reduction": "mean"}, 1e-4),
    "PSNR": ("PSNR", {"psnr_peak": "max"}, 1e-4),
    "SCD": ("SCD", {}, 1e-4),
    "VIF": ("VIF", {"vif_reduction": "sum"}, 1e-4),
    "Qabf": ("Qabf", {"qabf_equal_gradient": "reference"}, 1e-4),
    "SSIM": ("SSIM", {"ssim_data_range": 2.0, "ssim_reduction": "sum"}, 1e-3),
    "SSIM_dr255": ("SSIM", {"ssim_data_range": 255.0, "ssim_reduction": "sum"}, 1e-3),
    "MSSSIM_tm_mean": ("MS_SSIM", {"ms_ssim_data_range": 255.0, "ms_ssim_reduction": "mean"}, 1e-3),
    "Qw_piella_sw2": ("Qw", {"qw_variant": "ssim"}, 1e-4),
}
GOLDEN_METRICS = sorted({m for m, _, _ in GOLDEN_COLUMNS.values()})


def _golden_dir():
    return shared_path("golden", "fusion-metrics")


def _source_dirs():
    root = shared_path("data", "havard-fusion", "CT-MRI", "test")
    return root / "CT", root / "MRI"


@pytest.fixture(scope="module")
def golden():
    """(golden rows by image, our reference-convention rows by image, our summary) — computed once."""
    gdir = _golden_dir()
    a_dir, b_dir = _source_dirs()
    with open(gdir / "golden_ctmri_harvard.csv", newline="") as fh:
        rows = {r["image"]: {k: float(v) for k, v in r.items() if k != "image"} for r in csv.DictReader(fh)}
    ours, summary = evaluate_folder(
        gdir / "fused", a_dir, b_dir, metrics=GOLDEN_METRICS, progress=False, **M.REFERENCE_CONVENTIONS
    )
    ours_by = {r["image"]: r for r in ours}
    # SSIM_dr255 uses different conventions than the REFERENCE set: compute it separately.
    for _stem, pf, pa, pb in pair_by_stem(gdir / "fused", a_dir, b_dir)[0]:
        ours_by[pf.name]["SSIM_dr255"] = M.ssim(read_grey(pf), read_grey(pa), read_grey(pb), data_range=255.0)
    return rows, ours_by, summary


def test_golden_images_all_paired(golden):
    rows, ours, summary = golden
    assert len(rows) == 24 and set(rows) == set(ours) and summary["n"] == 24


@pytest.mark.parametrize("column", list(GOLDEN_COLUMNS))
def test_golden_column(golden, column):
    rows, ours, _ = golden
    metric, conv, tol = GOLDEN_COLUMNS[column]
    for k, v in conv.items():  # the reference conventions used for the golden run are the ones named here
        if column != "SSIM_dr255":
            assert M.REFERENCE_CONVENTIONS[k] == v, (column, k)
    key = "SSIM_dr255" if column == "SSIM_dr255" else metric
    rel = {img: abs(ours[img][key] - g[column]) / abs(g[column]) for img, g in rows.items()}
    worst = max(rel, key=rel.get)
    assert rel[worst] <= tol, f"{column}: max relative error {rel[worst]:.3e} at {worst}"


def test_golden_means(golden):
    _, _, summary = golden
    with open(_golden_dir() / "golden_ctmri_harvard_means.csv", newline="") as fh:
        means = next(csv.DictReader(fh))
    for column in ("EN", "SD", "MI", "VIF", "Qabf", "SSIM", "PSNR"):
        assert summary["mean"][column] == pytest.approx(float(means[column]), rel=1e-3)
    assert summary["mean"]["MS_SSIM"] == pytest.approx(float(means["MSSSIM_tm_mean"]), rel=1e-3)
    assert summary["mean"]["Qw"] == pytest.approx(float(means["Qw_piella_sw2"]), rel=1e-4)
    assert summary["conventions"]["psnr_peak"] == "max"


def test_golden_one_image_single_functions():
    """The public single-metric functions with explicit reference conventions, on one golden image."""
    gdir = _golden_dir()
    a_dir, b_dir = _source_dirs()
    with open(gdir / "golden_ctmri_harvard.csv", newline="") as fh:
        g = next(csv.DictReader(fh))
    name = g["image"]
    f, a, b = (read_grey(d / name) for d in (gdir / "fused", a_dir, b_dir))
    ft = torch.from_numpy(f).float()  # torch input accepted
    assert M.mi(ft, a, b, base=math.e) == pytest.approx(float(g["MI"]), rel=1e-6)
    assert M.psnr(f, a, b, peak="max") == pytest.approx(float(g["PSNR"]), rel=1e-5)
    assert M.ssim(f, a, b, data_range=2.0) == pytest.approx(float(g["SSIM"]), rel=1e-3)
    assert M.qw(f, a, b, variant="ssim") == pytest.approx(float(g["Qw_piella_sw2"]), rel=1e-6)
    # default conventions differ where the spec says so
    assert M.psnr(f, a, b, peak=float(f.max())) == M.psnr(f, a, b, peak="max")
    assert M.evaluate(f, a, b)["SSIM"] == pytest.approx(float(g["SSIM_dr255"]), rel=1e-3)


# --------------------------------------------------------------------------------------------------------------------
# backends: our fast numpy VIF / MS-SSIM = torchmetrics
# --------------------------------------------------------------------------------------------------------------------
def _smooth_images(shape, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 127 + 80 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    a = np.clip(base + rng.normal(0, 10, shape), 0, 255).round()
    b = np.clip(255 - base + rng.normal(0, 20, shape), 0, 255).round()
    f = np.clip((a + b) / 2 + rng.normal(0, 5, shape), 0, 255).round()
    return f, a, b


def test_vif_numpy_matches_torchmetrics():
    f, a, b = _smooth_images((67, 53))
    b[:, :] = 100.0  # one constant source: VIFp term defined as 0, no NaN
    x = M.vif(f, a, b)
    y = M.vif(f, a, b, backend="torchmetrics")
    assert math.isfinite(x) and x == pytest.approx(y, rel=1e-10)


def test_ms_ssim_numpy_matches_torchmetrics():
    f, a, b = _smooth_images((177, 190), seed=1)
    x = M.ms_ssim(f, a, b)
    y = M.ms_ssim(f, a, b, backend="torchmetrics")
    assert x == pytest.approx(y, rel=1e-7)  # torchmetrics rounds the betas to float32 (~6e-9)


# --------------------------------------------------------------------------------------------------------------------
# synthetic properties (no shared data)
# --------------------------------------------------------------------------------------------------------------------
def test_identical_images():
    f, _, _ = _smooth_images((64, 64))
    assert M.ssim(f, f, f) == pytest.approx(2.0, abs=1e-12)
    assert M.ssim(f, f, f, reduction="mean") == pytest.approx(1.0, abs=1e-12)
    assert M.cc(f, f, f) == pytest.approx(1.0)
    assert M.mse(f, f, f) == 0.0
    assert M.psnr(f, f, f) == math.inf
    assert M.qw(f, f, f) == pytest.approx(1.0, abs=1e-12)
    assert M.qw(f, f, f, variant="uiqi") == pytest.approx(1.0, abs=1e-12)
    assert M.qe(f, f, f) == pytest.approx(1.0, abs=1e-12)
    # MI(F, F) = H(F) in nats
    assert M.mi(f, f, f) == pytest.approx(2 * M.en(f, base=math.e), rel=1e-12)
    # Qabf of perfect transfer: Γg/(1+e^{-7.5}) · Γα/(1+e^{-4.4}) where edges exist ("one" rule)
    perfect = 0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4))
    assert M.qabf(f, f, f, equal_gradient="one") == pytest.approx(perfect, rel=1e-12)
    assert M.vif(f, f, f) == pytest.approx(2.0, rel=1e-9)


def test_entropy_and_mi_properties():
    f, a, b = _smooth_images((80, 90), seed=3)
    assert M.en(np.full((20, 30), 77.0)) == 0.0
    two = np.zeros((10, 10))
    two[:5] = 255
    assert M.en(two) == pytest.approx(1.0)  # two equiprobable levels = 1 bit
    assert M.en(two, base=math.e) == pytest.approx(math.log(2))
    nats = M.mi(f, a, b)
    assert M.mi(f, a, b, base=2) == pytest.approx(nats / math.log(2), rel=1e-12)
    assert M.mi(f, a, b) == pytest.approx(M.mi(f, b, a), rel=1e-12)  # symmetric in the sources
    # pairwise MI is symmetric: MI(F, A) = MI(A, F)
    assert M.mi(f, a, a) == pytest.approx(M.mi(a, f, f), rel=1e-12)
    assert M.mi(f, a, b) <= M.mi(f, f, f) + 1e-12  # bounded by 2 H(F)
    assert nats >= 0


def test_constant_images_no_nan():
    c = np.full((176, 180), 128.0)
    z = np.zeros((176, 180))
    f, a, _ = _smooth_images((176, 180))
    for fused, s1, s2 in [(c, c, c), (z, z, z), (f, c, z), (c, a, z), (z, z, c)]:
        vals = M.evaluate(fused, s1, s2)
        assert set(vals) == set(M.METRIC_NAMES)
        bad = {k: v for k, v in vals.items() if math.isnan(v)}
        assert not bad, bad
    vals = M.evaluate(c, c, c)
    assert vals["EN"] == 0 and vals["SD"] == 0 and vals["MI"] == 0 and vals["CC"] == 0 and vals["SCD"] == 0
    assert vals["SSIM"] == pytest.approx(2.0) and vals["MS_SSIM"] == pytest.approx(1.0)
    assert vals["VIF"] == 0.0 and vals["PSNR"] == math.inf
    # Sobel uses zero padding (as the reference), so a constant non-zero image has border edges; an all-zero one none
    assert M.qabf(z, z, z) == 0.0


def test_simple_definitions():
    x = np.array([[0.0, 10.0, 20.0], [30.0, 40.0, 50.0]])
    assert M.sd(x) == pytest.approx(np.std(x))
    assert M.sf(x) == pytest.approx(math.sqrt(100.0 + 900.0))
    gy, gx = np.gradient(x)
    assert M.ag(x) == pytest.approx(np.mean(np.sqrt((gx**2 + gy**2) / 2)))
    f, a, b = _smooth_images((50, 60), seed=4)
    assert M.scd(f, a, b) == pytest.approx(np.corrcoef((f - b).ravel(), a.ravel())[0, 1]
                                           + np.corrcoef((f - a).ravel(), b.ravel())[0, 1])  # fmt: skip
    assert M.cc(f, a, b, reduction="sum") == pytest.approx(2 * M.cc(f, a, b))
    assert M.psnr(f, a, b, peak=255.0) == pytest.approx(10 * math.log10(255.0**2 / M.mse(f, a, b)))
    assert M.psnr(f, a, b, peak="max") == pytest.approx(10 * math.log10(f.max() ** 2 / M.mse(f, a, b)))
    assert M.ssim(f, a, b, reduction="mean") == pytest.approx(M.ssim(f, a, b) / 2)
    assert -2 <= M.scd(f, a, b) <= 2 and 0 <= M.qabf(f, a, b) <= 1


def test_qabf_equal_gradient_rule_differs_only_where_equal():
    f, a, b = _smooth_images((60, 60), seed=5)
    ref = M.qabf(f, a, b, equal_gradient="reference")
    one = M.qabf(f, a, b, equal_gradient="one")
    assert ref == pytest.approx(one, rel=1e-3)
    with pytest.raises(ValueError):
        M.qabf(f, a, b, equal_gradient="bogus")


def test_input_validation_and_conventions():
    f, a, b = _smooth_images((50, 50))
    with pytest.raises(ValueError, match="same shape"):
        M.mse(f, a[:-1], b)
    with pytest.raises(ValueError, match="2-D"):
        M.en(np.zeros((4, 4, 3)))
    with pytest.raises(TypeError, match="unknown metric convention"):
        M.evaluate(f, a, b, ssim_range=2)
    with pytest.raises(KeyError):
        M.evaluate(f, a, b, metrics=["FMI"])
    assert set(M.evaluate(f, a, b, metrics=["EN", "MI"])) == {"EN", "MI"}
    with pytest.warns(UserWarning, match="MS_SSIM"):
        vals = M.evaluate(f, a, b)
    assert list(vals) == list(M.METRIC_NAMES) and math.isnan(vals["MS_SSIM"])
    d = M.describe_conventions(mi_base=2.0)
    assert d["mi_base"] == 2.0 and d["matches_reference_evaluator"]["mi_base"] is False
    assert "BT.601" in d["description"]["colour"]
    # [1, 1, H, W] tensors are accepted
    t = torch.from_numpy(f)[None, None]
    assert M.en(t) == M.en(f)


def test_to_grey_y():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    y = M.to_grey_y(rgb)
    assert y.shape == (4, 5) and y.dtype == np.float64
    assert np.allclose(y, 0.299 * 100 + 0.587 * 50 + 0.114 * 200)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=-1)
    assert np.allclose(M.to_grey_y(rgba), y)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    assert np.allclose(M.to_grey_y(chw), y)
    grey = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(M.to_grey_y(grey), grey)


# --------------------------------------------------------------------------------------------------------------------
# folder evaluation
# --------------------------------------------------------------------------------------------------------------------
def _write_set(tmp_path, names, shape=(48, 52), colour_fused=False):
    dirs = {k: tmp_path / k for k in ("fused", "A", "B")}
    for d in dirs.values():
        d.mkdir()
    for i, name in enumerate(names):
        f, a, b = _smooth_images(shape, seed=i)
        Image.fromarray(a.astype(np.uint8)).save(dirs["A"] / f"{name}.png")
        Image.fromarray(b.astype(np.uint8)).save(dirs["B"] / f"{name}.bmp")
        if colour_fused:
            rgb = np.stack([f, f, np.clip(f + 10, 0, 255)], axis=-1).astype(np.uint8)
            Image.fromarray(rgb).save(dirs["fused"] / f"{name}.tif")
        else:
            Image.fromarray(f.astype(np.uint8)).save(dirs["fused"] / f"{name}.png")
    return dirs


def test_evaluate_folder(tmp_path):
    dirs = _write_set(tmp_path, ["x1", "x2", "x3"], colour_fused=True)
    rows, summary = evaluate_folder(dirs["fused"], dirs["A"], dirs["B"], metrics=["EN", "MI", "SSIM"],
                                      progress=False)  # fmt: skip
    assert [r["image"] for r in rows] == ["x1.tif", "x2.tif", "x3.tif"]
    assert summary["n"] == 3 and set(summary["mean"]) == {"EN", "MI", "SSIM"}
    assert summary["mean"]["MI"] == pytest.approx(np.mean([r["MI"] for r in rows]))
    assert summary["std"]["MI"] == pytest.approx(np.std([r["MI"] for r in rows]))
    y = read_grey(dirs["fused"] / "x1.tif")  # colour → BT.601 Y, unrounded
    f, _, _ = _smooth_images((48, 52), seed=0)
    assert np.allclose(y, 0.299 * f + 0.587 * f + 0.114 * np.clip(f + 10, 0, 255))
    assert rows[0]["EN"] == pytest.approx(M.en(y))


def test_evaluate_folder_unmatched(tmp_path):
    dirs = _write_set(tmp_path, ["p", "q"])
    (dirs["fused"] / "q.png").unlink()
    Image.fromarray(np.zeros((48, 52), np.uint8)).save(dirs["fused"] / "extra.png")
    with pytest.raises(ValueError, match=r"unmatched.*extra\.png.*q\.png|unmatched.*q\..*extra"):
        evaluate_folder(dirs["fused"], dirs["A"], dirs["B"], metrics=["EN"], progress=False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rows, summary = evaluate_folder(dirs["fused"], dirs["A"], dirs["B"], metrics=["EN"], strict=False,
                                          progress=False)  # fmt: skip
    assert [r["image"] for r in rows] == ["p.png"] and summary["n"] == 1
    assert any("extra.png" in str(w.message) and "q.png" in str(w.message) for w in rec)


def test_summary_of_non_finite_values_has_notes_and_no_numpy_warning():
    from glfuse.fusion.io_metrics import summarise

    rows = [{"image": "a", "PSNR": math.inf, "EN": 1.0, "VIF": math.nan},
            {"image": "b", "PSNR": 30.0, "EN": 3.0, "VIF": math.nan},
            {"image": "c", "PSNR": math.inf, "EN": 2.0, "VIF": math.nan}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summarise(rows)
    assert s["mean"]["EN"] == 2.0 and s["std"]["EN"] == pytest.approx(np.std([1, 3, 2]))
    assert s["mean"]["PSNR"] == math.inf and math.isnan(s["std"]["PSNR"])
    assert math.isnan(s["mean"]["VIF"]) and math.isnan(s["std"]["VIF"])
    assert [n.split(":")[0] for n in s["notes"]] == ["PSNR", "VIF"]
    same = summarise([{"image": "a", "PSNR": math.inf}, {"image": "b", "PSNR": math.inf}])
    assert same["mean"]["PSNR"] == math.inf and same["std"]["PSNR"] == 0.0 and same["notes"] == []
