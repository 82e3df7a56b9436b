"""Calibration: expected calibration error, reliability-diagram bins and temperature scaling.

* :func:`reliability_bins` — equal-width bins of the top-label confidence ``max_k p_k``: count, mean confidence and
  accuracy per bin (the data of a reliability diagram);
* :func:`expected_calibration_error` — ``sum_b n_b / N * |acc_b - conf_b|`` (top-label, L1, 15 bins by default; the
  definition of Guo et al. 2017 and of ``torchmetrics`` ``multiclass_calibration_error(norm="l1")``);
* :func:`fit_temperature` — the scalar ``T > 0`` minimising the negative log-likelihood of ``softmax(logits / T)`` on a
  held-out (validation) split; :func:`apply_temperature` applies it to logits or to probabilities (``log p`` differs
  from the logits by a per-row constant, so ``softmax(log p / T)`` is the same calibrated distribution).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["reliability_bins", "expected_calibration_error", "fit_temperature", "apply_temperature"]


def _np(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def reliability_bins(probs: Any, targets: Any, n_bins: int = 15) -> dict[str, list[float]]:
    """``{"edges", "count", "confidence", "accuracy"}`` per equal-width confidence bin (empty bins: NaN)."""
    probs, targets = _np(probs), _np(targets, np.int64)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = probs.max(1)
    correct = (probs.argmax(1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bins are (lo, hi]; confidence 0 falls into the first bin
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"edges": edges.tolist(), "count": count.astype(int).tolist(), "confidence": mean_conf.tolist(),
            "accuracy": acc.tolist()}


def expected_calibration_error(probs: Any, targets: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error (L1) with ``n_bins`` equal-width bins."""
    b = reliability_bins(probs, targets, n_bins)
    n = sum(b["count"])
    return float(sum(c / n * abs(a - f) for c, a, f in zip(b["count"], b["accuracy"], b["confidence"]) if c > 0))


def apply_temperature(x: torch.Tensor, temperature: float, *, is_probs: bool = False) -> torch.Tensor:
    """Calibrated probabilities ``softmax(logits / T)``; with ``is_probs=True`` ``x`` holds probabilities."""
    x = torch.as_tensor(x).float()
    logits = x.clamp(min=1e-12).log() if is_probs else x
    return (logits / float(temperature)).softmax(1)


def fit_temperature(logits: Any, targets: Any, *, is_probs: bool = False, max_iter: int = 200) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (LBFGS on ``log T``, starting at T = 1).

    Args:
        logits: ``[N, C]`` validation logits (or probabilities with ``is_probs=True``).
        targets: ``[N]`` class indices.
    """
    x = torch.as_tensor(logits).detach().double()
    y = torch.as_tensor(targets).detach().long()
    if x.ndim != 2 or y.shape != (x.shape[0],) or len(y) == 0:
        raise ValueError(f"fit_temperature: logits [N, C] and targets [N] needed, got {tuple(x.shape)}, {tuple(y.shape)}")
    if is_probs:
        x = x.clamp(min=1e-12).log()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t) or t <= 0:
        raise RuntimeError(f"temperature fit diverged (T={t})")
    return t
