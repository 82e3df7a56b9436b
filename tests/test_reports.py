"""Report renderer, ``glfuse report`` and model cards on small output folders of every kind."""

from __future__ import annotations

import json
import re

import pytest
from _report_fixtures import ablation, classification_eval, fusion_compare, staging_eval, training_run

from glfuse.cli.main import main
from glfuse.reports import build_report, report_kinds, write_model_card
from glfuse.reports.render import markdown_to_html, render_html


def _self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not reach the network"
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert src.startswith("data:image/png;base64,") and len(src) > 100


def test_classification_report(tmp_path):
    folder = classification_eval(tmp_path / "eval")
    assert report_kinds(folder) == ["classification"]
    page = build_report(folder).read_text()
    _self_contained(page)
    m = json.loads((folder / "metrics.json").read_text())
    lo, hi = m["ci"]["acc"]["low"], m["ci"]["acc"]["high"]
    assert f"[{100 * lo:.2f}, {100 * hi:.2f}]" in page  # the headline CI, as computed
    for needle in ("Balanced accuracy", "Sensitivity (positive class pos)", "Expected calibration error",
                   "Training — run", "true neg · predicted pos", "3×64×64"):
        assert needle in page, needle
    assert page.count("<img") >= 5  # curves, confusion, ROC, reliability, one CAM


def test_staging_report(tmp_path):
    folder = staging_eval(tmp_path / "st")
    page = build_report(folder).read_text()
    _self_contained(page)
    assert "Case level" in page and "Slice level" in page and "slices used" in page
    assert page.count("<tr>") > 12  # per-case rows are there
    assert "case11" in page


def test_fusion_report_marks_best(tmp_path):
    folder = fusion_compare(tmp_path / "fc")
    page = build_report(folder).read_text()
    _self_contained(page)
    rows: dict[str, str] = {}
    for m in re.finditer(r"<tr>\s*<td>(EN|MSE|runtime \(s / pair\))</td>.*?</tr>", page, re.S):
        rows.setdefault(m.group(1), m.group(0))  # the metric table comes first (then the conventions table)
    # EN: higher is better -> max (6.2) marked; MSE: lower is better -> average (11) marked
    assert re.search(r'class="best">▲ 6\.2000', rows["EN"]) and "▲ 5.1000" not in rows["EN"]
    assert re.search(r'class="best">▲ 11\.0000', rows["MSE"])
    assert "0.6000" in rows["runtime (s / pair)"]  # mean seconds per pair from fusion.json


def test_training_and_ablation_reports(tmp_path):
    run = training_run(tmp_path / "run")
    page = build_report(run).read_text()
    assert "Best checkpoint chosen on validation acc" in page and page.count("<img") == 1
    ab = ablation(tmp_path / "ab")
    page = build_report(ab).read_text()
    assert "<th>Acc (%)</th>" in page and "vdpf-no-cross" in page and "Training curves per variant" in page


def test_markdown_subset():
    html = markdown_to_html("# T\n\n- a `x`\n- **b**\n\n| h1 | h2 |\n|---|---|\n| 1 | <2> |\n")
    assert "<h3>T</h3>" in html and "<li>a <code>x</code></li>" in html and "<strong>b</strong>" in html
    assert "<td>&lt;2&gt;</td>" in html and "<th>h1</th>" in html


def test_text_is_escaped():
    page = render_html("<t>", [{"title": "s", "blocks": [{"kind": "text", "text": "<b>x</b>"}]}])
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_cli_report(tmp_path, capsys):
    folder = fusion_compare(tmp_path / "fc")
    assert main(["report", str(folder), "--output", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").is_file() and "fusion" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "no glfuse outputs" in capsys.readouterr().err


def test_model_card(tmp_path):
    from glfuse.checkpoint import save_json

    mdir = tmp_path / "run" / "best"
    mdir.mkdir(parents=True)
    save_json({"arch": "hifuse_tiny", "model_args": {"num_classes": 2}, "class_names": ["neg", "pos"],
               "preprocessing": {"img_size": 64}, "train_counts": {"neg": 10, "pos": 5}}, mdir / "config.json")
    (tmp_path / "run" / "config.yaml").write_text("data:\n  img_size: 64\ntrain:\n  epochs: 2\n")
    ev = classification_eval(tmp_path / "eval", with_run=False)
    card = write_model_card(mdir, eval_dir=ev).read_text()
    m = json.loads((ev / "metrics.json").read_text())
    assert "HiFuse" in card and "neg, pos" in card and "`train`: epochs=2" in card
    assert f"{100 * m['ci']['acc']['low']:.2f}" in card and "Research use only" in card
    with pytest.raises(FileExistsError):
        write_model_card(mdir, overwrite=False)
