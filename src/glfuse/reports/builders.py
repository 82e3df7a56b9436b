"""Report sections built from the files a glfuse command leaves in its folder (so a report can always be rebuilt).

Each ``*_sections(folder)`` returns ``[{"title", "blocks"}]`` for :func:`glfuse.reports.render.write_page`:

* :func:`training_sections` — ``log.json`` / ``log.csv`` (+ ``summary.json``) of a training run;
* :func:`classification_sections` — ``metrics.json`` (with ``ci``), ``per_class.csv``, ``predictions.csv``, ``cam/``;
* :func:`staging_sections` — ``case/`` and ``slice/`` reports, ``case_predictions.csv``, ``slice_predictions.csv``;
* :func:`fusion_sections` — ``compare.csv``, ``per_image/<method>.csv``, ``fused/<method>/fusion.json``, ``grid.png``;
* :func:`markdown_sections` — ``ablation.md`` / ``compare.md`` style tables in the papers' layout.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from glfuse.reports import figures
from glfuse.reports.render import figure_block, markdown_to_html, table_block, text_block

__all__ = ["training_sections", "classification_sections", "staging_sections", "fusion_sections", "ablation_runs",
           "markdown_sections", "headline_table", "read_csv"]

HEADLINE = (("acc", "Accuracy"), ("balanced_acc", "Balanced accuracy"), ("f1", "F1 (macro)"),
            ("precision", "Precision (macro)"), ("recall", "Recall / sensitivity (macro)"),
            ("specificity", "Specificity (macro)"), ("auc", "ROC AUC"), ("sensitivity_pos", "Sensitivity (positive class)"),
            ("specificity_pos", "Specificity (positive class)"), ("ece", "Expected calibration error (15 bins)"))
LOWER_IS_BETTER = {"ece", "MSE", "CE", "runtime_s", "s_per_pair"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _pct(v: Any) -> str:
    v = _num(v)
    return "–" if math.isnan(v) else f"{100 * v:.2f}"


def _load_history(run: Path) -> list[dict[str, Any]] | None:
    if (run / "log.json").is_file():
        return json.loads((run / "log.json").read_text())
    if (run / "log.csv").is_file():
        return [{k: _num(v) for k, v in r.items()} for r in read_csv(run / "log.csv")]
    return None


def training_sections(run: Path) -> list[dict[str, Any]]:
    """Training curves and the last epoch's numbers of a run folder (empty when it has no log)."""
    hist = _load_history(run)
    if not hist:
        return []
    summ = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    blocks = [figure_block(figures.training_curves(hist), "Per epoch: training loss, the learning rate the epoch "
                                                           "trained with, validation metrics.")]
    keys = [k for k in hist[-1] if k != "epoch"]
    rows = [[k, f"{_num(hist[-1][k]):.4g}"] for k in keys]
    cap = f"Epoch {hist[-1].get('epoch', len(hist))} of {len(hist)} logged."
    if summ.get("monitor"):
        cap += f" Best checkpoint chosen on validation {summ['monitor']} = {_num(summ.get('best_' + summ['monitor'])):.4f}."
    blocks.append(table_block(["last epoch", "value"], rows, cap))
    return [{"title": f"Training — {run.name}", "blocks": blocks}]


def headline_table(m: dict[str, Any], caption: str = "") -> dict[str, Any]:
    """Headline metrics (%) with their bootstrap 95 % CIs (``m["ci"]``)."""
    ci = m.get("ci") or {}
    rows = []
    for k, label in HEADLINE:
        if m.get(k) is None and k not in ci:
            continue
        c = ci.get(k)
        interval = f"[{_pct(c['low'])}, {_pct(c['high'])}]" if c else "–"
        if k == "sensitivity_pos" and m.get("positive_class"):
            label = f"Sensitivity (positive class {m['positive_class']})"
        if k == "specificity_pos" and m.get("positive_class"):
            label = f"Specificity (positive class {m['positive_class']})"
        rows.append([label, _pct(m.get(k)), interval])
    cis = m.get("ci_info") or {}
    cap = caption or (f"Values in %. 95 % CI: percentile bootstrap, {cis.get('n_boot', '?')} resamples of "
                      f"{cis.get('unit', 'samples')} (seed {cis.get('seed', 0)}); n = {m.get('n')}.")
    return table_block(["metric", "value (%)", "95 % CI (%)"], rows, cap)


def _per_class_table(folder: Path, m: dict[str, Any]) -> dict[str, Any] | None:
    pc = m.get("per_class") or {}
    if not pc:
        return None
    rows = [[name, *(_pct(r.get(k)) for k in ("precision", "recall", "f1", "specificity", "auc")), r.get("support")]
            for name, r in pc.items()]
    return table_block(["class", "precision", "recall (sensitivity)", "F1", "specificity", "AUC (one vs rest)",
                        "support"], rows, "Per class, in %.")


def read_probs(path: Path, names: list[str], target_col: str) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """(probs [N, C], targets [N], rows) from a predictions CSV with ``prob_<class>`` columns."""
    rows = read_csv(path)
    probs = np.array([[_num(r[f"prob_{n}"]) for n in names] for r in rows], dtype=np.float64)
    t = [r[target_col] for r in rows]
    targets = np.array([names.index(v) if v in names else int(v) for v in t], dtype=np.int64)
    return probs.reshape(len(rows), len(names)), targets, rows


def _eval_figures(m: dict[str, Any], probs: np.ndarray | None, targets: np.ndarray | None,
                  level: str = "") -> list[dict[str, Any]]:
    names = list(m["class_names"])
    blocks = [figure_block(figures.confusion_png(m["confusion_matrix"], names, f"{level} confusion matrix".strip()),
                           "Rows: true class; columns: predicted class. Left: counts; right: row-normalised.",
                           width=min(900, 640 + 40 * len(names)))]
    if probs is not None and len(probs):
        roc = figures.roc_curves(probs, targets, names)
        if roc is not None:
            blocks.append(figure_block(roc, "ROC curves from the predicted probabilities.", width=480))
        blocks.append(figure_block(figures.reliability_diagram(probs, targets, title=level),
                                   "Reliability diagram: a calibrated model's bars follow the diagonal.", width=480))
    return blocks


def _describe(m: dict[str, Any]) -> str:
    bits = []
    for k, label in (("arch", "model"), ("data", "data"), ("split", "split"), ("model_dir", "model folder"),
                     ("model", "model folder"), ("cache", "slice cache"), ("cases", "cases")):
        if m.get(k):
            bits.append(f"{label}: {m[k]}")
    if m.get("params") is not None:
        bits.append(f"parameters: {m['params'] / 1e6:.2f} M")
    if m.get("gflops") is not None:
        bits.append(f"GFLOPs: {m['gflops']:.3f} at input {m.get('flops_input', '?')}")
    if m.get("temperature"):
        bits.append(f"temperature scaling T = {m['temperature']:.3f} applied (fitted on {m.get('temperature_split', 'val')}; "
                    f"ECE before scaling {_pct(m.get('ece_uncalibrated'))} %)")
    return "; ".join(bits) + "."


def _cam_gallery(folder: Path) -> list[dict[str, Any]]:
    idx = folder / "cam" / "index.json"
    if idx.is_file():
        items = json.loads(idx.read_text())
    else:
        items = [{"file": p.name, "caption": p.stem} for p in sorted((folder / "cam").glob("*.png"))[:12]]
    items = [{"png": (folder / "cam" / it["file"]).read_bytes(), "caption": it["caption"]}
             for it in items if (folder / "cam" / it["file"]).is_file()]
    return [{"kind": "gallery", "items": items}] if items else []


def classification_sections(folder: Path) -> list[dict[str, Any]]:
    """Sections of a ``classify evaluate`` folder (plus its run's training curves when the run folder is known)."""
    m = json.loads((folder / "metrics.json").read_text())
    names = list(m["class_names"])
    probs = targets = None
    if (folder / "predictions.csv").is_file():
        probs, targets, _ = read_probs(folder / "predictions.csv", names, "target")
    out = []
    run = Path(m["model_dir"]).parent if m.get("model_dir") else None
    if run is not None and run.is_dir():
        out += training_sections(run)
    blocks = [text_block(_describe(m)), headline_table(m)]
    pc = _per_class_table(folder, m)
    if pc:
        blocks.append(pc)
    out.append({"title": "Evaluation", "blocks": blocks})
    out.append({"title": "Confusion matrix, ROC and calibration", "blocks": _eval_figures(m, probs, targets)})
    gallery = _cam_gallery(folder)
    if gallery:
        out.append({"title": "Grad-CAM: most confident mistakes and most confident correct predictions",
                    "blocks": gallery})
    return out


def staging_sections(folder: Path) -> list[dict[str, Any]]:
    """Sections of a ``stage evaluate`` folder: case level, slice level, per-case table, CAMs."""
    out = []
    for level, csv_name, tcol in (("case", "case_predictions.csv", "label"), ("slice", "slice_predictions.csv", "label")):
        m = json.loads((folder / level / "metrics.json").read_text())
        names = list(m["class_names"])
        probs = targets = None
        if (folder / csv_name).is_file():
            probs, targets, _ = read_probs(folder / csv_name, names, tcol)
        blocks = [headline_table(m)]
        pc = _per_class_table(folder, m)
        if pc:
            blocks.append(pc)
        blocks += _eval_figures(m, probs, targets, level)
        if level == "case":
            blocks.insert(0, text_block(_describe(m) + " Case probabilities = mean slice softmax."))
        out.append({"title": f"{level.capitalize()} level", "blocks": blocks})
    if (folder / "case_predictions.csv").is_file():
        rows = read_csv(folder / "case_predictions.csv")
        hdr = list(rows[0]) if rows else []
        body = [[r[h] if not h.startswith("prob_") else f"{_num(r[h]):.3f}" for h in hdr] for r in rows]
        out.append({"title": "Per case", "blocks": [table_block(
            [h.replace("label", "true class").replace("n_slices", "slices used") for h in hdr], body,
            "True class, predicted class, class probabilities (mean slice softmax) and the slices used per case.")]})
    gallery = _cam_gallery(folder)
    if gallery:
        out.append({"title": "Key-slice global / local CAMs", "blocks": gallery})
    return out


def _runtime(folder: Path, label: str) -> float:
    fj = folder / "fused" / label / "fusion.json"
    if not fj.is_file():
        return math.nan
    info = json.loads(fj.read_text())
    secs = [_num(r.get("seconds")) for r in info.get("images", info.get("records", [])) if isinstance(r, dict)]
    secs = [s for s in secs if not math.isnan(s)]
    if secs:
        return float(np.mean(secs))
    return _num(info.get("seconds_per_pair", math.nan))


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "–"
    a = abs(v)
    return f"{v:.1f}" if a >= 1000 else (f"{v:.3g}" if a and a < 1e-3 else f"{v:.4f}")


def fusion_sections(folder: Path) -> list[dict[str, Any]]:
    """Sections of a ``fuse compare`` folder: metric table (best marked), distributions, the source/fused grid."""
    rows = read_csv(folder / "compare.csv")
    metrics = [k for k in rows[0] if k not in ("method", "n") and not k.endswith("_std")]
    labels = [r["method"] for r in rows]
    runtimes = [_runtime(folder, lab) for lab in labels]
    # rows = metrics, columns = methods: readable at any number of metrics
    values = [[_num(r[k]) for r in rows] for k in metrics] + [runtimes]
    names = [*metrics, "s_per_pair"]
    body = [[k, "↓" if k in LOWER_IS_BETTER else "↑",
             *[f"{_fmt(_num(r[k]))} ± {_fmt(_num(r.get(k + '_std')))}" for r in rows]] for k in metrics]
    body.append(["runtime (s / pair)", "↓", *[_fmt(t) for t in runtimes]])
    best = set()
    for i, (k, vals) in enumerate(zip(names, values)):
        v = np.array(vals, dtype=float)
        if len(v) > 1 and not np.all(np.isnan(v)):
            target = np.nanmin(v) if k in LOWER_IS_BETTER else np.nanmax(v)
            best |= {(i, j + 2) for j, x in enumerate(v) if x == target}
    conv = json.loads((folder / "conventions.json").read_text()) if (folder / "conventions.json").is_file() else {}
    notes = {k: v for k, v in conv.get("methods", {}).items() if v != k}
    cap = (f"Mean ± population std over {rows[0].get('n', '?')} image pairs; ▲ best per row (↑ higher is better, "
           "↓ lower). Runtime: mean seconds per pair of the fusion step, first pair (model load / warm-up) included; "
           "reused or pre-fused folders: –. "
           + (conv.get("colour") or ""))
    blocks = [table_block(["metric", "", *labels], body, cap, best)]
    if notes:
        blocks.append(text_block("\n\n".join(f"{k}: {v}" for k, v in notes.items())))
    desc = (conv.get("conventions") or {}).get("description") or {}
    if desc:
        settings = {k: v for k, v in conv["conventions"].items() if k not in ("description", "matches_reference_evaluator")}
        blocks.append(table_block(["metric / setting", "definition"], [[k, v] for k, v in desc.items()],
                                  "Metric conventions. Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
                                  left=True))
    out = [{"title": "Fusion metrics", "blocks": blocks}]
    per = {}
    for lab in labels:
        p = folder / "per_image" / f"{lab}.csv"
        if p.is_file():
            pr = read_csv(p)
            per[lab] = {m: np.array([_num(r.get(m)) for r in pr]) for m in metrics}
    if per:
        out.append({"title": "Per-image metric distributions", "blocks": [figure_block(
            figures.metric_distributions(per, metrics), "One box per method (median, quartiles; triangle = mean).")]})
    if (folder / "grid.png").is_file():
        out.append({"title": "Sources and fused images", "blocks": [figure_block(
            (folder / "grid.png").read_bytes(), "Rows: image pairs; columns: source A, source B, each method.")]})
    return out


def markdown_sections(folder: Path, name: str, title: str) -> list[dict[str, Any]]:
    """A Markdown table file glfuse wrote (``ablation.md``, ``compare.md``, ``table.md``) rendered as HTML."""
    p = folder / name
    if not p.is_file():
        return []
    return [{"title": title, "blocks": [{"kind": "html", "html": markdown_to_html(p.read_text())}]}]


def ablation_runs(folder: Path) -> list[dict[str, Any]]:
    """Training curves of every variant run folder below an ablation / comparison folder."""
    blocks = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        hist = _load_history(run)
        if hist:
            blocks.append(figure_block(figures.training_curves(hist), f"{run.name}: loss, lr, validation metrics"))
    return [{"title": "Training curves per variant", "blocks": blocks}] if blocks else []
