"""Classification metrics (torchmetrics) and a report writer, shared by HiFuse/baselines and VDPF (case/slice level).

``classification_metrics(probs, targets, class_names)`` returns plain Python types:

* ``acc`` (overall accuracy), ``balanced_acc`` (balanced accuracy = mean recall over the classes present in the
  targets), ``precision``, ``recall``, ``f1``, ``specificity`` (macro averages over classes), ``auc`` (one-vs-rest ROC
  AUC, macro over the classes that have both positives and negatives; with two classes the AUC of the positive class 1),
  ``ece`` (top-label expected calibration error, 15 bins, :mod:`glfuse.metrics.calibration`), ``n``;
* binary tasks only: ``sensitivity_pos`` / ``specificity_pos`` of the positive class (``positive_class``: index 1
  unless ``positive`` names another class);
* ``per_class``: ``{class: {precision, recall, f1, specificity, auc, support}}``;
* ``confusion_matrix``: rows = true class, columns = predicted class; ``class_names``.

The prediction is ``argmax(probs)``. A class with no predictions gets precision 0 (no NaN); an undefined AUC is NaN
(JSON ``null``) and left out of the macro AUC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["SCALAR_KEYS", "classification_metrics", "format_table_row", "plot_confusion", "positive_index",
           "save_classification_report"]

SCALAR_KEYS = ("acc", "balanced_acc", "f1", "precision", "recall", "specificity", "auc", "ece")


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def classification_metrics(probs: torch.Tensor, targets: torch.Tensor,
                           class_names: Sequence[str] | None = None, positive: int | str | None = None) -> dict[str, Any]:
    """Metrics of ``probs [N, C]`` (probabilities or scores) against ``targets [N]`` (class indices); ``positive``:
    the positive class (index or name) of a binary task, default index 1."""
    from torchmetrics.functional.classification import binary_auroc, multiclass_confusion_matrix

    probs = torch.as_tensor(probs).detach().float().cpu()
    targets = torch.as_tensor(targets).detach().long().cpu()
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {tuple(probs.shape)}")
    n, c = probs.shape
    if targets.shape != (n,):
        raise ValueError(f"targets must be [N={n}], got shape {tuple(targets.shape)}")
    if n == 0:
        raise ValueError("no samples to score")
    if targets.min() < 0 or targets.max() >= c:
        raise ValueError(f"targets must be class indices in 0..{c - 1}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} probability columns")

    cm = multiclass_confusion_matrix(probs, targets, num_classes=c).long()
    tp = cm.diag().double()
    support = cm.sum(1).double()
    predicted = cm.sum(0).double()
    tn = n - support - predicted + tp
    neg = n - support
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    spec = torch.where(neg > 0, tn / neg.clamp(min=1), torch.zeros_like(tp))

    aucs = []
    for k in range(c):
        pos = targets == k
        if pos.all() or not pos.any():
            aucs.append(float("nan"))
        else:
            aucs.append(float(binary_auroc(probs[:, k], pos.long())))
    if c == 2:
        auc = aucs[1]
    else:
        valid = [a for a in aucs if not math.isnan(a)]
        auc = sum(valid) / len(valid) if valid else float("nan")

    # macro averages over classes that occur in targets or predictions (as sklearn's labels=None does)
    present = (support + predicted) > 0
    def macro(v: torch.Tensor) -> float:
        return float(v[present].mean())

    per_class = {
        names[k]: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                   "specificity": float(spec[k]), "auc": _nan_to_none(aucs[k]), "support": int(support[k])}
        for k in range(c)
    }
    from glfuse.metrics.calibration import expected_calibration_error

    binary = {}
    if c == 2:
        pos = positive_index(names, positive)
        binary = {"positive_class": names[pos], "sensitivity_pos": float(recall[pos]),
                  "specificity_pos": float(spec[pos])}
    return {
        "n": n,
        "acc": float(tp.sum() / n),
        "balanced_acc": float(recall[support > 0].mean()),
        "precision": macro(precision),
        "recall": macro(recall),
        "f1": macro(f1),
        "specificity": macro(spec),
        "auc": _nan_to_none(auc),
        "ece": expected_calibration_error(probs.numpy(), targets.numpy()),
        **binary,
        "class_names": names,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def positive_index(names: Sequence[str], positive: int | str | None) -> int:
    """Index of the positive class (a name or index; None = 1)."""
    if positive is None:
        return 1
    if isinstance(positive, str) and not positive.isdigit():
        if positive not in names:
            raise ValueError(f"positive class {positive!r} is not a class: {list(names)}")
        return list(names).index(positive)
    k = int(positive)
    if not 0 <= k < len(names):
        raise ValueError(f"positive class index {k} out of range for {len(names)} classes")
    return k


def format_table_row(metrics: dict[str, Any], name: str = "", params: int | None = None,
                     gflops: float | None = None) -> str:
    """Markdown table header + row in the paper's format: Acc, F1, Prec, Recall (%), AUC, params (M), GFLOPs."""
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    cols = ["model", "Acc (%)", "F1 (%)", "Prec (%)", "Recall (%)", "AUC (%)", "Params (M)", "GFLOPs"]
    row = [name or "-", pct(metrics.get("acc")), pct(metrics.get("f1")), pct(metrics.get("precision")),
           pct(metrics.get("recall")), pct(metrics.get("auc")),
           "-" if params is None else f"{params / 1e6:.2f}", "-" if gflops is None else f"{gflops:.2f}"]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n| " + " | ".join(row) + " |"


def save_classification_report(metrics: dict[str, Any], out_dir: str | Path, class_names: Sequence[str] | None = None,
                               *, title: str = "Confusion matrix", extra: dict[str, Any] | None = None,
                               overwrite: bool = False) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_class.csv``, ``confusion_matrix.csv`` and ``confusion_matrix.png`` to ``out_dir``.

    ``extra`` entries (model name, params, data description, ...) are added to ``metrics.json``. Refuses to replace an
    existing report unless ``overwrite``.
    """
    from glfuse.files import atomic_write, make_dir, save_json, write_csv

    out_dir = Path(out_dir)
    names = list(class_names or metrics.get("class_names") or [])
    paths = {k: out_dir / f for k, f in (("metrics", "metrics.json"), ("per_class", "per_class.csv"),
                                          ("confusion_csv", "confusion_matrix.csv"),
                                          ("confusion_png", "confusion_matrix.png"))}
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise FileExistsError(f"{p} exists; pass --overwrite (overwrite=True) to replace it")
    make_dir(out_dir)
    save_json({**(extra or {}), **metrics}, paths["metrics"])
    cols = ("precision", "recall", "f1", "specificity", "auc")
    write_csv(paths["per_class"], [[c, *(("" if metrics["per_class"][c][k] is None else f"{metrics['per_class'][c][k]:.6f}")
                                         for k in cols), metrics["per_class"][c]["support"]] for c in names],
              header=["class", *cols, "support"])
    cm = metrics["confusion_matrix"]
    write_csv(paths["confusion_csv"], [[c, *row] for c, row in zip(names, cm)], header=["true \\ predicted", *names])
    atomic_write(paths["confusion_png"], lambda tmp: plot_confusion(cm, names, title, tmp))
    return paths


def plot_confusion(cm: list[list[int]], names: list[str], title: str, path: Any) -> None:
    """Counts (left) and row-normalised rates (right). Text is white only where the cell colour is dark."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend state, safe in any thread

    arr = np.asarray(cm, dtype=float)
    rows = arr.sum(1, keepdims=True)
    norm = np.divide(arr, rows, out=np.zeros_like(arr), where=rows > 0)
    k = len(names)
    size = max(3.2, 0.55 * k + 2.4)
    fig = Figure(figsize=(2 * size + 0.6, size + 0.7), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, data, sub, fmt in ((axes[0], arr, "counts", "{:.0f}"), (axes[1], norm, "row-normalised (recall)", "{:.2f}")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(float(data.max()), 1e-12))
        ax.set_xticks(range(k), names, rotation=45, ha="right")
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sub, fontsize=10)
        for i in range(k):
            for j in range(k):
                r, g, b, _ = im.cmap(im.norm(data[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # luminance of the cell colour actually drawn
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", color="white" if dark else "black")
    fig.suptitle(title, fontsize=10, wrap=True)
    fig.savefig(path, format="png")
