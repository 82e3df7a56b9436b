"""The one run lifecycle (glfuse.runs) for all three systems: new / exists / --overwrite / --resume / --resume auto,
distributed (2-process torchrun, gloo), the run lock, SIGKILL restarts and a fault loop over checkpoint publication."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glfuse.cli.main import main

REPO = Path(__file__).resolve().parents[1]

CLS_TINY = ["model.name=vit_base_patch16_224", "model.args.patch_size=8", "model.args.hidden_size=16",
            "model.args.mlp_dim=32", "model.args.num_layers=1", "model.args.num_heads=2", "data.img_size=32",
            "train.batch_size=4", "train.progress=false", "train.device=cpu", "train.warmup_epochs=0", "train.num_workers=0"]
STAGE_TINY = ["model.args={embed_dim: 32, depth: 1, num_heads: 2, cross_mlp_hidden: 32, fffn_hidden: 4}",
              "data.img_size=32", "train.batch_size=4", "train.progress=false", "train.device=cpu",
              "data.max_slices_per_case=2", "data.label_column=grade", "train.warmup_epochs=0"]


def _image_tree(root: Path, n: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)
                arr[..., k] = 255
                Image.fromarray(arr).save(d / f"{cls}{i}.png")
    return root


def _pairs(root: Path, n: int = 4, size: int = 24) -> tuple[Path, Path]:
    from PIL import Image

    a, b = root / "MRI", root / "CT"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        Image.fromarray(np.uint8((0.5 + 0.4 * np.sin(6 * xx + k) * np.cos(4 * yy)) * 255)).save(a / f"{k:03d}.png")
        Image.fromarray(np.uint8(((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1 + 0.02 * k) * 230)).save(b / f"{k:03d}.png")
    return a, b


def _stage_cache(root: Path) -> Path:
    import csv

    import nibabel as nib

    from glfuse.staging.prepare import make_split, prepare

    imgs = root / "images"
    rows = []
    for i in range(8):
        d = imgs / f"C{i:02d}"
        d.mkdir(parents=True)
        rng = np.random.default_rng(i)
        v = rng.integers(0, 100, size=(24, 20, 6)).astype(np.int16)
        m = np.zeros_like(v, dtype=np.uint8)
        for s in (1, 2, 3):
            m[4:9 + 3 * (i % 2), 3:8, s] = 1
            v[4:9 + 3 * (i % 2), 3:8, s] += 80 if i % 2 else 10
        nib.save(nib.Nifti1Image(v, np.eye(4)), str(d / "t1.nii.gz"))
        nib.save(nib.Nifti1Image(m, np.eye(4)), str(d / "mask.nii.gz"))
        rows.append((f"C{i:02d}", str(i % 2 + 1)))
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "grade"])
        w.writerows(rows)
    cache = root / "cache"
    prepare(imgs, root / "labels.csv", "grade", cache, size=32, progress=False)
    make_split(cache, cache / "split.json", val=0.25, test=0.25, seed=0)
    return cache


@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    """``{system: argv builder(run_dir) -> list}`` with tiny recipes (1 epoch unless overridden)."""
    root = tmp_path_factory.mktemp("systems")
    data = _image_tree(root / "cls")
    a, b = _pairs(root / "fuse")
    cache = _stage_cache(root / "stage")
    return {
        "classify": lambda run: ["classify", "train", "-c", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder",
                                 "data.test=null", *CLS_TINY, "-o", str(run)],
        "stage": lambda run: ["stage", "train", *STAGE_TINY, f"data.cache={cache}", f"data.split={cache / 'split.json'}",
                              "-o", str(run)],
        "fuse": lambda run: ["fuse", "train", "-c", "mactfusion_ct_mri", f"data.vis_dir={a}", f"data.ir_dir={b}",
                             "data.crop=16", "data.val_fraction=0.25", "train.batch_size=2", "train.max_steps_per_epoch=1",
                             "train.progress=false", "train.device=cpu", "metrics=[EN,SD,Qabf]", "-o", str(run)],
    }


def _epochs(run: Path) -> list[int]:
    return [r["epoch"] for r in json.loads((run / "log.json").read_text())]


@pytest.mark.parametrize("system", ["classify", "stage", "fuse"])
def test_lifecycle(systems, system, tmp_path, capsys):
    argv = systems[system]
    run = tmp_path / "run"
    # --resume on nothing: an error, and the folder is not created
    assert main([*argv(run), "--resume", "train.epochs=1"]) == 1
    assert "nothing to resume" in capsys.readouterr().err and not run.exists()
    # --resume auto on an empty folder starts the run
    assert main([*argv(run), "--resume", "auto", "train.epochs=1"]) == 0
    assert _epochs(run) == [1] and json.loads((run / "best" / "config.json").read_text())["task"] == \
        {"classify": "classification", "stage": "staging", "fuse": "fusion"}[system]
    # a plain start into a started run fails, naming both ways out
    assert main([*argv(run), "train.epochs=1"]) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    # --resume continues it, --resume auto too (same command line as the first start)
    assert main([*argv(run), "--resume", "train.epochs=2"]) == 0
    assert _epochs(run) == [1, 2]
    assert main([*argv(run), "--resume", "auto", "train.epochs=3"]) == 0
    assert _epochs(run) == [1, 2, 3]
    # --resume and --overwrite together: refused, nothing touched
    assert main([*argv(run), "--resume", "--overwrite", "train.epochs=1"]) == 1
    assert _epochs(run) == [1, 2, 3]
    # --overwrite starts again and keeps a user's own file in the folder
    (run / "notes.txt").write_text("mine")
    assert main([*argv(run), "--overwrite", "train.epochs=1"]) == 0
    assert _epochs(run) == [1] and (run / "notes.txt").read_text() == "mine"
    # an unstarted run (config written, no epoch completed) is not a run: the plain rerun starts it
    unstarted = tmp_path / "unstarted"
    unstarted.mkdir()
    (unstarted / "config.yaml").write_text("model: {}\n")
    assert main([*argv(unstarted), "train.epochs=1"]) == 0 and _epochs(unstarted) == [1]


def test_wrong_system_model_folder_is_named(systems, tmp_path, capsys):
    run = tmp_path / "f"
    assert main([*systems["fuse"](run), "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["classify", "evaluate", str(run), "-o", str(tmp_path / "e")]) == 1
    assert "is a fusion model (use `glfuse fuse`), not a classification model" in capsys.readouterr().err
    assert main(["stage", "evaluate", str(run), "--cache", str(tmp_path), "-o", str(tmp_path / "e")]) == 1
    assert "is a fusion model" in capsys.readouterr().err


def test_open_run_rank1_never_touches_the_folder(tmp_path, monkeypatch):
    """On a rank other than 0 the lifecycle only takes rank 0's verdict: no mkdir, no deletion, no lock."""
    import glfuse.engine as engine
    from glfuse.runs import open_run

    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "last" / "training_state.pt").write_bytes(b"x")
    before = sorted(p.name for p in run.rglob("*"))
    monkeypatch.setattr(engine, "setup_distributed", lambda device="auto": (1, 2, 0))
    monkeypatch.setattr(engine, "broadcast_object", lambda obj, src=0: {"resume": False})
    r = open_run(run, "classification", overwrite=True)
    assert (r.rank, r.resume, r._lock_fd) == (1, False, None)
    assert sorted(p.name for p in run.rglob("*")) == before  # rank 0 alone deletes
    monkeypatch.setattr(engine, "broadcast_object",
                        lambda obj, src=0: {"error": FileExistsError("x already holds a run")})
    with pytest.raises(FileExistsError, match="already holds"):
        open_run(tmp_path / "other", "classification")
    assert not (tmp_path / "other").exists()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", GLFUSE_ALLOCATOR_TUNING="0", PYTHONUNBUFFERED="1")
    env.pop("GLFUSE_FAULT_AT", None)
    return env


def _cli(argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "glfuse.cli.main", *argv], env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_torchrun_two_processes_overwrite(systems, tmp_path):
    """A 2-process torchrun (gloo) with --overwrite over a started run: one consistent run, written by rank 0."""
    run = tmp_path / "run"
    assert main([*systems["classify"](run), "train.epochs=2"]) == 0
    env = _env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29613",
           "-m", "glfuse.cli.main", *systems["classify"](run), "train.epochs=1", "--overwrite", "--threads", "1"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _epochs(run) == [1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 1
    assert not list(run.glob("*.tmp")) and not list(run.glob("*.old"))


@pytest.mark.slow
def test_lock_two_trainings_and_stale_lock_after_sigkill(systems, tmp_path):
    run = tmp_path / "run"
    argv = [*systems["classify"](run), "train.epochs=40", "--resume", "auto"]
    a, b = _cli(argv), _cli(argv)
    outs = [p.communicate(timeout=600) for p in (a, b)]
    rcs = sorted([a.returncode, b.returncode])
    assert rcs == [0, 1], outs
    loser = outs[[a.returncode, b.returncode].index(1)][1]
    assert "in use by another training" in loser and ".lock" in loser
    assert _epochs(run) == list(range(1, 41))
    # SIGKILL the holder of a longer run: the kernel drops the lock, and the same command line resumes it
    argv = [*systems["classify"](run), "train.epochs=400", "--resume", "auto"]
    c = _cli(argv)
    deadline = time.time() + 120
    while time.time() < deadline and len(_epochs(run)) < 42:
        time.sleep(0.2)
    c.send_signal(signal.SIGKILL)
    c.wait(timeout=60)
    done = len(_epochs(run))
    d = _cli([*systems["classify"](run), f"train.epochs={done + 1}", "--resume", "auto"])
    out, err = d.communicate(timeout=300)
    assert d.returncode == 0, err
    assert _epochs(run) == list(range(1, done + 2))


FAULTS = ["epoch:trained#2", "publish:last:built#3", "publish:last:swap#2", "publish:best:swap#2",
          "publish:best:built#3", "epoch:saved#1", "publish:last:swap#4"]


@pytest.mark.slow
def test_sigkill_fault_loop_is_bit_identical(systems, tmp_path):
    """SIGKILL at points across several epochs, also inside last/ and best/ publication; after every kill best/ is one
    consistent epoch, and the same command line (--resume auto) ends bit-identical to an uninterrupted run."""
    ref = tmp_path / "ref"
    common = ["train.epochs=5", "train.save_every=1", "--resume", "auto", "train.lr=0.01"]
    p = _cli([*systems["classify"](ref), *common])
    assert p.wait(timeout=600) == 0, p.communicate()[1]
    ref_last = _weights(ref / "last")
    run = tmp_path / "run"
    for fault in FAULTS:
        env = _env()
        env["GLFUSE_FAULT_AT"] = fault
        p = _cli([*systems["classify"](run), *common], env=env)
        p.communicate(timeout=600)
        if p.returncode == 0:  # the point lies beyond the run's end
            break
        assert p.returncode == -signal.SIGKILL, fault
        for name in ("best", "last"):  # each folder (or its .old copy) is one epoch's complete, matching pair
            folder = run / name if (run / name).exists() else run / f"{name}.old"
            if not folder.exists():
                continue
            epoch = json.loads((folder / "config.json").read_text())["epoch"]
            assert _same(_weights(folder), _weights(ref / f"epoch_{epoch}")), (fault, name, epoch)
    p = _cli([*systems["classify"](run), *common])
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert _same(_weights(run / "last"), ref_last)
    best_epoch = json.loads((run / "best" / "config.json").read_text())["epoch"]
    assert _same(_weights(run / "best"), _weights(ref / f"epoch_{best_epoch}"))
    assert json.loads((ref / "best" / "config.json").read_text())["epoch"] == best_epoch
    assert _epochs(run) == [1, 2, 3, 4, 5]
    assert not list(run.glob("*.tmp")) and not list(run.glob("*/.*.tmp"))


def test_config_typos_name_key_and_allowed_values(tmp_path, capsys):
    from glfuse.classify.api import ClassifyConfig
    from glfuse.config import ConfigError, build_config

    for override, allowed in [("train.monitor_mode=maximum", "max | min"),
                              ("train.schedule=cosine", "warmup_cosine | exp | constant"),
                              ("data.kind=folders", "folder | csv | splitfiles"),
                              ("train.epochs=0", ">= 1"), ("train.accum_steps=0", ">= 1"),
                              ("train.eval_every=0", ">= 1"), ("train.lr=-1", ">= 0"), ("train.batch_size=0", ">= 1"),
                              ("train.num_workers=-1", ">= 0"), ("data.std=[0,0,0]", "> 0"),
                              ("train.device=gpu", "auto | cpu | cuda | cuda:N")]:
        key = override.split("=")[0]
        with pytest.raises(ConfigError) as e:
            build_config(ClassifyConfig, "hifuse_covid_ct", [override])
        assert key in str(e.value) and allowed in str(e.value), (override, str(e.value))
    # the same through the CLI: exit 1, one line, before any work (no run folder is created)
    assert main(["classify", "train", "-c", "hifuse_covid_ct", "train.monitor_mode=maximum", "-o",
                 str(tmp_path / "r")]) == 1
    assert "train.monitor_mode" in capsys.readouterr().err and not (tmp_path / "r").exists()
    # overrides are accepted anywhere on the line, also after -o
    assert main(["classify", "train", "-o", str(tmp_path / "r"), "-c", "hifuse_covid_ct", "train.epochs=0"]) == 1
    assert "train.epochs" in capsys.readouterr().err
    # a monitor the task does not report fails before training (no run folder content beyond the lock)
    with pytest.raises(SystemExit):
        main(["classify", "train", "--threads", "-1", "-o", str(tmp_path / "r")])


def test_monitor_checked_before_training(systems, tmp_path, capsys):
    run = tmp_path / "m"
    assert main([*systems["classify"](run), "train.epochs=1", "train.monitor=foo"]) == 1
    err = capsys.readouterr().err
    assert "train.monitor" in err and "'foo'" in err and "acc" in err
    assert not (run / "last").exists()


def test_vdpf_loads_after_its_init_weights_file_is_gone(tmp_path):
    from safetensors.torch import save_file

    from glfuse.checkpoint import load_model, save_model
    from glfuse.registry import create_model

    kw = {"embed_dim": 32, "depth": 1, "num_heads": 2, "cross_mlp_hidden": 32, "fffn_hidden": 4, "img_size": 32}
    donor = create_model("vdpf", num_classes=2, **kw)
    enc = {k[len("encoder."):]: v for k, v in donor.state_dict().items() if k.startswith("encoder.")}
    init = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in enc.items()}, str(init))
    model = create_model("vdpf", num_classes=2, encoder_weights=str(init), **kw)
    assert "encoder_weights" not in model.glfuse_cfg["model_args"]
    save_model(model, tmp_path / "m")
    init.unlink()
    loaded, cfg = load_model(tmp_path / "m")
    assert "encoder_weights" not in cfg["model_args"]
    x, m = torch.rand(1, 1, 32, 32), torch.ones(1, 1, 32, 32)
    model.eval()
    assert torch.equal(loaded(x, m), model(x, m))


@pytest.mark.parametrize("vis", ["MRI", "CT"])
def test_fusion_model_fuses_in_its_trained_order(tmp_path, vis):
    from glfuse.checkpoint import save_model
    from glfuse.fusion.api import fuse_images
    from glfuse.registry import create_model

    torch.manual_seed(0)
    net = create_model("mactfusion").eval()
    save_model(net, tmp_path / "m", extra={"task": "fusion", "fusion": {"vis": vis, "ir": "CT" if vis == "MRI" else "MRI"}})
    rng = np.random.default_rng(0)
    mri, ct = rng.random((32, 32)).astype(np.float32), rng.random((32, 32)).astype(np.float32)
    got = fuse_images(str(tmp_path / "m"), mri, ct, clamp=False, device="cpu")  # a = MRI, b = CT, always
    first, second = (mri, ct) if vis == "MRI" else (ct, mri)
    with torch.no_grad():
        y = torch.from_numpy(first)[None, None] * (0.299 + 0.587 + 0.114)
        want = net(y, torch.from_numpy(second)[None, None])[0, 0].numpy()
    assert np.abs(got - want).max() < 1e-4


def test_fuse_images_keeps_a_callers_model_where_it_is():
    from glfuse.fusion.api import fuse_images
    from glfuse.registry import create_model

    net = create_model("mactfusion").train().double()
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    fuse_images(net, img, img)
    assert next(net.parameters()).dtype == torch.float64  # not converted or moved
    assert net.training and getattr(net, "glfuse_prepared", None) in (None, "reference")  # not prepared in place
    net(torch.rand(1, 1, 16, 16, dtype=torch.float64), torch.rand(1, 1, 16, 16, dtype=torch.float64)).mean().backward()


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MiB tmpfs (root only; skipped elsewhere)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_training_is_one_line_and_loses_nothing(systems, small_fs, capsys):
    run = small_fs / "run"
    filler = small_fs / "filler"
    argv = [*systems["classify"](run), "train.epochs=1", "--resume", "auto"]
    assert main(argv) == 0  # one epoch fits
    before = _weights(run / "last")
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    filler.write_bytes(b"\0" * max(free - 40_000, 0))  # leave ~40 kB: the next checkpoint cannot be written
    assert main([*systems["classify"](run), "train.epochs=2", "--resume", "auto"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device" in err[0].lower() and str(run) in err[0], err
    assert "enforce fail" not in err[0]
    assert _same(_weights(run / "last"), before) and _epochs(run) == [1]  # checkpoint and log as they were
    assert not list(run.glob("*.tmp"))
    filler.unlink()
    assert main([*systems["classify"](run), "train.epochs=2", "--resume", "auto"]) == 0
    assert _epochs(run) == [1, 2]


def test_declared_size_arg_matches_every_factory():
    """``ModelInfo.size_arg`` is what the systems rely on to pass ``img_size``: it must match what each factory takes."""
    from glfuse.registry import create_model, list_models, model_info

    for name in list_models():
        info = model_info(name)
        kw = {"num_classes": 2} if info.input != "pair" else {}
        if info.size_arg:
            with torch.device("meta"):
                create_model(name, img_size=info.img_size, **kw)  # accepted
        else:
            with pytest.raises(ValueError, match="img_size"), torch.device("meta"):
                create_model(name, img_size=64, **kw)


def test_flops_count_transformer_encoder_layers():
    """nn.TransformerEncoderLayer's fused inference kernel must not hide the ViT baseline's FLOPs (~35 GFLOPs at 224²,
    not the patch embedding's 0.23)."""
    from glfuse.profile import count_flops
    from glfuse.registry import create_model

    m = create_model("vit_base_patch16_224", num_classes=2, num_layers=2)
    flops = count_flops(m, (torch.zeros(1, 3, 224, 224),))
    d, n, mlp = 768, 197, 3072
    per_layer = 2 * n * (4 * d * d + 2 * d * mlp)  # qkv + out projections + MLP (attention matmuls on top)
    assert flops > 2 * per_layer
