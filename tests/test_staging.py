"""VDPF staging pipeline: cache, bad input, case-level splits and metrics, augmentation/crop, tiny end-to-end runs."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch

from glfuse.registry import is_model, register_model
from glfuse.staging import api
from glfuse.staging.data import SliceCache, StagingSliceDataset, lesion_crop
from glfuse.staging.prepare import StagingDataWarning, make_split, prepare, read_split

TINY = ["model.args={embed_dim: 32, depth: 1, num_heads: 2, cross_mlp_hidden: 32, fffn_hidden: 4}",
        "data.img_size=32", "train.epochs=2", "train.batch_size=4", "train.accum_steps=2", "train.warmup_epochs=1",
        "train.progress=false", "train.device=cpu", "data.max_slices_per_case=2", "data.label_column=grade"]


class _StubCNN(torch.nn.Module):
    """Tiny single-input classifier standing in for the Table 4 baselines (crop input)."""

    def __init__(self, num_classes: int = 2, in_chans: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_chans, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


if not is_model("stub_stage_cnn"):
    @register_model
    def stub_stage_cnn(num_classes: int = 2, in_chans: int = 1) -> torch.nn.Module:
        return _StubCNN(num_classes, in_chans)


def _write_case(root, cid, *, label_blob=0, shape=(24, 20, 6), lesion=(1, 2, 3), dtype=np.int16, seed=0,
                mask_shape=None, nan=False, empty=False):
    import nibabel as nib

    d = root / cid
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 100, size=shape).astype(dtype)
    m = np.zeros(mask_shape or shape, np.uint8)
    if not empty:
        for s in lesion:
            m[4:9 + label_blob, 3:8, s] = 1
            v[4:9 + label_blob, 3:8, s] += 80 if label_blob else 10
    if nan:
        v = v.astype(np.float32)
        v[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(v, np.eye(4)), str(d / "t1.nii.gz"))
    nib.save(nib.Nifti1Image(m, np.eye(4)), str(d / "mask.nii.gz"))
    return d


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """10 labelled cases (2 classes, the class visible as a brighter/larger lesion) + 1 unlabelled."""
    root = tmp_path_factory.mktemp("data")
    imgs = root / "images"
    rows = []
    for i in range(10):
        cls = i % 2
        _write_case(imgs, f"C{i:02d}", label_blob=3 * cls, seed=i, lesion=(1, 2, 3) if i % 3 else (2, 4))
        rows.append((f"C{i:02d}", str(cls + 1)))
    _write_case(imgs, "NOLABEL", seed=99)
    rows.append(("NOLABEL", ""))
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "grade", "other"])
        for cid, lab in rows:
            w.writerow([cid, lab, "x"])
    return root


@pytest.fixture(scope="module")
def cache(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    with pytest.warns(StagingDataWarning, match=r"case NOLABEL .*labels.csv.*missing label"):
        prepare(dataset / "images", dataset / "labels.csv", "grade", out, size=32, progress=False)
    make_split(out, out / "split.json", val=0.2, test=0.2, seed=0)
    return out


# ---------------------------------------------------------------------------------------------------------- prepare
def test_cache_contents(cache):
    idx = json.loads((cache / "cases.json").read_text())
    assert idx["classes"] == ["1", "2"] and len(idx["cases"]) == 10
    assert [s["case_id"] for s in idx["skipped"]] == ["NOLABEL"]
    c = SliceCache(cache)
    a = c.arrays
    assert a["image"].shape[1:] == (32, 32) and a["image"].dtype == np.float16
    assert set(np.unique(a["mask"])) == {0, 1} and a["has_lesion"].all()
    r0 = next(r for r in idx["cases"] if r["case_id"] == "C00")
    assert r0["n_lesion_slices"] == 2 and r0["n_slices"] == 6
    rows = c.rows("C00")
    assert a["slice_index"][rows].tolist() == [2, 4] and (a["label"][rows] == 0).all()
    for s in range(len(a["image"])):  # per-slice min-max, then bicubic resize (clamped to [0, 1])
        assert a["image"][s].min() >= 0 and 0.9 < a["image"][s].max() <= 1


def test_summary_table(cache):
    from rich.console import Console

    from glfuse.staging.prepare import load_cache_index, summary_table

    con = Console(record=True, width=120)
    con.print(summary_table(load_cache_index(cache)))
    txt = con.export_text()
    assert "lesion slices" in txt and "NOLABEL" in txt and "missing label" in txt


def test_all_slices_and_boxes_csv(dataset, tmp_path):
    out = prepare(dataset / "images", dataset / "labels.csv", "grade", tmp_path / "a", size=16, all_slices=True,
                  cases=["C01", "C02"], progress=False)
    assert out["n_slices"] == 12
    z = np.load(tmp_path / "a" / "slices.npz")
    assert z["has_lesion"].sum() == 6
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("case_id,slice,x_min,y_min,x_max,y_max\nC01,1,3,4,7,8\nC01,1,10,10,12,12\nC02,2,0,0,19,23\n")
    out = prepare(dataset / "images", dataset / "labels.csv", "grade", tmp_path / "b", size=20, boxes_csv=boxes,
                  cases=["C01", "C02"], progress=False, dtype="float32")
    assert [r["n_boxes"] for r in out["cases"]] == [2, 1]
    z = np.load(tmp_path / "b" / "slices.npz")
    assert z["image"].dtype == np.float32 and z["mask"].shape == (2, 20, 20) and z["mask"][1].all()


# -------------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind,match", [
    ("empty", r"case BAD \(.*BAD/mask.nii.gz\): empty mask"),
    ("nan", r"case BAD \(.*BAD/t1.nii.gz\): 1 NaN/Inf voxel"),
    ("shape", r"case BAD \(.*BAD/mask.nii.gz\): mask shape \(24, 20, 5\) differs"),
])
def test_bad_case_errors(tmp_path, kind, match):
    imgs = tmp_path / "images"
    _write_case(imgs, "OK", seed=1)
    _write_case(imgs, "BAD", empty=kind == "empty", nan=kind == "nan", mask_shape=(24, 20, 5) if kind == "shape" else None)
    (tmp_path / "l.csv").write_text("case_id,g\nOK,1\nBAD,2\n")
    with pytest.raises(ValueError, match=match):
        prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "out", progress=False, size=16)


def test_boxes_outside_image(tmp_path):
    imgs = tmp_path / "images"
    _write_case(imgs, "BAD")
    _write_case(imgs, "OK", seed=1)  # a second class: single-class data is rejected before any volume is read
    (tmp_path / "l.csv").write_text("case_id,g\nBAD,1\nOK,2\n")
    b = tmp_path / "boxes.csv"
    b.write_text("case_id,slice,x_min,y_min,x_max,y_max\nBAD,1,2,2,20,5\n")  # width is 20 -> x_max 20 outside
    with pytest.raises(ValueError, match=r"case BAD \(.*boxes.csv\): box \(2, 2, 20, 5\) on slice 1 lies outside"):
        prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "out", boxes_csv=b, progress=False, size=16)
    b.write_text("case_id,slice,x_min,y_min,x_max,y_max\nBAD,6,2,2,3,5\n")
    with pytest.raises(ValueError, match=r"case BAD \(.*boxes.csv\): slice 6 outside the volume"):
        prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "out", boxes_csv=b, progress=False, size=16)


def test_missing_label_warns_and_cli_error_is_one_line(tmp_path, capsys):
    from glfuse.cli.main import main

    imgs = tmp_path / "images"
    _write_case(imgs, "A", seed=1)
    _write_case(imgs, "B", seed=2)
    _write_case(imgs, "C", seed=3)
    _write_case(imgs, "E", seed=4)
    (tmp_path / "l.csv").write_text("case_id,g\nA,1\nB,\nE,2\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        idx = prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "out", progress=False, size=16)
    msgs = [str(x.message) for x in w if issubclass(x.category, StagingDataWarning)]
    assert any("case B" in m and "l.csv" in m and "missing label" in m for m in msgs)
    assert any("case C" in m and "not listed" in m for m in msgs)
    assert [r["case_id"] for r in idx["cases"]] == ["A", "E"]
    _write_case(imgs, "D", empty=True)
    (tmp_path / "l.csv").write_text("case_id,g\nA,1\nD,2\n")
    rc = main(["stage", "prepare", "--images", str(imgs), "--labels", str(tmp_path / "l.csv"), "--label-column", "g",
               "-o", str(tmp_path / "o2"), "--quiet", "--cases", "A,D"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "case D" in err and "mask.nii.gz" in err


def test_brats_layout_name_patterns_and_all_problems_in_one_message(tmp_path):
    import nibabel as nib

    imgs = tmp_path / "brats"
    for i, cid in enumerate(["case_0", "case_1", "case_2"]):
        d = _write_case(imgs, cid, label_blob=3 * (i % 2), seed=i)
        (d / "t1.nii.gz").rename(d / "FLAIR.nii.gz")
        (d / "mask.nii.gz").rename(d / "GT_W.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((24, 20, 6), np.int16), np.eye(4)), str(d / "T1.nii.gz"))
    (tmp_path / "l.csv").write_text("case_id,g\ncase_0,1\ncase_1,2\ncase_2,1\n")
    for k, (image_name, mask_name) in enumerate((("FLAIR.nii.gz", "GT_W.nii.gz"), ("FLAIR", "GT_W"), ("*flair*", "gt_w*"))):
        idx = prepare(imgs, tmp_path / "l.csv", "g", tmp_path / f"c{k}", image_name=image_name,
                      mask_name=mask_name, size=16, progress=False)
        assert all(r["image"].endswith("FLAIR.nii.gz") and r["mask"].endswith("GT_W.nii.gz") for r in idx["cases"])
    (imgs / "case_1" / "GT_W.nii.gz").unlink()
    (imgs / "case_2" / "FLAIR.nii.gz").unlink()
    with pytest.raises(FileNotFoundError) as e:
        prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "bad", image_name="*flair*", mask_name="GT_W", size=16,
                progress=False)
    msg = str(e.value)
    assert "2 problem(s)" in msg and "case case_1: no mask matching 'GT_W'" in msg
    assert "case case_2: no image matching '*flair*'" in msg and "\n" not in msg


def test_mask_grid_check_and_resample(tmp_path):
    import nibabel as nib

    imgs = tmp_path / "images"
    for i, cid in enumerate(("A", "B")):
        _write_case(imgs, cid, label_blob=3 * i, seed=i)
    m = nib.load(str(imgs / "B" / "mask.nii.gz"))
    shifted = np.eye(4)
    shifted[0, 3] = 2.0  # same shape, grid moved by 2 mm
    nib.save(nib.Nifti1Image(np.asarray(m.dataobj), shifted), str(imgs / "B" / "mask.nii.gz"))
    (tmp_path / "l.csv").write_text("case_id,g\nA,1\nB,2\n")
    with pytest.raises(ValueError, match=r"case B \(.*B/mask.nii.gz\): mask grid differs .*B/t1.nii.gz.*--resample-mask"):
        prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "c", size=16, progress=False)
    idx = prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "c", size=16, progress=False, resample_mask=True)
    assert idx["preprocessing"]["resample_mask"] and idx["preprocessing"]["orientation"] == "RAS"


def test_single_class_and_too_few_cases_rejected(tmp_path):
    imgs = tmp_path / "images"
    for i, cid in enumerate(("A", "B", "C")):
        _write_case(imgs, cid, seed=i)
    (tmp_path / "l.csv").write_text("case_id,g\nA,1\nB,1\nC,1\n")
    with pytest.raises(ValueError, match=r"l.csv: all 3 usable case\(s\) have the label '1'.*at least 2 classes"):
        prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "c", size=16, progress=False)
    (tmp_path / "l.csv").write_text("case_id,g\nA,1\nB,1\nC,2\n")
    with pytest.warns(StagingDataWarning, match="fewer than 2 cases"):
        prepare(imgs, tmp_path / "l.csv", "g", tmp_path / "c", size=16, progress=False)
    with pytest.raises(ValueError, match=r"too few cases for this split .*train part lacks class\(es\) 2"):
        make_split(tmp_path / "c", tmp_path / "s.json", val=0.2, test=0.6)
    with pytest.raises(ValueError, match=r"too few cases for this split .*the val part would be empty"):
        make_split(tmp_path / "c", tmp_path / "s.json", val=0.2, test=0.3)
    with pytest.raises(ValueError, match="too few cases"):
        make_split(tmp_path / "c", tmp_path / "s.json", k=3)
    assert not (tmp_path / "s.json").exists()


# ------------------------------------------------------------------------------------------------ splits / metrics
def test_case_level_splits_never_leak(cache, tmp_path):
    s = read_split(cache / "split.json")
    parts = [set(s[k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(SliceCache(cache).case_ids)
    assert len(s["test"]) == 2 and len(s["val"]) == 2  # stratified: one of each class
    c = SliceCache(cache)
    cases = {p: {int(x) for x in c.arrays["case_index"][StagingSliceDataset(c, s[p]).rows]} for p in s}
    assert not (cases["train"] & cases["test"]) and not (cases["train"] & cases["val"])
    doc = make_split(cache, tmp_path / "k.json", k=5, val=0.25, seed=1)
    tests = [c for f in doc["folds"] for c in f["test"]]
    assert sorted(tests) == sorted(SliceCache(cache).case_ids)
    for i, f in enumerate(doc["folds"]):
        assert not (set(f["train"]) & set(f["test"])) and not (set(f["val"]) & set(f["test"]))
        assert read_split(tmp_path / "k.json", fold=i)["test"] == f["test"]
    with pytest.raises(ValueError, match="fold"):
        read_split(tmp_path / "k.json")
    assert make_split(cache, tmp_path / "s2.json", seed=0, val=0.2, test=0.2)["test"] == s["test"]  # seeded


def test_case_aggregation_matches_hand_computation():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6],  # case 7: mean (0.5, 0.5) -> class 0 (tie -> first)
                          [0.3, 0.7], [0.45, 0.55],  # case 3: mean (0.375, 0.625) -> 1
                          [0.6, 0.4]])  # case 5: (0.6, 0.4) -> 0
    targets = torch.tensor([0, 0, 0, 1, 1, 1])
    cases = torch.tensor([7, 7, 7, 3, 3, 5])
    cid, cp, ct = api.aggregate_cases(probs, targets, cases)
    assert cid.tolist() == [7, 3, 5] and ct.tolist() == [0, 1, 1]
    torch.testing.assert_close(cp, torch.tensor([[0.5, 0.5], [0.375, 0.625], [0.6, 0.4]]))
    m = api.StagingTask(2, True).compute_metrics({"prob": probs, "target": targets, "case": cases})
    # case preds 0,1,0 vs targets 0,1,1 -> acc 2/3; class 0: P 1/2 R 1 F1 2/3; class 1: P 1 R 1/2 F1 2/3
    assert m["case_acc"] == pytest.approx(2 / 3) and m["case_f1"] == pytest.approx(2 / 3)
    assert m["case_precision"] == pytest.approx(0.75) and m["case_recall"] == pytest.approx(0.75)
    # slices: preds 0,1,1,1,1,0 vs 0,0,0,1,1,1 -> 3/6
    assert m["slice_acc"] == pytest.approx(0.5) and m["n_cases"] == 3 and m["n_slices"] == 6
    with pytest.raises(ValueError, match="different labels"):
        api.aggregate_cases(probs, torch.tensor([0, 1, 0, 1, 1, 1]), cases)


# ------------------------------------------------------------------------------------------- augmentation / crop
def test_augmentation_keeps_mask_binary_and_is_seeded(cache):
    c = SliceCache(cache)
    ds = StagingSliceDataset(c, c.case_ids[:3], augment=True, size=32)
    torch.manual_seed(0)
    a = [ds[i] for i in range(len(ds))]
    torch.manual_seed(0)
    b = [ds[i] for i in range(len(ds))]
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert set(x["mask"].unique().tolist()) <= {0.0, 1.0}
        assert x["image"].min() >= 0 and x["image"].max() <= 1 + 1e-6 and x["image"].shape == (1, 32, 32)


def test_lesion_crop_box_plus_margin():
    img = torch.zeros(1, 100, 100)
    m = torch.zeros(1, 100, 100)
    m[0, 40:50, 20:30] = 1  # rows 40-49, cols 20-29
    img[0, 35:55, 15:35] = 1  # exactly box +- 5 px
    ci, cm = lesion_crop(img, m, size=20, margin=5)
    assert ci.shape == (1, 20, 20) and ci.min() > 0.99  # whole crop inside the bright square
    assert set(cm.unique().tolist()) == {0.0, 1.0} and cm[0, 0, 0] == 0 and cm[0, 10, 10] == 1


# ------------------------------------------------------------------------------------------------------ end to end
def test_end_to_end_cli(cache, dataset, tmp_path, capsys):
    from glfuse.cli.main import main

    run = tmp_path / "run"
    args = ["stage", "train", *TINY, f"data.cache={cache}", f"data.split={cache / 'split.json'}", "-o", str(run),
            "--quiet"]
    assert main(args) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["epochs_run"] == 2 and "case_acc" in s["test"] and s["test"]["n_cases"] == 2
    assert (run / "eval" / "case" / "confusion_matrix.png").exists()
    assert main(args) == 1 and "already holds a run" in capsys.readouterr().err
    # --resume without a config continues with the run's own config.yaml (not the default preset), one more epoch
    assert main(["stage", "train", "-o", str(run), "--resume", "--quiet", "train.epochs=3"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3
    # evaluate on the val part, both levels
    assert main(["stage", "evaluate", str(run), "--cache", str(cache), "--split", str(cache / "split.json"),
                 "--part", "val", "-o", str(tmp_path / "ev"), "--quiet", "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "ev" / "case" / "metrics.json").read_text())
    assert m["n"] == 2 and len(m["confusion_matrix"]) == 2
    rows = list(csv.DictReader(open(tmp_path / "ev" / "case_predictions.csv")))
    assert sorted(r["case_id"] for r in rows) == sorted(read_split(cache / "split.json")["val"])
    sl = list(csv.DictReader(open(tmp_path / "ev" / "slice_predictions.csv")))
    for r in rows:  # case probabilities = mean of its slice probabilities
        p = np.mean([float(x["prob_2"]) for x in sl if x["case_id"] == r["case_id"]])
        assert float(r["prob_2"]) == pytest.approx(p, abs=1e-5)
    # predict from the volume + mask, and from a boxes CSV
    case = dataset / "images" / "C03"
    out = tmp_path / "pred.csv"
    assert main(["stage", "predict", str(run), "--volume", str(case / "t1.nii.gz"), "--mask",
                 str(case / "mask.nii.gz"), "-o", str(out), "--device", "cpu"]) == 0
    pr = list(csv.DictReader(open(out)))
    assert pr[0]["case_id"] == "C03" and pr[0]["level"] == "case" and [r["slice"] for r in pr[1:]] == ["2", "4"]
    assert float(pr[0]["prob_1"]) + float(pr[0]["prob_2"]) == pytest.approx(1, abs=1e-5)
    b = tmp_path / "b.csv"
    b.write_text("case_id,slice,x_min,y_min,x_max,y_max\nC03,2,3,4,7,8\n")
    r = api.predict(run, case / "t1.nii.gz", b, None, device="cpu")
    assert r["case_id"] == "C03" and len(r["slices"]) == 1
    # batch predict over a folder of cases (no labels) and over a --predict-only cache: same probabilities
    assert main(["stage", "predict", str(run), "--images", str(dataset / "images"), "--image-name", "T1",
                 "-o", str(tmp_path / "batch"), "--device", "cpu", "--quiet"]) == 0
    cases = list(csv.DictReader(open(tmp_path / "batch" / "case_predictions.csv")))
    assert len(cases) == 11 and {"NOLABEL", "C03"} <= {r["case_id"] for r in cases}
    c03 = next(r for r in cases if r["case_id"] == "C03")
    assert float(c03["prob_2"]) == pytest.approx(float(pr[0]["prob_2"]), abs=1e-5) and c03["n_slices"] == "2"
    sl = list(csv.DictReader(open(tmp_path / "batch" / "slice_predictions.csv")))
    assert sum(int(r["n_slices"]) for r in cases) == len(sl)
    assert main(["stage", "predict", str(run), "--images", str(dataset / "images"), "-o", str(tmp_path / "batch"),
                 "--device", "cpu", "--quiet"]) == 1 and "--overwrite" in capsys.readouterr().err
    assert main(["stage", "prepare", "--images", str(dataset / "images"), "--predict-only", "-o", str(tmp_path / "po"),
                 "--size", "32", "--quiet"]) == 0
    assert main(["stage", "split", str(tmp_path / "po"), "-o", str(tmp_path / "po.json")]) == 1
    assert "predict-only" in capsys.readouterr().err
    r2 = api.predict_folder(run, tmp_path / "po", tmp_path / "batch2", device="cpu", progress=False)
    assert {r["case_id"]: r["probs"]["2"] for r in r2}["C03"] == pytest.approx(float(c03["prob_2"]), abs=1e-3)
    # cam: global + local heatmaps of the top slice
    assert main(["stage", "cam", str(run), "--cache", str(cache), "--case", "C03", "-o", str(tmp_path / "cam")]) == 0
    info = json.loads((tmp_path / "cam" / "C03_cam.json").read_text())
    assert set(info["files"]) == {"global", "local", "figure"} and info["slice"] in (2, 4)
    for f in info["files"].values():
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume(cache, tmp_path):
    from glfuse.config import ConfigError, build_config

    base = [*TINY, f"data.cache={cache}", f"data.split={cache / 'split.json'}", "data.augment=false"]
    cfg1 = build_config(api.StageConfig, "vdpf_lgg", [*base, "train.epochs=1"])
    api.train(cfg1, tmp_path / "r", evaluate_test=False)
    cfg2 = build_config(api.StageConfig, "vdpf_lgg", base)
    with pytest.raises(ConfigError, match="model.name: run 'vdpf', now 'vdpf_cat'"):  # not what the run trained
        api.train(build_config(api.StageConfig, "vdpf_lgg", [*base, "model.name=vdpf_cat"]), tmp_path / "r", resume=True)
    s = api.train(cfg2, tmp_path / "r", resume=True)
    assert s["epochs_run"] == 2


def test_ablate_tables(cache, tmp_path):
    from glfuse.config import build_config

    cfg = build_config(api.StageConfig, "vdpf_lgg", [*TINY, "train.epochs=1", f"data.cache={cache}",
                                                     f"data.split={cache / 'split.json'}"])
    rows = api.ablate(["vdpf_cat", "vdpf:features=global+local", "stub_stage_cnn"], cfg, tmp_path / "ab")
    assert [r["table"] for r in rows] == ["2", "3", "4"]
    assert rows[1]["F_GS"] == "✓" and rows[1]["F_LS"] == "✓" and rows[1]["F_Cross"] == ""
    md = (tmp_path / "ab" / "ablation.md").read_text()
    assert "Table 2" in md and "Table 3" in md and "Table 4" in md and "stub_stage_cnn" in md
    assert json.loads((tmp_path / "ab" / "stub_stage_cnn" / "best" / "config.json").read_text())["input"] == "crop"
    assert len(list(csv.DictReader(open(tmp_path / "ab" / "ablation.csv")))) == 3


def test_preset_recipe():
    from glfuse.config import build_config

    cfg = build_config(api.StageConfig, "vdpf_lgg")
    t = cfg.train
    assert (t.optimizer, t.lr, t.weight_decay, tuple(t.betas), t.batch_size, t.accum_steps, t.warmup_epochs) == \
        ("adam", 1e-4, 1e-6, (0.99, 0.999), 24, 5, 10)
    assert t.no_decay_1d is False and t.monitor == "case_f1" and t.early_stop_patience and cfg.model.name == "vdpf"


# ------------------------------------------------------------------------------------------------------- real data
def test_real_lgg_prepare(tmp_path):
    from conftest import shared_path

    root = shared_path("data", "lgg-mri")
    with pytest.warns(StagingDataWarning, match="TCGA_HT_A61B"):
        idx = prepare(root, root / "cases.csv", "grade_code", tmp_path / "c", size=64, progress=False,
                      cases=["TCGA_CS_4942", "TCGA_CS_4944", "TCGA_HT_A61B"])
    rows = {r["case_id"]: r for r in idx["cases"]}
    assert set(rows) == {"TCGA_CS_4942", "TCGA_CS_4944"} and idx["classes"] == ["1", "2"]
    meta = {r["case_id"]: r for r in csv.DictReader(open(root / "cases.csv"))}
    for cid, r in rows.items():
        assert r["n_slices"] == int(meta[cid]["n_slices"]) and r["n_lesion_slices"] == int(meta[cid]["n_lesion_slices"])
        assert r["label"] == meta[cid]["grade_code"]
    z = np.load(tmp_path / "c" / "slices.npz")
    assert z["image"].shape == (15, 64, 64) and set(np.unique(z["mask"])) == {0, 1}
