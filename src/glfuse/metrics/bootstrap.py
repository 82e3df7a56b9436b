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

__all__ = ["CI_KEYS", "fast_metrics", "bootstrap_cis"]

CI_KEYS = ("acc", "balanced_acc", "f1", "precision", "recall", "specificity", "auc", "sensitivity_pos",
           "specificity_pos", "ece")


class _Prepared:
    """Per-dataset quantities reused by every resample: predictions, confidence bins and score ranks per class."""

    def __init__(self, probs: np.ndarray, targets: np.ndarray, n_bins: int, positive: int = 1) -> None:
        self.n, self.c = probs.shape
        self.positive = positive
        self.targets = targets
        self.pred = probs.argmax(1)
        self.conf = probs.max(1)
        self.correct = (self.pred == targets).astype(np.float64)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        self.bin = np.clip(np.searchsorted(edges, self.conf, side="left") - 1, 0, n_bins - 1)
        self.n_bins = n_bins
        self.cm_index = targets * self.c + self.pred
        # per class: index of each row's score among the sorted unique scores (ties share an index)
        self.score_rank = [np.unique(probs[:, k], return_inverse=True)[1].ravel() for k in range(self.c)]
        self.n_unique = [int(r.max()) + 1 for r in self.score_rank]


def _auc_weighted(rank: np.ndarray, n_unique: int, pos: np.ndarray, w: np.ndarray) -> float:
    """Mann-Whitney AUC with row multiplicities ``w`` (ties count one half)."""
    wp, wn = w * pos, w * ~pos
    tot_p, tot_n = wp.sum(), wn.sum()
    if tot_p == 0 or tot_n == 0:
        return float("nan")
    pos_u = np.bincount(rank, wp, n_unique)
    neg_u = np.bincount(rank, wn, n_unique)
    below = np.cumsum(neg_u) - neg_u
    return float((pos_u * (below + 0.5 * neg_u)).sum() / (tot_p * tot_n))


def _weighted_metrics(pr: _Prepared, w: np.ndarray) -> dict[str, float]:
    c, n = pr.c, w.sum()
    cm = np.bincount(pr.cm_index, w, c * c).reshape(c, c)
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    neg = n - support
    tn = n - support - predicted + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(predicted > 0, tp / np.maximum(predicted, 1e-300), 0.0)
        rec = np.where(support > 0, tp / np.maximum(support, 1e-300), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
        spec = np.where(neg > 0, tn / np.maximum(neg, 1e-300), 0.0)
    present = (support + predicted) > 0
    aucs = [_auc_weighted(pr.score_rank[k], pr.n_unique[k], pr.targets == k, w) for k in range(c)]
    valid = [a for a in aucs if not np.isnan(a)]
    cnt = np.bincount(pr.bin, w, pr.n_bins)
    gap = np.abs(np.bincount(pr.bin, w * pr.correct, pr.n_bins) - np.bincount(pr.bin, w * pr.conf, pr.n_bins))
    out = {"acc": float(tp.sum() / n), "precision": float(prec[present].mean()), "recall": float(rec[present].mean()),
           "f1": float(f1[present].mean()), "specificity": float(spec[present].mean()),
           "balanced_acc": float(rec[support > 0].mean()),
           "auc": aucs[1] if c == 2 else (float(np.mean(valid)) if valid else float("nan")),
           "ece": float(gap[cnt > 0].sum() / n)}
    if c == 2:
        k = pr.positive
        out["sensitivity_pos"], out["specificity_pos"] = float(rec[k]), float(spec[k])
    return out


def fast_metrics(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15,
                 weights: np.ndarray | None = None, positive: int = 1) -> dict[str, float]:
    """Scalar metrics of ``probs [N, C]`` against ``targets [N]``; ``weights``: row multiplicities (a resample);
    ``positive``: index of the positive class of a binary task (sensitivity / specificity)."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64)
    w = np.ones(len(targets)) if weights is None else np.asarray(weights, dtype=np.float64)
    return _weighted_metrics(_Prepared(probs, targets, n_bins, positive), w)


def bootstrap_cis(probs: Any, targets: Any, groups: Any = None, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0, keys: tuple[str, ...] = CI_KEYS, n_bins: int = 15,
                  positive: int = 1) -> dict[str, dict[str, float]]:
    """Percentile bootstrap CIs: ``{metric: {"value", "low", "high"}}`` for the metrics in ``keys`` that apply.

    Args:
        probs: ``[N, C]`` class probabilities.
        targets: ``[N]`` class indices.
        groups: optional ``[N]`` unit ids; whole units are resampled (cluster bootstrap). Default: every row is a unit.
        n_boot: bootstrap replicates. level: coverage of the interval. seed: NumPy seed (results are reproducible).
        positive: positive class index of a binary task.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64)
    if probs.ndim != 2 or targets.shape != (probs.shape[0],) or len(targets) == 0:
        raise ValueError(f"bootstrap_cis: probs [N, C] and targets [N] needed, got {probs.shape} and {targets.shape}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_cis: level must be in (0, 1), got {level}")
    pr = _Prepared(probs, targets, n_bins, positive)
    point = _weighted_metrics(pr, np.ones(len(targets)))
    keys = tuple(k for k in keys if k in point)
    unit = np.arange(len(targets)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    n_units = int(unit.max()) + 1
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_boot):
        # a resample = how often each unit is drawn; every row of a unit gets its unit's multiplicity
        w = np.bincount(rng.integers(0, n_units, n_units), minlength=n_units)[unit].astype(np.float64)
        m = _weighted_metrics(pr, w)
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
