"""End-to-end `glfuse classify` on a tiny synthetic image folder with a tiny ViT (fast on CPU)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from glfuse.cli.main import main

TINY = ["model.name=vit_base_patch16_224", "model.args.patch_size=8", "model.args.hidden_size=16",
        "model.args.mlp_dim=32", "model.args.num_layers=1", "model.args.num_heads=2",
        "data.img_size=32", "train.epochs=1", "train.batch_size=4", "train.progress=false", "train.num_workers=0",
        "train.device=cpu"]


def _make_tree(root, n=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for k, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (40 + 3 * i, 50, 3), dtype=np.uint8)
                arr[..., k] = 255  # a learnable colour cue
                Image.fromarray(arr).save(d / f"{cls}{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cls")
    data = _make_tree(tmp / "data")
    run = tmp / "run"
    rc = main(["classify", "train", "--config", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder",
               *TINY, "--output", str(run)])
    assert rc == 0
    return tmp, data, run


def test_train_outputs(trained):
    _, data, run = trained
    for f in ("config.yaml", "log.csv", "summary.json", "best/model.safetensors", "last/training_state.pt"):
        assert (run / f).exists(), f
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["root"] == str(data.resolve()) and cfg["model"]["args"]["hidden_size"] == 16
    mcfg = json.loads((run / "best" / "config.json").read_text())
    assert mcfg["class_names"] == ["cat", "dog"]
    assert mcfg["preprocessing"]["img_size"] == 32 and mcfg["preprocessing"]["resize_size"] == 37
    assert mcfg["model_args"]["num_classes"] == 2 and mcfg["model_args"]["img_size"] == 32


def test_refuses_to_overwrite_then_overwrites_and_resumes(trained, capsys):
    _, data, run = trained
    args = ["classify", "train", "--config", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder", *TINY,
            "--output", str(run)]
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    # resuming with another recipe is refused with the key named; with more epochs it continues from epoch 1
    assert main(["classify", "train", "-o", str(run), "--resume", "train.epochs=2", "train.lr=0.5"]) == 1
    assert "train.lr: run" in capsys.readouterr().err
    assert main(["classify", "train", "-o", str(run), "--resume", "train.epochs=2"]) == 0
    log = list(csv.DictReader(open(run / "log.csv")))
    assert [r["epoch"] for r in log] == ["1", "2"]
    run2 = run.parent / "run2"
    run2.mkdir()
    (run2 / "config.yaml").write_text("x: 1\n")  # an unstarted run (no completed epoch) is not a run: a plain start
    assert main(["classify", "train", "--config", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder", *TINY,
                 "--output", str(run2)]) == 0
    assert main(["classify", "train", "--config", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder", *TINY,
                 "--output", str(run2)]) == 1  # now it is
    assert main(["classify", "train", "--config", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder", *TINY,
                 "--output", str(run2), "--overwrite"]) == 0
    assert (run2 / "best" / "model.safetensors").exists()


def test_evaluate_predict_cam(trained, capsys):
    tmp, data, run = trained
    out = tmp / "eval"
    assert main(["classify", "evaluate", str(run), "--output", str(out), "--no-flops"]) == 0
    printed = capsys.readouterr().out
    assert "Acc (%)" in printed and "vit_base_patch16_224" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 8 and sum(map(sum, m["confusion_matrix"])) == 8 and m["split"] == "test"
    for f in ("per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", "predictions.csv", "table.md"):
        assert (out / f).exists(), f
    assert main(["classify", "evaluate", str(run), "--output", str(out), "--no-flops"]) == 1
    assert "exists" in capsys.readouterr().err
    # explicit --data folder
    assert main(["classify", "evaluate", str(run / "last"), "--data", str(data / "val"), "--output", str(tmp / "ev2"),
                 "--no-flops"]) == 0

    pred = tmp / "pred.csv"
    assert main(["classify", "predict", str(run), str(data / "test" / "cat"), str(data / "val" / "dog" / "dog0.png"),
                 "--output", str(pred)]) == 0
    rows = list(csv.DictReader(open(pred)))
    assert len(rows) == 5 and set(rows[0]) == {"path", "pred", "pred_name", "prob_cat", "prob_dog"}
    for r in rows:
        assert abs(float(r["prob_cat"]) + float(r["prob_dog"]) - 1) < 1e-4
        assert r["pred_name"] == ["cat", "dog"][int(r["pred"])]
    assert main(["classify", "predict", str(run), str(data / "test"), "--output", str(pred)]) == 1

    cams = tmp / "cams"
    assert main(["classify", "cam", str(run), str(data / "test" / "dog" / "dog1.png"), "--output", str(cams)]) == 0
    assert (cams / "dog1_cam.png").exists()
    assert main(["classify", "cam", str(run), str(data / "test" / "dog" / "dog1.png"), "--layers", "nope",
                 "--output", str(cams), "--overwrite"]) == 1
    assert "nope" in capsys.readouterr().err


def test_bad_config_key_names_the_key(tmp_path, capsys):
    assert main(["classify", "train", "--config", "hifuse_covid_ct", "data.bogus=1", "--output",
                 str(tmp_path / "r")]) == 1
    assert "data.bogus" in capsys.readouterr().err
    assert main(["classify", "train", "--config", "hifuse_covid_ct", "train.lr=abc", "--output",
                 str(tmp_path / "r")]) == 1
    assert "train.lr" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_help_of_every_subcommand(capsys):
    for sub in ("train", "evaluate", "predict", "cam", "split"):
        with pytest.raises(SystemExit) as e:
            main(["classify", sub, "--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_split_command(tmp_path):
    data = _make_tree(tmp_path / "d", n=5)
    out = tmp_path / "splits"
    assert main(["classify", "split", str(data / "train"), "--output", str(out), "--ratios", "0.6", "0.2", "0.2"]) == 0
    from glfuse.data.images import image_csv

    sizes = {s: len(image_csv(out / f"{s}.csv")) for s in ("train", "val", "test")}
    assert sizes == {"train": 6, "val": 2, "test": 2}
    assert main(["classify", "split", str(data / "train"), "--output", str(out)]) == 1


def test_same_seed_same_run_whatever_the_global_rng(trained, tmp_path):
    import torch
    from safetensors.torch import load_file

    _, data, _ = trained
    weights = []
    for k, global_seed in enumerate((1, 12345)):  # the global RNG state before training must not matter
        torch.manual_seed(global_seed)
        assert main(["classify", "train", "--config", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder",
                     *TINY, "--output", str(tmp_path / f"run{k}")]) == 0
        weights.append(load_file(tmp_path / f"run{k}" / "last" / "model.safetensors"))
    a, b = weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
