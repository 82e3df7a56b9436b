"""Classification from DICOM slices (CT windowing from the tags or --window), end to end through the CLI."""

from __future__ import annotations

import csv

import numpy as np
from test_volume_io import _write_series

from glfuse.cli.main import main
from glfuse.data.images import load_image

TINY = ["model.name=vit_base_patch16_224", "model.args.patch_size=8", "model.args.hidden_size=16",
        "model.args.mlp_dim=32", "model.args.num_layers=1", "model.args.num_heads=2", "data.img_size=32",
        "data.test=null", "train.epochs=1", "train.batch_size=4", "train.progress=false", "train.device=cpu",
        "train.num_workers=0"]


def _tree(root):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, cls in enumerate(("soft", "bone")):
            for i in range(3):
                hu = (40 if k == 0 else 700) + rng.integers(-20, 20, (24, 24, 1))
                _write_series(root / split / cls / f"s{i}", (hu + 1024).astype(np.uint16), [0],
                              extra={"WindowCenter": 40, "WindowWidth": 400})
    return root


def test_dicom_slices_train_and_predict_with_windows(tmp_path, capsys):
    data = _tree(tmp_path / "data")
    one = next((data / "train" / "soft" / "s0").iterdir())
    tag_window = np.asarray(load_image(one, 1, "auto"), dtype=float) / 255  # tags: C 40, W 400 -> HU 40 = 0.5
    assert abs(tag_window.mean() - 0.5) < 0.06
    wide = np.asarray(load_image(one, 1, "400,2000"), dtype=float) / 255  # another window, another picture
    assert abs(wide.mean() - (40 - 400 + 1000) / 2000) < 0.05
    run = tmp_path / "run"
    assert main(["classify", "train", "-c", "hifuse_covid_ct", f"data.root={data}", "data.kind=folder",
                 "data.window=40,400", *TINY, "-o", str(run)]) == 0
    out = tmp_path / "pred.csv"
    assert main(["classify", "predict", str(run), str(data / "val"), "-o", str(out), "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 6 and all(r["path"].endswith(".dcm") for r in rows)
    assert main(["classify", "predict", str(run), str(data / "val"), "-o", str(out), "--overwrite",
                 "--window", "nonsense"]) == 1
    assert "window" in capsys.readouterr().err
