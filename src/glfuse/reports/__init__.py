"""HTML reports for every glfuse run and output folder, and model cards.

:func:`build_report` looks at what a folder holds and writes ``report.html`` (self-contained: inline CSS, images
embedded as base64, no script, no network):

===========================================  ==========================================================================
folder holds                                 report
===========================================  ==========================================================================
``log.json`` / ``log.csv`` (training run)    training curves (loss, lr, validation metrics per epoch), last epoch
``metrics.json`` + ``predictions.csv``       classification: headline table with 95 % CIs, per class, confusion
                                             matrix (counts + row-normalised), ROC, reliability diagram, CAM gallery
``case/`` + ``slice/`` + case predictions    staging: the same at case and slice level, per-case table, CAMs
``compare.csv`` + ``per_image/``             fusion: metric table (best marked, mean ± std, runtime per pair),
                                             per-image distributions, the source/fused grid
``ablation.md`` / ``compare.md``             the ablation / comparison tables in the papers' layout
===========================================  ==========================================================================

``glfuse report DIR`` calls :func:`build_report`; ``classify evaluate``, ``stage evaluate`` and ``fuse compare`` call it
at their end. :func:`write_model_card` writes a model folder's ``README.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glfuse.reports.modelcard import write_model_card
from glfuse.reports.render import render_html, write_page

__all__ = ["build_report", "report_kinds", "render_html", "write_page", "write_model_card"]


def report_kinds(folder: str | Path) -> list[str]:
    """The report kinds :func:`build_report` finds in ``folder`` (in page order)."""
    f = Path(folder)
    kinds = []
    if (f / "log.json").is_file() or (f / "log.csv").is_file():
        kinds.append("training")
    if (f / "metrics.json").is_file() and not (f / "case").is_dir():
        kinds.append("classification")
    if (f / "case" / "metrics.json").is_file() and (f / "slice" / "metrics.json").is_file():
        kinds.append("staging")
    if (f / "compare.csv").is_file() and (f / "per_image").is_dir():
        kinds.append("fusion")
    if (f / "ablation.md").is_file():
        kinds.append("ablation")
    if (f / "classify_compare.md").is_file():
        kinds.append("classify_compare")
    return kinds


_TITLES = {"training": "Training run", "classification": "Classification evaluation", "staging": "Staging evaluation",
           "fusion": "Fusion comparison", "ablation": "Ablation", "classify_compare": "Model comparison"}


def build_report(folder: str | Path, out: str | Path | None = None, *, title: str | None = None,
                 overwrite: bool = True) -> Path:
    """(Re)build ``folder/report.html`` (or ``out``) from the CSV/JSON files in ``folder``; returns its path.

    Raises ``FileNotFoundError`` when ``folder`` holds nothing a report can be made from.
    """
    from glfuse.reports import builders as b

    f = Path(folder)
    if not f.is_dir():
        raise FileNotFoundError(f"{f}: not a folder")
    kinds = report_kinds(f)
    if not kinds:
        raise FileNotFoundError(f"{f}: no glfuse outputs to report on (expected log.json, metrics.json, case/ and "
                                "slice/, compare.csv + per_image/, or ablation.md)")
    sections: list[dict[str, Any]] = []
    for k in kinds:
        if k == "training":
            sections += b.training_sections(f)
        elif k == "classification":
            sections += [s for s in b.classification_sections(f) if not s["title"].startswith("Training")
                         or "training" not in kinds]
        elif k == "staging":
            sections += b.staging_sections(f)
        elif k == "fusion":
            sections += b.fusion_sections(f)
        elif k == "ablation":
            sections += b.markdown_sections(f, "ablation.md", "Ablation tables (paper layout)")
            sections += b.ablation_runs(f)
        elif k == "classify_compare":
            sections += b.markdown_sections(f, "classify_compare.md", "Comparison (HiFuse Table 5 layout)")
            sections += b.ablation_runs(f)
    name = title or f"{' + '.join(_TITLES[k] for k in kinds)} — {f.resolve().name}"
    return write_page(Path(out) if out else f / "report.html", name, sections,
                      lead=f"Folder: {f.resolve()}", overwrite=overwrite)
