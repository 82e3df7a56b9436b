"""Metric tables for fused folders and method comparisons (the ``glfuse fuse metrics`` / ``compare`` commands).

Every output states the metric conventions (:func:`glfuse.metrics.fusion.describe_conventions`) and that colour images
(fused or sources) are evaluated on their BT.601 Y channel (Y = 0.299 R + 0.587 G + 0.114 B on 0–255).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from glfuse.files import all_or_nothing, make_dir, save_json, write_csv, write_text

__all__ = [
    "compare_methods",
    "evaluate_fused_folder",
    "markdown_table",
    "parse_methods",
    "save_grid",
    "metric_output_paths",
    "write_metric_outputs",
]

COLOUR_NOTE = ("Colour images (fused or sources) are evaluated on their BT.601 Y channel "
               "(Y = 0.299 R + 0.587 G + 0.114 B, 0-255); grey images as they are.")


def _fmt(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    a = abs(v)
    if a >= 1000:
        return f"{v:.1f}"
    if a != 0 and a < 1e-3:
        return f"{v:.4g}"
    return f"{v:.{digits}f}"


def evaluate_fused_folder(fused_dir: str | Path, a_dir: str | Path, b_dir: str | Path, *,
                          metrics: list[str] | None = None, strict: bool = True, progress: bool = True,
                          **conventions: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-image metrics and ``{"n", "mean", "std", "conventions", "notes"}`` (see
    :func:`glfuse.fusion.io_metrics.evaluate_folder`)."""
    from glfuse.fusion.io_metrics import evaluate_folder

    for d in (fused_dir, a_dir, b_dir):
        if not Path(d).is_dir():
            raise FileNotFoundError(f"{d}: folder not found")
    return evaluate_folder(fused_dir, a_dir, b_dir, metrics=metrics, strict=strict, progress=progress, **conventions)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _conventions_md(conv: dict[str, Any]) -> str:
    lines = ["## Conventions", "", COLOUR_NOTE, ""]
    for k, v in conv.items():
        lines.append(f"- `{k}`: {v}")
    return "\n".join(lines) + "\n"


METRIC_OUTPUTS = {"per_image": "per_image.csv", "summary_csv": "summary.csv", "summary_md": "summary.md",
                  "conventions": "conventions.json"}


def metric_output_paths(out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """The files :func:`write_metric_outputs` writes into ``out_dir``; existing ones are an error unless ``overwrite``
    (call it before evaluating, so nothing is computed for nothing)."""
    paths = {k: Path(out_dir) / f for k, f in METRIC_OUTPUTS.items()}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: a metrics report exists already ({', '.join(existing)}); pass --overwrite "
                              "(overwrite=True) to replace it")
    return paths


def write_metric_outputs(out_dir: str | Path, rows: list[dict[str, Any]], summary: dict[str, Any], *,
                         title: str = "Fusion metrics", sources: dict[str, str] | None = None,
                         overwrite: bool = False) -> dict[str, Path]:
    """Write ``per_image.csv``, ``summary.csv`` (metric, mean, std, n), ``summary.md`` and ``conventions.json``;
    an existing report is replaced only with ``overwrite=True``."""
    paths = metric_output_paths(out_dir, overwrite=overwrite)
    with all_or_nothing(paths.values()):  # the report is written whole or not at all (e.g. disk full)
        write_csv(paths["per_image"], rows)
        names = list(summary["mean"])
        write_csv(paths["summary_csv"], [{"metric": k, "mean": summary["mean"][k], "std": summary["std"][k],
                                          "n": summary["n"]} for k in names])
        md = [f"# {title}", ""]
        for k, v in (sources or {}).items():
            md.append(f"- {k}: `{v}`")
        md += [f"- images: {summary['n']} (mean ± population std)", ""]
        md.append(markdown_table(["metric", "mean ± std"],
                                 [[k, f"{_fmt(summary['mean'][k])} ± {_fmt(summary['std'][k])}"] for k in names]))
        notes = summary.get("notes") or []
        if notes:
            md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
        md.append(_conventions_md(summary["conventions"]))
        write_text(paths["summary_md"], "\n".join(md))
        save_json({"colour": COLOUR_NOTE, "conventions": summary["conventions"], "sources": sources or {}, "notes": notes},
                  paths["conventions"])
    return paths


def parse_methods(spec: str) -> list[tuple[str, str]]:
    """``"mactfusion=DIR,average,max"`` → ``[("mactfusion", "DIR"), ("average", "average"), ("max", "max")]``.

    An entry is ``METHOD`` or ``LABEL=METHOD`` where METHOD is a classical name, a model folder, or ``fused:DIR``
    (a folder of already fused images from any method)."""
    out: list[tuple[str, str]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        label, _, target = item.partition("=")
        label, target = (label.strip(), target.strip()) if target else (item, item)
        if not label or not target:
            raise ValueError(f"--methods entry {item!r}: expected METHOD or LABEL=METHOD")
        if any(label == x for x, _ in out):
            raise ValueError(f"--methods: label {label!r} given twice")
        out.append((label, target))
    if not out:
        raise ValueError("--methods is empty")
    return out


def _plan_methods(methods: list[tuple[str, str]], pairs: list, out_dir: Path, metrics: list[str] | None, *,
                  overwrite: bool, reuse: bool, device: str | None) -> dict[str, tuple[Path, Any]]:
    """Check every method, metric name and output folder before any pair is fused: ``{label: (fused folder, Fuser or
    None when existing images are used)}``. An unknown method, a missing folder or an output collision fails here."""
    from glfuse.data.image_io import images_by_stem
    from glfuse.fusion.api import load_fusion_model
    from glfuse.metrics.fusion import METRIC_NAMES

    bad = [m for m in metrics or () if m not in METRIC_NAMES]
    if bad:
        raise ValueError(f"--metrics: unknown metric(s) {', '.join(bad)}; known: {', '.join(METRIC_NAMES)}")
    plan: dict[str, tuple[Path, Any]] = {}
    for label, target in methods:
        if target.startswith("fused:"):
            d = Path(target[len("fused:"):])
            if not d.is_dir():
                raise FileNotFoundError(f"{d}: fused folder for method {label!r} not found")
            plan[label] = (d, None)
            continue
        try:
            fuser = load_fusion_model(target, device=device)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise ValueError(f"--methods {label}={target}: {e}") from e
        d = out_dir / "fused" / label
        have = images_by_stem(d) if d.is_dir() else {}
        if reuse and not overwrite and have and all(s in have for s, _, _ in pairs):
            plan[label] = (d, None)
        elif have and not overwrite:
            raise FileExistsError(f"{d} holds fused images already; pass --overwrite to re-fuse or --reuse to keep a "
                                  "complete folder")
        else:
            plan[label] = (d, fuser)
    return plan


def compare_methods(
    a_dir: str | Path,
    b_dir: str | Path,
    methods: list[tuple[str, str]],
    out_dir: str | Path,
    *,
    a_is: str = "mri",
    metrics: list[str] | None = None,
    overwrite: bool = False,
    reuse: bool = False,
    resize: bool = False,
    grid_pairs: int = 3,
    progress: bool = True,
    device: str | None = None,
    **conventions: Any,
) -> dict[str, Any]:
    """Fuse ``a_dir``/``b_dir`` with every method into ``out_dir/fused/<label>/``, evaluate each, and write
    ``compare.csv`` / ``compare.md`` (rows = methods, columns = metrics, mean ± std), ``per_image/<label>.csv``,
    ``conventions.json``, ``grid.png`` (sources + each method for ``grid_pairs`` pairs) and ``report.html``.

    ``reuse=True`` keeps a method's existing complete fused folder instead of refusing (``overwrite`` re-fuses)."""
    from glfuse.data.image_io import pair_folders
    from glfuse.fusion.api import fuse_folder

    out_dir = Path(out_dir)
    pairs = pair_folders(a_dir, b_dir)
    plan = _plan_methods(methods, pairs, out_dir, metrics, overwrite=overwrite, reuse=reuse, device=device)
    fused_dirs: dict[str, Path] = {}
    notes: dict[str, str] = {}
    for label, target in methods:
        d, fuser = plan[label]
        if fuser is None:
            fused_dirs[label] = d
            notes[label] = f"pre-fused images from {d}" if target.startswith("fused:") else \
                f"{target} (reused existing outputs in {d})"
            continue
        fuse_folder(fuser, a_dir, b_dir, d, a_is=a_is, overwrite=overwrite, resize=resize, progress=progress)
        notes[label] = target
        fused_dirs[label] = d

    results: dict[str, dict[str, Any]] = {}
    make_dir(out_dir / "per_image")
    for label, d in fused_dirs.items():
        rows, summary = evaluate_fused_folder(d, a_dir, b_dir, metrics=metrics, progress=progress, **conventions)
        write_csv(out_dir / "per_image" / f"{label}.csv", rows)
        results[label] = summary
    names = list(next(iter(results.values()))["mean"])
    csv_rows = []
    for label, s in results.items():
        row: dict[str, Any] = {"method": label, "n": s["n"]}
        for k in names:
            row[k] = s["mean"][k]
            row[f"{k}_std"] = s["std"][k]
        csv_rows.append(row)
    write_csv(out_dir / "compare.csv", csv_rows)
    md = ["# Fusion comparison", "", f"- A (MRI side): `{a_dir}`", f"- B: `{b_dir}`", f"- pairs: {len(pairs)}",
          "- values: mean ± population std over the pairs", ""]
    md += [f"- **{label}**: {notes[label]}" for label in results]
    md += ["", markdown_table(["method", *names],
                              [[label, *[f"{_fmt(s['mean'][k])} ± {_fmt(s['std'][k])}" for k in names]]
                               for label, s in results.items()])]
    conv = next(iter(results.values()))["conventions"]
    data_notes = [f"{label}: {n}" for label, s in results.items() for n in s.get("notes", [])]
    if data_notes:
        md += ["## Notes", "", *[f"- {n}" for n in data_notes], ""]
    md.append(_conventions_md(conv))
    write_text(out_dir / "compare.md", "\n".join(md))
    save_json({"colour": COLOUR_NOTE, "conventions": conv, "methods": notes}, out_dir / "conventions.json")
    grid = None
    if grid_pairs > 0:
        grid = save_grid(out_dir / "grid.png", pairs[:grid_pairs], fused_dirs)
    from glfuse.reports import build_report

    report = build_report(out_dir)
    return {"report": report, "results": results, "methods": notes, "grid": grid, "table_md": out_dir / "compare.md",
            "table_csv": out_dir / "compare.csv"}


def save_grid(path: str | Path, pairs: list[tuple[str, Path, Path]], fused_dirs: dict[str, Path]) -> Path:
    """PNG grid: one row per pair; columns A, B, then each method's fused image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glfuse.data.image_io import images_by_stem, read_image

    cols = 2 + len(fused_dirs)
    fig, axes = plt.subplots(len(pairs), cols, figsize=(2.2 * cols, 2.3 * len(pairs)), squeeze=False)
    listings = {k: images_by_stem(d) for k, d in fused_dirs.items()}
    for r, (stem, pa, pb) in enumerate(pairs):
        panels = [("A " + pa.parent.name, pa), ("B " + pb.parent.name, pb)]
        panels += [(label, listings[label].get(stem)) for label in fused_dirs]
        for c, (title, p) in enumerate(panels):
            ax = axes[r, c]
            ax.axis("off")
            if p is None:
                ax.set_title(f"{title}\n(missing)", fontsize=8)
                continue
            img, colour = read_image(p)
            ax.imshow(img, cmap=None if colour else "gray", vmin=0, vmax=1)
            ax.set_title(title if r == 0 else "", fontsize=8)
        axes[r, 0].text(-0.08, 0.5, stem, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_arrays(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Column arrays of per-image rows (helper for callers)."""
    keys = [k for k in rows[0] if k != "image"]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
