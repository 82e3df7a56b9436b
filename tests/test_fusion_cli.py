"""`glfuse fuse` end to end: run (classical + networks), overwrite refusal, metrics, compare, convert-official on the
real checkpoint (golden pair), and a tiny training run with resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image
from torch import nn

from glfuse.cli.main import main
from glfuse.fusion.api import fuse_folder, fuse_images
from glfuse.fusion.io import read_image, rgb_to_ycbcr, to_uint8


def _make_pairs(root, n=3, size=48, colour_b=False):
    """Smooth synthetic 'MRI' (grey) and 'CT' (grey) or 'PET' (RGB) images with the same names."""
    a, b = root / "MRI", root / ("PET" if colour_b else "CT")
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        mri = 0.5 + 0.4 * np.sin(6 * xx + k) * np.cos(4 * yy) + 0.05 * rng.standard_normal((size, size))
        ct = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1 + 0.02 * k).astype(float) * 0.9
        Image.fromarray(np.uint8(np.clip(mri, 0, 1) * 255)).save(a / f"{k:03d}.png")
        if colour_b:
            rgb = np.stack([ct, 0.5 * ct + 0.2 * xx, 0.3 * yy], -1)
            Image.fromarray(np.uint8(np.clip(rgb, 0, 1) * 255)).save(b / f"{k:03d}.png")
        else:
            Image.fromarray(np.uint8(ct * 255)).save(b / f"{k:03d}.png")
    return a, b


class _MeanStub(nn.Module):
    """Stand-in network: fused = (vis + ir) / 2 (tests plumbing only)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, vis_y, ir):
        assert vis_y.shape[1] == 1 and ir.shape[1] == 1
        return self.w * (vis_y + ir) / 2


def test_api_mapping_grey_and_colour():
    calls = []

    class Spy(nn.Module):
        def forward(self, vis_y, ir):
            calls.append((vis_y.clone(), ir.clone()))
            return vis_y  # identity on the vis input: a colour source must come back unchanged

    mri = np.full((16, 16), 0.8, np.float32)
    ct = np.full((16, 16), 0.1, np.float32)
    out = fuse_images(Spy(), mri, ct)
    assert out.shape == (16, 16)
    v, i = calls[-1]
    assert float(v.mean()) == pytest.approx(0.8, abs=1e-6) and float(i.mean()) == pytest.approx(0.1, abs=1e-6)
    fuse_images(Spy(), ct, mri, a_is="ct")  # same pair, given the other way round
    assert float(calls[-1][0].mean()) == pytest.approx(0.8, abs=1e-6)
    # colour b (PET): vis = Y of the colour image, ir = MRI; Cb/Cr of the PET image are put back, RGB out
    pet = np.zeros((16, 16, 3), np.float32)
    pet[..., 0], pet[..., 1], pet[..., 2] = 0.9, 0.4, 0.1
    out = fuse_images(Spy(), torch.from_numpy(mri), torch.from_numpy(pet).permute(2, 0, 1))
    v, i = calls[-1]
    assert float(v.mean()) == pytest.approx(0.299 * 0.9 + 0.587 * 0.4 + 0.114 * 0.1, abs=1e-6)
    assert float(i.mean()) == pytest.approx(0.8, abs=1e-6)
    assert out.shape == (16, 16, 3)
    assert np.abs(out - pet).max() <= 1 / 255  # Cb/Cr put back, correct R-G-B order (no R/B swap)
    y, cb, cr = rgb_to_ycbcr(out)
    _, cb0, cr0 = rgb_to_ycbcr(pet)
    assert np.abs(cb - cb0).max() < 2e-3 and np.abs(cr - cr0).max() < 2e-3


def test_run_classical_folder_and_overwrite(tmp_path, capsys):
    a, b = _make_pairs(tmp_path / "grey")
    out = tmp_path / "out"
    for method in ("average", "max", "laplacian", "dwt"):
        assert main(["fuse", "run", "--model", method, "--a", str(a), "--b", str(b), "-o", str(out / method)]) == 0
        files = sorted(p.name for p in (out / method).glob("*.png"))
        assert files == ["000.png", "001.png", "002.png"]
        with Image.open(out / method / "000.png") as im:
            assert im.mode == "L" and im.size == (48, 48)
    info = json.loads((out / "average" / "fusion.json").read_text())
    assert info["model"] == "average" and "rint" in info["saving"]
    before = (out / "max" / "000.png").read_bytes()
    capsys.readouterr()
    rc = main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(out / "max")])
    err = capsys.readouterr().err
    assert rc == 1 and "--overwrite" in err and "000.png" in err
    assert (out / "max" / "000.png").read_bytes() == before  # nothing replaced
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(out / "max"),
                 "--overwrite"]) == 0
    assert (out / "max" / "000.png").read_bytes() != before
    # colour pair → RGB output
    ac, bc = _make_pairs(tmp_path / "colour", n=1, colour_b=True)
    assert main(["fuse", "run", "--model", "average", "--a", str(ac), "--b", str(bc), "-o", str(out / "rgb")]) == 0
    with Image.open(out / "rgb" / "000.png") as im:
        assert im.mode == "RGB"


def test_run_network_and_model_dir(tmp_path):
    from glfuse.checkpoint import save_model
    from glfuse.registry import create_model

    a, b = _make_pairs(tmp_path, n=2, size=20)  # 20 is not a multiple of 8: padded and cropped back by the model
    recs = fuse_folder(_MeanStub(), a, b, tmp_path / "stub", progress=False)
    assert len(recs) == 2
    f, _ = read_image(tmp_path / "stub" / "000.png")
    ma, _ = read_image(a / "000.png")
    mb, _ = read_image(b / "000.png")
    assert np.abs(f - (ma + mb) / 2).max() <= 1 / 255 + 1e-6
    torch.manual_seed(0)
    net = create_model("mactfusion")
    save_model(net, tmp_path / "model")
    assert main(["fuse", "run", "--model", str(tmp_path / "model"), "--a", str(a), "--b", str(b),
                 "-o", str(tmp_path / "net")]) == 0
    with Image.open(tmp_path / "net" / "001.png") as im:
        assert im.size == (20, 20) and im.mode == "L"


def test_metrics_and_compare_outputs(tmp_path, capsys):
    a, b = _make_pairs(tmp_path)
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(tmp_path / "avg")]) == 0
    out = tmp_path / "m"
    assert main(["fuse", "metrics", "--fused", str(tmp_path / "avg"), "--a", str(a), "--b", str(b), "-o", str(out),
                 "--metrics", "EN,SD,SF,MI,Qabf,SSIM,VIF"]) == 0
    for name in ("per_image.csv", "summary.csv", "summary.md", "conventions.json"):
        assert (out / name).is_file(), name
    assert len((out / "per_image.csv").read_text().strip().splitlines()) == 4
    md = (out / "summary.md").read_text()
    assert "Qabf" in md and "±" in md and "Y channel" in md and "mi_base" in md
    assert "Qabf" in capsys.readouterr().out
    cmp_dir = tmp_path / "cmp"
    rc = main(["fuse", "compare", "--a", str(a), "--b", str(b), "--methods",
               f"stub=fused:{tmp_path / 'avg'},average,max,laplacian,dwt", "-o", str(cmp_dir),
               "--metrics", "EN,SD,SF,MI,Qabf,SSIM", "--grid-pairs", "2"])
    assert rc == 0
    for name in ("compare.csv", "compare.md", "conventions.json", "grid.png", "per_image/dwt.csv"):
        assert (cmp_dir / name).is_file(), name
    lines = (cmp_dir / "compare.csv").read_text().strip().splitlines()
    assert lines[0].startswith("method,n,EN") and [ln.split(",")[0] for ln in lines[1:]] == [
        "stub", "average", "max", "laplacian", "dwt"]
    # average fused twice (pre-fused folder and method) gives the same row
    assert lines[1].split(",")[1:] == lines[2].split(",")[1:]
    with Image.open(cmp_dir / "grid.png") as im:
        assert im.size[0] > im.size[1]
    # re-running refuses to overwrite fused outputs unless --reuse / --overwrite
    rc = main(["fuse", "compare", "--a", str(a), "--b", str(b), "--methods", "average", "-o", str(cmp_dir),
               "--metrics", "EN", "--grid-pairs", "0"])
    assert rc == 1
    assert main(["fuse", "compare", "--a", str(a), "--b", str(b), "--methods", "average", "-o", str(cmp_dir),
                 "--metrics", "EN", "--grid-pairs", "0", "--reuse"]) == 0


def test_convert_official_matches_golden(tmp_path):
    ckpt = shared_path("golden", "mactfusion", "mactfusion_ct_mri_official.pth")
    gold = np.load(shared_path("golden", "mactfusion", "harvard_ctmri_test_16009.npz"))
    data = shared_path("data")
    out = tmp_path / "official"
    assert main(["fuse", "convert-official", str(ckpt), str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "mactfusion" and cfg["fusion"]["vis"] == "MRI" and cfg["fusion"]["ir"] == "CT"
    assert main(["fuse", "convert-official", str(ckpt), str(out)]) == 1  # refuses to overwrite
    mri, _ = read_image(data / str(gold["vis_file"]))
    ct, _ = read_image(data / str(gold["ir_file"]))
    raw = fuse_images(str(out), mri, ct, clamp=False)  # a = MRI, b = CT; the folder needs no further arguments
    ref = gold["fused_y"][0, 0]
    assert np.abs(raw - ref).max() <= 1e-4
    # after the 8-bit rule: identical except where the reference sits within 1e-4 of a rounding boundary
    q, qref = to_uint8(raw).astype(int), to_uint8(ref).astype(int)
    assert np.abs(q - qref).max() <= 1 and (q != qref).mean() < 1e-3


def test_train_tiny_with_resume(tmp_path, capsys):
    a, b = _make_pairs(tmp_path, n=4, size=24)
    run = tmp_path / "run"
    common = ["--output", str(run), "--threads", "2", "--config", "mactfusion_ct_mri", f"data.vis_dir={a}",
              f"data.ir_dir={b}", "data.crop=16", "data.val_fraction=0.25", "train.batch_size=2",
              "train.max_steps_per_epoch=1", "train.progress=false", "metrics=[EN,SD,SF,MI,Qabf]"]
    assert main(["fuse", "train", *common, "train.epochs=1"]) == 0
    for name in ("config.yaml", "split.json", "log.csv", "summary.json", "best/config.json", "last/training_state.pt"):
        assert (run / name).exists(), name
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 1 and not set(split["val"]) & set(split["train"])
    assert main(["fuse", "train", *common, "train.epochs=1"]) == 1  # an earlier run is not silently replaced
    # resuming with a different recipe is refused, naming the key (nothing is trained or written)
    assert main(["fuse", "train", "--resume", *common, "data.crop=8", "train.epochs=2"]) == 1
    assert "data.crop: run 16, now 8" in capsys.readouterr().err
    assert "epochs: 1\n" in (run / "config.yaml").read_text()
    # without --config a resumed run uses its own config.yaml; more epochs are allowed and recorded there
    assert main(["fuse", "train", "--resume", "--output", str(run), "--threads", "2", "train.epochs=2"]) == 0
    assert "epochs: 2\n" in (run / "config.yaml").read_text()
    log = json.loads((run / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2]
    assert main(["fuse", "train", "--output", str(tmp_path / "new"), "train.epochs=1"]) == 1  # a new run needs --config
    assert "--config" in capsys.readouterr().err
    # exp schedule lr * 0.75^epoch; the engine logs the lr each epoch trained with
    assert [r["lr"] for r in log] == pytest.approx([1e-3, 1e-3 * 0.75])
    assert "val_Qabf" in log[0]
    cfg = json.loads((run / "best" / "config.json").read_text())
    assert cfg["fusion"]["vis"] == "MRI"
    assert main(["fuse", "run", "--model", str(run / "best"), "--a", str(a / "000.png"), "--b", str(b / "000.png"),
                 "-o", str(tmp_path / "fused")]) == 0
    assert (tmp_path / "fused" / "000.png").is_file()
