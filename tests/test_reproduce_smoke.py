"""benchmarks/reproduce.py: the whole reproduction sequence in --smoke mode on real data (tiny sizes, CPU), its budget
stop / resume bookkeeping, and its bootstrap CIs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"


@pytest.fixture(scope="module")
def repro():
    spec = importlib.util.spec_from_file_location("glfuse_reproduce", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["glfuse_reproduce"] = mod
    spec.loader.exec_module(mod)
    return mod


def _shared() -> Path:
    from conftest import shared_path

    return shared_path()


def test_bootstrap_ci_brackets_the_point_estimates(repro):
    from glfuse.metrics.classification import classification_metrics

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 3, 200))
    ci = repro.bootstrap_ci(y.tolist(), pred.tolist(), 3, n_boot=500)
    m = classification_metrics(torch.nn.functional.one_hot(torch.as_tensor(pred), 3).float(), torch.as_tensor(y))
    for k in ("acc", "f1", "precision", "recall"):
        lo, hi = ci[k]
        assert lo < m[k] < hi and hi - lo < 0.2, (k, lo, m[k], hi)
    narrow = repro.bootstrap_ci((y.tolist() * 10), (pred.tolist() * 10), 3, n_boot=500)
    assert narrow["acc"][1] - narrow["acc"][0] < ci["acc"][1] - ci["acc"][0]  # more units, narrower interval
    assert repro.bootstrap_ci([0, 1, 1, 0], [0, 1, 1, 0], 2)["f1"] == [1.0, 1.0]


def test_smoke_sequence_writes_every_table_and_skips_done_runs_next_window(repro, tmp_path):
    shared = _shared()
    out = tmp_path / "repro"
    args = ["--smoke", "--out", str(out), "--shared", str(shared), "--isolate", "no", "--budget-min", "30"]
    assert repro.main(args) == 0
    state = json.loads((out / "state.json").read_text())
    runs = state["runs"]
    assert set(runs) == {"hifuse/hifuse_tiny", "vdpf/vdpf", "vdpf/vdpf_cat", "vdpf/resnet50", "mactfusion/scratch"}
    assert all(r["status"] == "done" for r in runs.values()), {k: r.get("reason") for k, r in runs.items()}
    # the summary carries the per-run reports' numbers
    report = json.loads((out / "hifuse" / "hifuse_tiny" / "test" / "metrics.json").read_text())
    assert runs["hifuse/hifuse_tiny"]["eval"]["metrics"]["acc"] == pytest.approx(report["acc"])
    case = json.loads((out / "vdpf" / "vdpf_cat" / "test" / "case" / "metrics.json").read_text())
    assert runs["vdpf/vdpf_cat"]["eval"]["metrics"]["f1"] == pytest.approx(case["f1"])
    assert case["n"] == state["stages"]["vdpf_data"]["n_test"]  # case level: one row per test case
    fusion = runs["mactfusion/scratch"]["eval"]
    assert set(fusion) == {"scratch", "official"} and fusion["official"]["n"] == 2
    assert fusion["official"]["mean"]["Qabf"] > 0.4  # the official checkpoint fuses; 4 steps from scratch do not
    rows = state["stages"]["throughput"]["rows"]
    assert {r["model"] for r in rows} == {"hifuse_tiny", "vdpf", "mactfusion"} and len(rows) == 12
    assert all("img_s" in r or "error" in r for r in rows)
    md = (out / "summary.md").read_text()
    for needle in ("(a) HiFuse", "| hifuse_tiny | 1/1 (done)", "74.73", "| vdpf_cat |", "| resnet50 |",
                   "official checkpoint (reference evaluator", "(d) GPU throughput", "SMOKE"):
        assert needle in md, needle
    assert json.loads((out / "summary.json").read_text())["state"]["runs"].keys() == runs.keys()

    log = out / "hifuse" / "hifuse_tiny" / "log.json"
    before = log.stat().st_mtime_ns
    assert repro.main([*args, "--stages", "hifuse"]) == 0  # next window: nothing left to train
    state2 = json.loads((out / "state.json").read_text())
    assert len(state2["windows"]) == 2 and log.stat().st_mtime_ns == before
    assert state2["runs"]["hifuse/hifuse_tiny"]["status"] == "done"


def test_budget_stop_then_next_windows_finish_and_resume(repro, tmp_path):
    """A training process is stopped when the window's budget is spent; the next window trains it; a run left
    partial resumes from its last/ checkpoint (train(resume=True)), not from scratch."""
    shared = _shared()
    out = tmp_path / "repro"
    base = ["--smoke", "--out", str(out), "--shared", str(shared), "--isolate", "yes", "--stages", "hifuse"]
    assert repro.main([*base, "--budget-min", "0.02"]) == 0  # 1.2 s: the job is stopped before its first epoch
    rec = json.loads((out / "state.json").read_text())["runs"]["hifuse/hifuse_tiny"]
    assert rec["status"] in ("pending", "partial") and "stopped at this window's budget" in rec["reason"]
    assert not (out / "hifuse" / "hifuse_tiny" / "best").exists()

    assert repro.main([*base, "--budget-min", "20"]) == 0
    state = json.loads((out / "state.json").read_text())
    rec = state["runs"]["hifuse/hifuse_tiny"]
    assert rec["status"] == "done" and rec["epochs_done"] == 1 and rec["eval"]["metrics"]["n"] == 16

    rec.update(status="partial", trained=False)  # as if the budget had stopped it after its epoch
    (out / "state.json").write_text(json.dumps(state))
    log = out / "hifuse" / "hifuse_tiny" / "log.json"
    before = log.stat().st_mtime_ns
    assert repro.main([*base, "--budget-min", "20"]) == 0
    rec = json.loads((out / "state.json").read_text())["runs"]["hifuse/hifuse_tiny"]
    assert rec["status"] == "done" and rec["epochs_done"] == 1
    assert log.stat().st_mtime_ns == before  # resumed after its last epoch: nothing retrained
    assert "resume=True" in (out / "jobs" / "hifuse_hifuse_tiny.train.log").read_text()
