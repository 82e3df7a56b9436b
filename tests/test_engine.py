"""Engine: schedule, accumulation, resume equivalence, DDP with 2 CPU processes (gloo), config validation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from _engine_helpers import Blobs, TinyNet, TinyTask
from safetensors.torch import load_file

from glfuse.config import ConfigError, build_config
from glfuse.engine import TrainConfig, evaluate, fit, lr_factor


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=4, lr=1e-2, warmup_epochs=1.0, progress=False, monitor="acc", seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_official_warmup_cosine_schedule():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, warmup_start_factor=1e-3, end_factor=0.01)
    spe = 20
    assert lr_factor(0, cfg, spe) == pytest.approx(1e-3)
    assert lr_factor(10, cfg, spe) == pytest.approx(1e-3 * 0.5 + 0.5)
    assert lr_factor(20, cfg, spe) == pytest.approx(1.0)
    mid = 20 + 9 * 20 // 2
    assert lr_factor(mid, cfg, spe) == pytest.approx(0.5 * 0.99 + 0.01)
    assert lr_factor(200, cfg, spe) == pytest.approx(0.01)
    exp = TrainConfig(schedule="exp", exp_gamma=0.75)
    assert lr_factor(45, exp, 10) == pytest.approx(0.75**4)


def test_fit_writes_run_dir_and_refuses_to_clobber(tmp_path):
    run = tmp_path / "run"
    s = fit(TinyNet(), TinyTask(), Blobs(), Blobs(9, seed=1), _cfg(), run)
    assert s["epochs_run"] == 3
    for f in ("best/model.safetensors", "best/config.json", "last/training_state.pt", "log.csv", "log.json",
              "summary.json"):
        assert (run / f).is_file(), f
    log = json.loads((run / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2, 3] and "val_acc" in log[0]
    best_cfg = json.loads((run / "best" / "config.json").read_text())
    best_epoch = max(log, key=lambda r: r["val_acc"])["epoch"]
    assert best_cfg["epoch"] == best_epoch and best_cfg["monitor"] == "acc"
    with pytest.raises(FileExistsError, match="resume"):
        fit(TinyNet(), TinyTask(), Blobs(), None, _cfg(), run)


def test_resume_recovers_from_crash_between_directory_swaps(tmp_path):
    run = tmp_path / "run"
    fit(TinyNet(), TinyTask(), Blobs(), None, _cfg(epochs=1), run)
    (run / "last").rename(run / "last.old")  # as if killed between the two renames
    s = fit(TinyNet(), TinyTask(), Blobs(), None, _cfg(epochs=2), run, resume=True)
    assert s["epochs_run"] == 2 and (run / "last" / "training_state.pt").is_file()
    assert not (run / "last.old").exists()


def test_resume_after_kill_reaches_same_weights(tmp_path):
    torch.manual_seed(0)
    full = TinyNet()
    init = {k: v.clone() for k, v in full.state_dict().items()}
    fit(full, TinyTask(), Blobs(), Blobs(9, seed=1), _cfg(epochs=4, accum_steps=2), tmp_path / "a")

    # "killed" after 2 of 4 epochs: a run configured for 4 epochs, interrupted by an exception after epoch 2
    part = TinyNet()
    part.load_state_dict(init)

    class Kill(Exception):
        pass

    def killer(epoch, row):
        if epoch == 1:
            raise Kill

    with pytest.raises(Kill):
        fit(part, TinyTask(), Blobs(), Blobs(9, seed=1), _cfg(epochs=4, accum_steps=2), tmp_path / "b",
            callbacks=[killer])
    resumed = TinyNet()  # fresh process state: different init, RNG moved on
    torch.manual_seed(1234)
    fit(resumed, TinyTask(), Blobs(), Blobs(9, seed=1), _cfg(epochs=4, accum_steps=2), tmp_path / "b", resume=True)
    a = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # and the weights really changed during the resumed part
    assert not torch.equal(a["head.weight"], init["head.weight"])
    la = json.loads((tmp_path / "a" / "log.json").read_text())
    lb = json.loads((tmp_path / "b" / "log.json").read_text())
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]


def test_gradient_accumulation_matches_large_batch(tmp_path):
    """accum_steps=2 at batch 4 gives the same update as batch 8 (mean loss, equal-size groups)."""
    torch.manual_seed(0)
    m1 = TinyNet()
    m2 = TinyNet()
    m2.load_state_dict(m1.state_dict())
    class Clean(Blobs):
        def __getitem__(self, i):
            return self.x[i], self.y[i], torch.tensor(i)

    ds = Clean(16)
    common = dict(epochs=1, lr=1e-2, schedule="constant", shuffle=False, progress=False, optimizer="adam",
                  weight_decay=0.0)
    fit(m1, TinyTask(), ds, None, TrainConfig(batch_size=8, **common), tmp_path / "big")
    fit(m2, TinyTask(), ds, None, TrainConfig(batch_size=4, accum_steps=2, **common), tmp_path / "acc")
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_early_stopping(tmp_path):
    s = fit(TinyNet(), TinyTask(), Blobs(), Blobs(9, seed=1),
            _cfg(epochs=30, lr=0.0, schedule="constant", early_stop_patience=2), tmp_path / "r")
    assert s["stopped_early"] and s["epochs_run"] == 3


def test_evaluate_single_process_order():
    metrics, out = evaluate(TinyNet(), TinyTask(), Blobs(7), batch_size=3, progress=False)
    assert out["index"].tolist() == list(range(7)) and metrics["n"] == 7


def test_ddp_two_cpu_processes(tmp_path):
    """torchrun --nproc_per_node=2 (gloo): runs unchanged; evaluation counts each of 7 samples exactly once."""
    script = Path(__file__).with_name("_engine_helpers.py")
    env = dict(os.environ, PYTHONPATH=str(script.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path / "run"), str(tmp_path / "out.json")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path / f"out.json.{k}").read_text()) for k in (0, 1)]
    assert all(x["world"] == 2 for x in res)
    assert res[0]["n"] == 7 and res[1]["n"] == 7  # not 8: no padded sample double-counted
    assert res[0]["index"] == list(range(7))
    assert math.isclose(res[0]["checksum"], res[1]["checksum"], rel_tol=0, abs_tol=1e-6)  # ranks stay in sync
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2


@dataclass
class _Sub:
    lr: float = 1e-3
    name: str = "x"
    sizes: tuple[int, int] = (1, 2)


@dataclass
class _Cfg:
    sub: _Sub = field(default_factory=_Sub)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_config_overrides_and_errors(tmp_path):
    assert build_config(_Cfg, None, ["sub.lr=2e-4"]).sub.lr == 2e-4  # YAML 1.1 reads 2e-4 as a string
    c = build_config(_Cfg, None, ["sub.lr=0.5", "train.epochs=3", "sub.sizes=[3, 4]"])
    assert c.sub.lr == 0.5 and c.train.epochs == 3 and c.sub.sizes == (3, 4)
    with pytest.raises(ConfigError, match="'sub.lrr'"):
        build_config(_Cfg, None, ["sub.lrr=1"])
    with pytest.raises(ConfigError, match="'train.epochs'.*expected int"):
        build_config(_Cfg, None, ["train.epochs=abc"])
    y = tmp_path / "p.yaml"
    y.write_text("description: test\nsub:\n  name: 7\n")
    with pytest.raises(ConfigError, match="'sub.name'"):
        build_config(_Cfg, y)


@dataclass
class _ArgsCfg:
    sub: _Sub = field(default_factory=_Sub)
    args: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_resume_config_check(tmp_path):
    from glfuse.config import check_resume_config, save_config

    saved = tmp_path / "config.yaml"
    assert check_resume_config(_Cfg(), saved) == []  # no saved config: nothing to compare
    save_config(build_config(_ArgsCfg, None, ["sub.lr=0.5", "sub.sizes=[3, 4]", "args={depth: 2}"]), saved)
    # the identical config, read back from YAML (floats, tuples, free-form dicts round-trip)
    same = build_config(_ArgsCfg, saved)
    assert check_resume_config(same, saved) == []
    # how long / how it runs may change
    longer = build_config(_ArgsCfg, saved, ["train.epochs=200", "train.progress=false", "train.device=cpu"])
    assert sorted(check_resume_config(longer, saved)) == ["train.device", "train.epochs", "train.progress"]
    # what is trained may not: every changed key is named with both values
    for override, key, old, new in [("sub.lr=0.25", "sub.lr", "0.5", "0.25"), ("args={depth: 3}", "args", "2", "3"),
                                    ("train.lr=1e-3", "train.lr", "0.0001", "0.001"),
                                    ("sub.sizes=[3, 5]", "sub.sizes", "[3, 4]", "[3, 5]")]:
        changed = build_config(_ArgsCfg, saved, [override, "train.epochs=200"])
        with pytest.raises(ConfigError) as e:
            check_resume_config(changed, saved)
        msg = str(e.value)
        assert f"{key}: run " in msg and old in msg and new in msg and "train.epochs" in msg.split("Only")[1], msg
        assert f"{key}: run" in msg and "train.epochs: run" not in msg  # the allowed change is not reported as bad
    # a field the saved config does not know yet (added in a later version) is not a change
    saved.write_text(saved.read_text().replace("args:\n  depth: 2\n", ""))
    assert "args" not in saved.read_text()
    assert check_resume_config(build_config(_ArgsCfg, None, ["sub.lr=0.5", "sub.sizes=[3, 4]"]), saved) == []
    saved.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        check_resume_config(same, saved)


@pytest.mark.parametrize("tune", [True, False])
def test_fit_and_its_validation_follow_tune_allocator(tmp_path, monkeypatch, tune):
    import glfuse.engine as engine

    calls = []
    monkeypatch.setattr(engine, "tune_cpu_allocator", lambda: calls.append(1) or True)
    fit(TinyNet(), TinyTask(), Blobs(), Blobs(9, seed=1), _cfg(epochs=1, tune_allocator=tune), tmp_path / "run")
    assert len(calls) == (2 if tune else 0)  # once for training, once for the validation pass


def test_progress_lines_when_output_is_not_a_terminal(capsys):
    """A batch job's log gets plain progress lines at the interval (rich alone would print nothing until the end)."""
    from glfuse.engine import progress_bar

    with progress_bar(True, interval_s=0.0) as bar:
        t = bar.add_task("epoch 1/3", total=4, info="")
        for i in range(4):
            bar.update(t, advance=1, info=f"loss {i:.2f}")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch 1/3  ")]
    assert lines[-1].startswith("epoch 1/3  4/4 (100%)") and "loss 3.00" in lines[-1] and len(lines) >= 4
    with progress_bar(False) as bar:  # --quiet: nothing at all
        bar.update(bar.add_task("x", total=1, info=""), advance=1)
    assert capsys.readouterr().out == ""


def test_logged_lr_is_the_mean_lr_the_epoch_trained_with(tmp_path):
    from glfuse.engine import lr_factor

    cfg = _cfg(epochs=1, schedule="warmup_cosine", warmup_epochs=1.0, lr=0.1)
    s = fit(TinyNet(), TinyTask(), Blobs(), None, cfg, tmp_path / "r")
    n = 6  # 24 samples, batch 4
    want = sum(0.1 * lr_factor(k, cfg, n) for k in range(n)) / n
    assert s["last"]["lr"] == pytest.approx(want) and s["last"]["lr"] > 1e-3  # not the 1e-4 the epoch started with


def test_tensorboard_tracking(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(epochs=2, tracker="tensorboard")
    fit(TinyNet(), TinyTask(), Blobs(), Blobs(9, seed=1), cfg, tmp_path / "r")
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "epoch/val_acc", "epoch/train_loss"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(12))  # 2 epochs x 6 iterations
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [1, 2]
    log = json.loads((tmp_path / "r" / "log.json").read_text())
    assert [e.value for e in acc.Scalars("epoch/val_acc")] == pytest.approx([r["val_acc"] for r in log])


def test_balanced_sampler_draws_classes_equally():
    from glfuse.engine import _TrainSampler, balanced_weights

    class Imbalanced(Blobs):
        def __init__(self):
            super().__init__(400)
            self.y = torch.tensor([0] * 360 + [1] * 30 + [2] * 10)

        @property
        def targets(self):
            return self.y.tolist()

    ds = Imbalanced()
    s = _TrainSampler(len(ds), 0, True, 0, 1, balanced_weights(ds))
    drawn = torch.tensor([ds.targets[i] for e in range(5) for i in (s.set_epoch(e) or s)])
    freq = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert torch.allclose(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.04), freq
    s.set_epoch(0)
    first = list(s)
    s.set_epoch(0)
    assert list(s) == first  # seeded per epoch (exact resume)
    plain = torch.tensor([ds.targets[i] for i in _TrainSampler(len(ds), 0, True, 0, 1)])
    assert (plain == 0).double().mean() == 0.9
    with pytest.raises(ValueError, match="train.balanced_sampler"):
        balanced_weights(Blobs())  # no targets


def test_fit_with_balanced_sampler(tmp_path):
    class WithTargets(Blobs):
        @property
        def targets(self):
            return self.y.tolist()

    s = fit(TinyNet(), TinyTask(), WithTargets(), None, _cfg(epochs=1, balanced_sampler=True), tmp_path / "r")
    assert s["epochs_run"] == 1
