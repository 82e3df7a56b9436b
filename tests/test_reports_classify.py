"""classify evaluate → report with CIs, temperature scaling stored and applied by predict, class weights recorded,
FLOPs at the used input size, classify compare — on a tiny synthetic tree with a tiny ViT (fast on CPU)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from test_classify_cli import TINY, _make_tree

from glfuse.cli.main import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    data = _make_tree(tmp / "data")
    run = tmp / "run"
    assert main(["classify", "train", "--config", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder", *TINY,
                 "loss.class_weights=balanced", "train.monitor=balanced_acc", "--output", str(run)]) == 0
    return tmp, data, run


def _probs(csv_path):
    rows = list(csv.DictReader(open(csv_path)))
    return torch.tensor([[float(r["prob_cat"]), float(r["prob_dog"])] for r in rows], dtype=torch.float64)


def test_evaluate_report_calibration_and_predict(run):
    from glfuse.metrics.calibration import apply_temperature
    from glfuse.profile import count_flops

    tmp, data, rdir = run
    mcfg = json.loads((rdir / "best" / "config.json").read_text())
    assert mcfg["class_weights"] == [1.0, 1.0]  # balanced data: N / (K * N_k) = 1
    before = tmp / "before.csv"
    assert main(["classify", "predict", str(rdir), str(data / "test"), "--output", str(before)]) == 0

    out = tmp / "eval"
    assert main(["classify", "evaluate", str(rdir), "--output", str(out), "--calibrate", "--cams", "2",
                 "--n-boot", "200"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    t = json.loads((rdir / "best" / "config.json").read_text())["temperature"]
    assert m["temperature"] == pytest.approx(t) and t > 0 and "ece_uncalibrated" in m
    assert set(m["ci"]) >= {"acc", "balanced_acc", "f1", "auc", "ece", "sensitivity_pos", "specificity_pos"}
    assert m["ci"]["acc"]["low"] <= m["acc"] <= m["ci"]["acc"]["high"]
    # FLOPs counted at the 32x32 input actually used
    from glfuse.classify.api import load_classifier

    model, _, _ = load_classifier(rdir)
    assert m["flops_input"] == "3×32×32"
    assert m["gflops"] == pytest.approx(count_flops(model, (torch.zeros(1, 3, 32, 32),)) / 1e9)
    cams = json.loads((out / "cam" / "index.json").read_text())
    assert len(cams) == 2 and all("predicted" in c["caption"] for c in cams)
    page = (out / "report.html").read_text()
    assert "95 % CI" in page and "Grad-CAM" in page and "temperature scaling" in page

    after = tmp / "after.csv"
    assert main(["classify", "predict", str(rdir), str(data / "test"), "--output", str(after)]) == 0
    torch.testing.assert_close(_probs(after), apply_temperature(_probs(before), t, is_probs=True).double(),
                               atol=2e-6, rtol=1e-4)
    # a stored temperature is not silently replaced
    assert main(["classify", "evaluate", str(rdir), "--output", str(tmp / "e2"), "--calibrate", "--cams", "0"]) == 1


def test_report_command_rebuilds_the_page(run, tmp_path):
    _, _, rdir = run
    assert main(["report", str(rdir)]) == 0  # a training run: curves from log.json
    page = (rdir / "report.html").read_text()
    assert f"Training — {rdir.name}" in page
    assert page.count("<img") == 1 and "balanced_acc" in page


def test_classify_compare_table(run, tmp_path):
    tmp, data, rdir = run
    out = tmp_path / "cmp"
    shutil.copytree(rdir, out / "vit_base_patch16_224")  # reuse: no second training
    assert main(["classify", "compare", "--models", "vit_base_patch16_224", "-c", "hifuse_covid_ct",
                 f"data.root={data}", "data.kind=folder", *TINY, "--output", str(out), "--reuse"]) == 0
    rows = list(csv.DictReader(open(out / "classify_compare.csv")))
    assert [r["model"] for r in rows] == ["vit_base_patch16_224"]
    assert float(rows[0]["infer_img_s"]) > 0 and float(rows[0]["acc_low"]) <= float(rows[0]["acc"])
    md = (out / "classify_compare.md").read_text()
    assert "| Method | Acc (%) | F1 (%) | Prec (%) | Recall (%) | Params (M) | FLOPs (G)" in md
    assert "1 epoch(s), batch 4" in md and "input 32²" in md  # the shortened recipe is stated
    assert "Comparison (HiFuse Table 5 layout)" in (out / "report.html").read_text()
