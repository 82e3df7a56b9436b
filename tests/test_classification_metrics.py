"""classification_metrics against a hand-computed confusion matrix; report files."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from glfuse.metrics.classification import classification_metrics, save_classification_report


def _probs(preds, c):
    return torch.nn.functional.one_hot(torch.tensor(preds), c).float() * 0.8 + 0.2 / c


def test_multiclass_against_hand_computed():
    targets = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
    preds = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0]
    m = classification_metrics(_probs(preds, 3), torch.tensor(targets), ["a", "b", "c"])
    # rows true, cols predicted
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert m["acc"] == pytest.approx(7 / 10)
    prec = [3 / 4, 1 / 2, 3 / 4]
    rec = [3 / 4, 1 / 2, 3 / 4]
    f1 = [2 * p * r / (p + r) for p, r in zip(prec, rec)]
    assert m["precision"] == pytest.approx(sum(prec) / 3)
    assert m["recall"] == pytest.approx(sum(rec) / 3)
    assert m["f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5) and m["per_class"]["c"]["support"] == 4
    # specificity of class a: TN = 5 of the 6 non-a samples
    assert m["per_class"]["a"]["specificity"] == pytest.approx(5 / 6)
    assert 0 <= m["auc"] <= 1


def test_binary_auc_and_zero_division():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    targets = torch.tensor([0, 1, 1, 0])
    m = classification_metrics(probs, targets)
    # positives (class 1) scores 0.4, 0.7; negatives 0.1, 0.55 → pairs won: (0.4>0.1), (0.7>0.1), (0.7>0.55) = 3/4
    assert m["auc"] == pytest.approx(0.75)
    assert m["class_names"] == ["0", "1"]
    # a class never predicted: precision 0, no NaN
    m2 = classification_metrics(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]))
    assert m2["per_class"]["1"]["precision"] == 0.0 and m2["acc"] == 0.5
    with pytest.raises(ValueError):
        classification_metrics(torch.rand(3, 2), torch.tensor([0, 1, 2]))


def test_report_files(tmp_path):
    m = classification_metrics(_probs([0, 1, 1], 2), torch.tensor([0, 1, 0]), ["neg", "pos"])
    paths = save_classification_report(m, tmp_path, ["neg", "pos"], title="t", extra={"model": "x"})
    data = json.loads(paths["metrics"].read_text())
    assert data["model"] == "x" and data["confusion_matrix"] == [[1, 1], [0, 1]]
    rows = list(csv.reader(open(paths["confusion_csv"])))
    assert rows == [["true \\ predicted", "neg", "pos"], ["neg", "1", "1"], ["pos", "0", "1"]]
    pc = list(csv.DictReader(open(paths["per_class"])))
    assert [r["class"] for r in pc] == ["neg", "pos"] and pc[1]["support"] == "1"
    assert paths["confusion_png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError):
        save_classification_report(m, tmp_path, ["neg", "pos"])
