"""Percentile bootstrap confidence intervals for classification metrics.

``bootstrap_cis(probs, targets, groups=None)`` resamples *units* with replacement ``n_boot`` times and returns, for every
headline metric, ``{"value", "low", "high"}`` (the percentile interval at ``level``, default 95 %). With ``groups``
(e.g. the case id of every slice) whole groups are resampled — a cluster bootstrap, the right unit when slices of one
patient are not independent. Metrics are recomputed with a vectorised NumPy implementation of
:func:`glfuse.metrics.classification.classification_metrics` (same definitions: macro averages over the classes present,
one-vs-rest AUC via the Mann-Whitney statistic, with two classes the AUC of class 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = ["CI_KEYS", "fast_metrics", "bootstrap_cis"]

CI_KEYS = ("acc", "balanced_acc", "f1", "precision", "recall", "specificity", "auc", "sensitivity_pos",
           "specificity_pos", "ece")


def _auc(score: np.ndarray, pos: np.ndarray) -> float:
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fast_metrics(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """Scalar metrics of ``probs [N, C]`` against ``targets [N]`` (NumPy, for bootstrapping)."""
    from glfuse.metrics.calibration import expected_calibration_error

    n, c = probs.shape
    pred = probs.argmax(1)
    cm = np.bincount(targets * c + pred, minlength=c * c).reshape(c, c).astype(np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    neg = n - support
    tn = n - support - predicted + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        rec = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
        spec = np.where(neg > 0, tn / np.maximum(neg, 1), 0.0)
    present = (support + predicted) > 0
    aucs = [_auc(probs[:, k], targets == k) for k in range(c)]
    valid = [a for a in aucs if not np.isnan(a)]
    out = {"acc": float(tp.sum() / n), "precision": float(prec[present].mean()), "recall": float(rec[present].mean()),
           "f1": float(f1[present].mean()), "specificity": float(spec[present].mean()),
           "balanced_acc": float(rec[support > 0].mean()),
           "auc": aucs[1] if c == 2 else (float(np.mean(valid)) if valid else float("nan")),
           "ece": expected_calibration_error(probs, targets, n_bins)}
    if c == 2:
        out["sensitivity_pos"], out["specificity_pos"] = float(rec[1]), float(spec[1])
    return out


def bootstrap_cis(probs: Any, targets: Any, groups: Any = None, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0, keys: tuple[str, ...] = CI_KEYS, n_bins: int = 15) -> dict[str, dict[str, float]]:
    """Percentile bootstrap CIs: ``{metric: {"value", "low", "high"}}`` for the metrics in ``keys`` that apply.

    Args:
        probs: ``[N, C]`` class probabilities.
        targets: ``[N]`` class indices.
        groups: optional ``[N]`` unit ids; whole units are resampled (cluster bootstrap). Default: every row is a unit.
        n_boot: bootstrap replicates. level: coverage of the interval. seed: NumPy seed (results are reproducible).
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64)
    if probs.ndim != 2 or targets.shape != (probs.shape[0],) or len(targets) == 0:
        raise ValueError(f"bootstrap_cis: probs [N, C] and targets [N] needed, got {probs.shape} and {targets.shape}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_cis: level must be in (0, 1), got {level}")
    point = fast_metrics(probs, targets, n_bins)
    keys = tuple(k for k in keys if k in point)
    if groups is None:
        members = [np.array([i]) for i in range(len(targets))]
    else:
        groups = np.asarray(groups)
        _, inv = np.unique(groups, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inv))[:-1])
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in keys}
    n_units = len(members)
    for _ in range(n_boot):
        pick = rng.integers(0, n_units, n_units)
        idx = np.concatenate([members[u] for u in pick]) if groups is not None else pick
        m = fast_metrics(probs[idx], targets[idx], n_bins)
        for k in keys:
            samples[k].append(m[k])
    a = (1 - level) / 2
    out = {}
    for k in keys:
        s = np.asarray(samples[k], dtype=np.float64)
        s = s[~np.isnan(s)]
        lo, hi = (np.quantile(s, [a, 1 - a]) if len(s) else (np.nan, np.nan))
        out[k] = {"value": point[k], "low": float(lo), "high": float(hi)}
    return out
