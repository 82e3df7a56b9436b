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


# ----------------------------------------------------------------------------------------- balanced accuracy, binary
def test_balanced_accuracy_and_positive_class_rates():
    # 8 negatives (7 right), 2 positives (1 right)
    targets = [0] * 8 + [1] * 2
    preds = [0] * 7 + [1] + [1, 0]
    m = classification_metrics(_probs(preds, 2), torch.tensor(targets), ["neg", "pos"])
    assert m["acc"] == pytest.approx(8 / 10)
    assert m["balanced_acc"] == pytest.approx((7 / 8 + 1 / 2) / 2)
    assert m["positive_class"] == "pos"
    assert m["sensitivity_pos"] == pytest.approx(1 / 2) and m["specificity_pos"] == pytest.approx(7 / 8)
    # another positive class (e.g. COVID-CT: "COVID" sorts first)
    mn = classification_metrics(_probs(preds, 2), torch.tensor(targets), ["neg", "pos"], positive="neg")
    assert mn["positive_class"] == "neg"
    assert mn["sensitivity_pos"] == pytest.approx(7 / 8) and mn["specificity_pos"] == pytest.approx(1 / 2)
    from glfuse.metrics.bootstrap import fast_metrics

    f = fast_metrics(_probs(preds, 2).numpy(), torch.tensor(targets).numpy(), positive=0)
    assert f["sensitivity_pos"] == pytest.approx(7 / 8) and f["specificity_pos"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="not a class"):
        classification_metrics(_probs(preds, 2), torch.tensor(targets), ["neg", "pos"], positive="COVID")
    m3 = classification_metrics(_probs([0, 1, 2], 3), torch.tensor([0, 1, 1]))
    assert "sensitivity_pos" not in m3
    assert m3["balanced_acc"] == pytest.approx((1 + 0.5) / 2)  # class 2 never occurs in the targets


# ------------------------------------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("n_bins", [10, 15])
@pytest.mark.parametrize("c", [2, 5])
def test_ece_matches_torchmetrics(n_bins, c):
    from torchmetrics.functional.classification import multiclass_calibration_error

    from glfuse.metrics.calibration import expected_calibration_error

    g = torch.Generator().manual_seed(c * n_bins)
    probs = (torch.randn(500, c, generator=g) * 2).softmax(1)
    y = torch.randint(0, c, (500,), generator=g)
    ref = float(multiclass_calibration_error(probs, y, c, n_bins=n_bins, norm="l1"))
    assert expected_calibration_error(probs, y, n_bins) == pytest.approx(ref, abs=1e-6)
    assert classification_metrics(probs, y)["ece"] == pytest.approx(
        float(multiclass_calibration_error(probs, y, c, n_bins=15, norm="l1")), abs=1e-6)


def test_reliability_bins_by_hand():
    from glfuse.metrics.calibration import reliability_bins

    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.35, 0.65], [0.4, 0.6]])
    b = reliability_bins(probs, torch.tensor([0, 1, 1, 0]), n_bins=2)
    assert b["count"] == [0, 4]
    assert b["accuracy"][1] == pytest.approx(0.5) and b["confidence"][1] == pytest.approx((0.95 + 0.9 + 0.65 + 0.6) / 4)


def test_temperature_matches_reference_minimiser():
    from scipy.optimize import minimize_scalar

    from glfuse.metrics.calibration import apply_temperature, expected_calibration_error, fit_temperature

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (2000,), generator=g)
    true_logits = torch.randn(2000, 3, generator=g) + 1.5 * torch.nn.functional.one_hot(y, 3)
    labels = torch.distributions.Categorical(logits=true_logits).sample()  # labels drawn from the true model
    over = 3.0 * true_logits  # an over-confident model: the true temperature is 3

    def nll(t: float) -> float:
        return float(torch.nn.functional.cross_entropy(over.double() / t, labels))

    ref = minimize_scalar(nll, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-6}).x
    t = fit_temperature(over, labels)
    assert t == pytest.approx(ref, rel=1e-3)
    assert 2.5 < t < 3.5
    # the same temperature from probabilities (log p differs from the logits by a per-row constant)
    assert fit_temperature(over.softmax(1), labels, is_probs=True) == pytest.approx(t, rel=1e-3)
    torch.testing.assert_close(apply_temperature(over.softmax(1), t, is_probs=True), (over / t).softmax(1),
                               atol=1e-5, rtol=1e-4)
    assert expected_calibration_error((over / t).softmax(1), labels) < expected_calibration_error(over.softmax(1), labels)


# --------------------------------------------------------------------------------------------------------- bootstrap
def test_fast_metrics_agree_with_classification_metrics():
    import numpy as np

    from glfuse.metrics.bootstrap import fast_metrics

    for c in (2, 4):
        rng = np.random.default_rng(c)
        p = np.round(rng.dirichlet([1.0] * c, 150), 2).astype(np.float32)  # rounded: ties in the scores
        y = rng.integers(0, c, 150)
        f = fast_metrics(p, y)
        m = classification_metrics(torch.tensor(p), torch.tensor(y))
        for k, v in f.items():
            assert v == pytest.approx(m[k], abs=1e-6), k
        w = rng.integers(0, 3, 150)  # multiplicities == duplicated rows
        idx = np.repeat(np.arange(150), w)
        fw, fd = fast_metrics(p, y, weights=w), fast_metrics(p[idx], y[idx])
        assert all(fw[k] == pytest.approx(fd[k], abs=1e-9) for k in fw)


@pytest.mark.slow
def test_bootstrap_ci_coverage_in_seeded_simulation():
    """95 % percentile intervals for accuracy and AUC cover the true values in roughly 95 % of simulated studies."""
    import numpy as np
    from scipy.stats import norm

    from glfuse.metrics.bootstrap import bootstrap_cis

    rng = np.random.default_rng(123)
    # scores N(0,1) for negatives, N(shift,1) for positives, balanced classes, predicted positive when score > 0:
    shift = 1.2
    true_auc = norm.cdf(shift / np.sqrt(2))
    true_acc = (norm.cdf(shift) + 0.5) / 2
    studies, n = 120, 150
    hit = {"acc": 0, "auc": 0}
    for s in range(studies):
        y = rng.integers(0, 2, n)
        sp = 1 / (1 + np.exp(-rng.normal(shift * y, 1.0)))
        ci = bootstrap_cis(np.stack([1 - sp, sp], 1), y, n_boot=250, seed=s, keys=("acc", "auc"))
        hit["acc"] += ci["acc"]["low"] <= true_acc <= ci["acc"]["high"]
        hit["auc"] += ci["auc"]["low"] <= true_auc <= ci["auc"]["high"]
    # binomial sd of the coverage over 120 studies is ~2 points: accept 88-99 %
    for k, h in hit.items():
        assert 0.88 <= h / studies <= 0.99, (k, h / studies)


def test_cluster_bootstrap_resamples_cases_not_slices():
    """Ten identical slices per case carry no more information than one: case resampling keeps the interval as wide
    as the per-case one; slice resampling would shrink it by about sqrt(10)."""
    import numpy as np

    from glfuse.metrics.bootstrap import bootstrap_cis

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    pred = np.where(rng.random(40) < 0.7, y, 1 - y)
    probs = np.eye(2)[pred] * 0.8 + 0.1
    rep = np.repeat(np.arange(40), 10)
    per_case = bootstrap_cis(probs, y, n_boot=400, keys=("acc",))["acc"]
    grouped = bootstrap_cis(probs[rep], y[rep], groups=rep, n_boot=400, keys=("acc",))["acc"]
    naive = bootstrap_cis(probs[rep], y[rep], n_boot=400, keys=("acc",))["acc"]
    w = lambda c: c["high"] - c["low"]  # noqa: E731
    assert grouped["value"] == pytest.approx(per_case["value"])
    assert w(grouped) == pytest.approx(w(per_case), rel=0.25)
    assert w(naive) < 0.6 * w(grouped)


# ---------------------------------------------------------------------------------------------------- confusion plot
def test_confusion_text_readable_on_light_cells(tmp_path):
    """Every count is drawn in a colour that contrasts with its cell (the old rule drew white on near-white cells
    when all counts were large), and the title is inside the figure."""
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    from glfuse.metrics.classification import plot_confusion

    made: list[Figure] = []
    orig = Figure.savefig

    def grab(self, *a, **k):
        made.append(self)
        return orig(self, *a, **k)

    Figure.savefig = grab
    try:
        plot_confusion([[95, 60], [58, 99]], ["a", "b"], "a long title that must not be clipped", tmp_path / "c.png")
    finally:
        Figure.savefig = orig
    fig = made[0]
    lum = lambda rgb: 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # noqa: E731
    checked = 0
    for ax in fig.axes:
        for im in ax.get_images():
            data = im.get_array()
            for t in ax.texts:
                x, y = t.get_position()
                cell = im.cmap(im.norm(data[int(round(y)), int(round(x))]))
                assert abs(lum(to_rgb(t.get_color())) - lum(cell[:3])) > 0.35, (t.get_text(), t.get_color())
                checked += 1
    assert checked == 8
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    bb = fig._suptitle.get_window_extent(renderer)
    assert bb.y1 <= fig.bbox.y1 + 1 and bb.x0 >= -1 and bb.x1 <= fig.bbox.x1 + 1


# ----------------------------------------------------------------------------------------------------- class weights
def test_class_weights_change_the_loss_as_stated():
    from glfuse.classify.api import ClassificationTask, ClassifyConfig, class_weights
    from glfuse.config import build_config

    w = class_weights("balanced", [30, 10])  # N / (K * N_k) = 40 / 60, 40 / 20
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2.0]))
    assert class_weights("none", [30, 10]) is None
    torch.testing.assert_close(class_weights([1, 3], [30, 10]), torch.tensor([1.0, 3.0]))
    for bad in ("inverse", [1.0], [0.0, 0.0], [-1.0, 2.0]):
        with pytest.raises(ValueError, match="loss.class_weights"):
            class_weights(bad, [30, 10])

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-0.2, 1.0], [1.0, 1.5]])
    y = torch.tensor([0, 1, 1, 0])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    plain = ClassificationTask(["a", "b"]).training_step(Fixed(), (None, y))
    weighted = ClassificationTask(["a", "b"], class_weights=w).training_step(Fixed(), (None, y))
    nll = -logits.log_softmax(1)[torch.arange(4), y]
    assert float(plain) == pytest.approx(float(nll.mean()), rel=1e-6)
    # PyTorch's weighted mean: sum_i w_{y_i} * nll_i / sum_i w_{y_i}
    assert float(weighted) == pytest.approx(float((w[y] * nll).sum() / w[y].sum()), rel=1e-6)
    assert float(weighted) != pytest.approx(float(plain), rel=1e-3)
    cfg = build_config(ClassifyConfig, None, ["loss.class_weights=balanced", "train.monitor=balanced_acc"])
    assert cfg.loss.class_weights == "balanced"
    assert build_config(ClassifyConfig, None, ["loss.class_weights=[1.0, 2.5]"]).loss.class_weights == [1.0, 2.5]
