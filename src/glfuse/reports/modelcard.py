"""Model cards: a ``README.md`` in a saved model folder, generated from what the run knows.

``write_model_card(model_dir, metrics=None, eval_dir=None)`` reads ``model_dir/config.json`` (architecture, model
arguments, classes, preprocessing, training class counts), the run's ``config.yaml`` and ``summary.json`` (one folder
up) and, when given, evaluation metrics (a dict or an evaluation folder's ``metrics.json`` with bootstrap CIs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_model_card", "PAPERS"]

PAPERS = {
    "hifuse": "HiFuse: Hierarchical multi-scale feature fusion network for medical image classification "
              "(Huo et al., Biomedical Signal Processing and Control 87, 2024)",
    "vdpf": "VDPF: lesion staging from 3-D MRI with global/local slice features (see docs/specs/vdpf.md)",
    "mactfusion": "MACTFusion: lightweight cross transformer for adaptive multimodal medical image fusion "
                  "(IEEE JBHI 2024)",
}

_USE = ("Research use only. Not a medical device and not validated for clinical decisions. The metrics above hold for "
        "the stated data and split; performance on other scanners, sites, populations or preprocessing is unknown. "
        "Check calibration (ECE) before reading probabilities as risks.")


def _paper(arch: str) -> str:
    for key, ref in PAPERS.items():
        if arch.startswith(key):
            return ref
    return "baseline architecture (see `glfuse models`)"


def _metrics_lines(m: dict[str, Any]) -> list[str]:
    ci = m.get("ci") or {}
    lines = ["| metric | value (%) | 95 % CI (%) |", "|---|---|---|"]
    for k in ("acc", "balanced_acc", "f1", "precision", "recall", "auc", "sensitivity_pos", "specificity_pos", "ece"):
        if m.get(k) is None:
            continue
        c = ci.get(k)
        lines.append(f"| {k} | {100 * m[k]:.2f} | " + (f"{100 * c['low']:.2f} – {100 * c['high']:.2f}" if c else "–") + " |")
    info = m.get("ci_info") or {}
    lines.append("")
    lines.append(f"Data: {m.get('data', '?')} (split {m.get('split', '?')}, n = {m.get('n', '?')}); CIs: percentile "
                 f"bootstrap over {info.get('unit', 'samples')}, {info.get('n_boot', '?')} resamples.")
    return lines


def _recipe(run: Path) -> list[str]:
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        return ["(no run config.yaml found next to the model folder)"]
    import yaml

    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    out = []
    for sec in ("data", "train", "loss"):
        if isinstance(cfg.get(sec), dict):
            keys = ", ".join(f"{k}={v}" for k, v in cfg[sec].items() if v not in (None, {}, []))
            out.append(f"- `{sec}`: {keys}")
    summ = run / "summary.json"
    if summ.is_file():
        s = json.loads(summ.read_text())
        out.append(f"- epochs run: {s.get('epochs_run')}; best checkpoint by validation {s.get('monitor')} = "
                   f"{s.get('best_' + str(s.get('monitor')))}")
    return out


def write_model_card(model_dir: str | Path, *, metrics: dict[str, Any] | None = None, eval_dir: str | Path | None = None,
                     overwrite: bool = True) -> Path:
    """Write ``model_dir/README.md``; returns its path.

    Args:
        model_dir: a saved model folder (``config.json`` + weights), e.g. ``RUN/best``.
        metrics: evaluation metrics (as :func:`glfuse.classify.api.evaluate` returns them), optional.
        eval_dir: or an evaluation folder whose ``metrics.json`` (or ``case/metrics.json``) is used.
        overwrite: replace an existing README.md (default True: the card is regenerated as the run learns more).
    """
    from glfuse.checkpoint import atomic_write

    mdir = Path(model_dir)
    cfg_file = mdir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{mdir}: not a model folder (no config.json)")
    cfg = json.loads(cfg_file.read_text())
    out = mdir / "README.md"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    if metrics is None and eval_dir is not None:
        for cand in (Path(eval_dir) / "metrics.json", Path(eval_dir) / "case" / "metrics.json"):
            if cand.is_file():
                metrics = json.loads(cand.read_text())
                break
    arch = str(cfg.get("arch", "?"))
    classes = cfg.get("class_names") or cfg.get("classes")
    lines = [f"# Model card — {arch}", "", "## Architecture", "", f"- `{arch}` — {_paper(arch)}",
             f"- arguments: `{json.dumps(cfg.get('model_args', {}))}`", f"- task: {cfg.get('task', 'classification')}"]
    if classes:
        lines.append(f"- classes: {', '.join(map(str, classes))}")
    if cfg.get("train_counts"):
        lines.append(f"- training images per class: {cfg['train_counts']}")
    if cfg.get("temperature"):
        lines.append(f"- temperature scaling: T = {cfg['temperature']:.4f} (applied by predict)")
    lines += ["", "## Preprocessing", "", f"`{json.dumps(cfg.get('preprocessing', {}))}`", "",
              "## Data, split and recipe", "", *_recipe(mdir.parent), "", "## Metrics", ""]
    lines += _metrics_lines(metrics) if metrics else ["Not evaluated yet: run `glfuse classify evaluate` / "
                                                      "`glfuse stage evaluate` on this folder."]
    lines += ["", "## Intended use and limitations", "", _USE, ""]
    atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return out
