"""Report figures (matplotlib ``Figure`` objects, no pyplot state) returned as PNG bytes."""

from __future__ import annotations

from typing import Any

import numpy as np

from glfuse.reports.render import figure_png

__all__ = ["training_curves", "roc_curves", "reliability_diagram", "confusion_png", "metric_distributions"]


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def training_curves(history: list[dict[str, Any]]) -> bytes:
    """Loss (train and validation losses), learning rate (log scale) and validation metrics per epoch."""
    ep = [r.get("epoch", i + 1) for i, r in enumerate(history)]
    keys = list(dict.fromkeys(k for r in history for k in r))

    def series(k: str) -> list[float]:
        return [float(r[k]) if r.get(k) not in (None, "") else np.nan for r in history]

    loss_keys = [k for k in keys if "loss" in k]
    val_keys = [k for k in keys if k.startswith("val_") and "loss" not in k and not k.startswith("val_n_")]
    fig = _figure(11, 3.3)
    axes = fig.subplots(1, 3)
    marker = "o" if len(ep) < 30 else None
    for k in loss_keys:
        axes[0].plot(ep, series(k), marker=marker, label=k)
    axes[0].set_title("loss")
    if "lr" in keys:
        axes[1].plot(ep, series("lr"), marker=marker, color="tab:purple")
        lrs = [v for v in series("lr") if not np.isnan(v)]
        if lrs and min(lrs) > 0 and len(set(lrs)) > 1:
            axes[1].set_yscale("log")
    axes[1].set_title("learning rate")
    for k in val_keys:
        axes[2].plot(ep, series(k), marker=marker, label=k[4:])
    axes[2].set_title("validation metrics")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        if len(ep) <= 12:
            ax.set_xticks(ep)
            ax.set_xlim(min(ep) - 0.5, max(ep) + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            if ax is axes[2]:  # many metrics: legend beside the plot, not over the curves
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
            else:
                ax.legend(fontsize=7)
    return figure_png(fig)


def roc_curves(probs: np.ndarray, targets: np.ndarray, names: list[str]) -> bytes | None:
    """One-vs-rest ROC curves (binary: the positive class only) with their AUCs; None when no class has both labels."""
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    c = probs.shape[1]
    classes = [1] if c == 2 else list(range(c))
    fig = _figure(4.6, 4.2)
    ax = fig.subplots()
    drawn = 0
    for k in classes:
        pos = torch.as_tensor(targets == k).long()
        if pos.sum() == 0 or pos.sum() == len(pos):
            continue
        score = torch.as_tensor(probs[:, k]).float()
        fpr, tpr, _ = binary_roc(score, pos)
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{names[k]} (AUC {float(binary_auroc(score, pos)):.3f})")
        drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC" + (f" — positive class {names[1]}" if c == 2 else " — one vs rest"), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_aspect("equal")
    return figure_png(fig)


def reliability_diagram(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15, title: str = "") -> bytes:
    """Accuracy vs confidence per bin (bars) against the diagonal, with the count per bin below."""
    from glfuse.metrics.calibration import expected_calibration_error, reliability_bins

    b = reliability_bins(probs, targets, n_bins)
    ece = expected_calibration_error(probs, targets, n_bins)
    edges = np.asarray(b["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig = _figure(4.6, 5.0)
    ax, ax2 = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    acc = np.nan_to_num(np.asarray(b["accuracy"], dtype=float))
    conf = np.asarray(b["confidence"], dtype=float)
    ax.bar(centers, acc, width=width * 0.95, color="tab:blue", alpha=0.8, label="accuracy")
    ax.bar(centers, np.nan_to_num(conf) - acc, bottom=acc, width=width * 0.95, color="tab:red", alpha=0.25,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title + ' — ' if title else ''}reliability (ECE {ece:.3f}, {n_bins} bins)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax2.bar(centers, b["count"], width=width * 0.95, color="grey")
    ax2.set_xlabel("confidence (top-class probability)")
    ax2.set_ylabel("count")
    ax2.set_xlim(0, 1)
    return figure_png(fig)


def confusion_png(cm: list[list[int]], names: list[str], title: str) -> bytes:
    """The confusion-matrix figure of :func:`glfuse.metrics.classification.plot_confusion` as PNG bytes."""
    import io

    from glfuse.metrics.classification import plot_confusion

    buf = io.BytesIO()
    plot_confusion(cm, names, title, buf)
    return buf.getvalue()


def metric_distributions(per_method: dict[str, dict[str, np.ndarray]], metrics: list[str]) -> bytes:
    """Box plots of every per-image metric, one box per method."""
    cols = min(4, len(metrics))
    rows = int(np.ceil(len(metrics) / cols))
    fig = _figure(3.0 * cols, 2.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    labels = list(per_method)
    for ax, m in zip(axes, metrics):
        data = [per_method[lab][m][~np.isnan(per_method[lab][m])] for lab in labels]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[len(metrics):]:
        ax.axis("off")
    return figure_png(fig)
