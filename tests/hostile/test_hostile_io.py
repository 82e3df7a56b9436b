"""Hostile image/file inputs (issue 15, IO part): every case is made by the test itself and must end in one line that
names the file (or key), a documented exit code, and nothing half-written on disk."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glfuse.cli.common import EXIT_FAILURE as RUNTIME_ERROR  # a one-line runtime error (exit 1)
from glfuse.cli.main import main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.startswith("glfuse: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _grey(path: Path, seed: int, shape=(32, 36)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def _pairs(root: Path, names=("p1", "p2", "p3")) -> tuple[Path, Path]:
    a, b = root / "mri", root / "ct"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    for i, n in enumerate(names):
        _grey(a / f"{n}.png", i)
        _grey(b / f"{n}.png", 100 + i)
    return a, b


def _truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, scan data cut: verify() passes, load() fails
    return path


def _png_bomb(path: Path, w: int, h: int) -> Path:
    """A grey PNG of w×h zero pixels, a few KB on disk (compressed rows of zeros)."""
    import struct

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (w + 1)
    body = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _nan_tiff(path: Path, shape=(32, 36)) -> Path:
    arr = np.random.default_rng(3).random(shape).astype(np.float32) * 200
    arr[3, 4] = np.nan
    arr[5, 6] = np.inf
    Image.fromarray(arr, mode="F").save(path)
    return path


# ------------------------------------------------------------------------------------------------ truncated JPEG
def test_truncated_jpeg_fails_the_upfront_check_and_skip_bad_leaves_it_out(tmp_path):
    from glfuse.data.images import check_images, image_folder

    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(root / cls / f"{cls}{i}.png")
    bad = _truncated_jpeg(root / "a" / "broken.jpg")
    with Image.open(bad) as im:
        im.verify()  # the old check: passes on this file
    with pytest.raises(ValueError) as ei:
        image_folder(root)
    msg = str(ei.value)
    assert "\n" not in msg and str(bad) in msg and "skip_bad" in msg
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = image_folder(root, skip_bad=True)
    assert len(ds) == 4 and bad not in ds.paths
    assert check_images([root / "b" / "b0.png"]) == [True]


def test_predict_skip_bad_names_truncated_jpeg(tmp_path, capsys):
    model = _tiny_classifier(tmp_path / "model")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(imgs / "ok.png")
    bad = _truncated_jpeg(imgs / "cut.jpg")
    out = tmp_path / "pred.csv"
    assert main(["classify", "predict", str(model), str(imgs), "-o", str(out), "--device", "cpu"]) == RUNTIME_ERROR
    assert str(bad) in _err_line(capsys) and not out.exists()
    with pytest.warns(UserWarning, match="cut.jpg"):
        rc = main(["classify", "predict", str(model), str(imgs), "-o", str(out), "--device", "cpu",
                   "--skip-bad"])
    assert rc == 0
    text = out.read_text()
    assert "ok.png" in text and "cut.jpg" not in text


# ------------------------------------------------------------------------------------------------ non-UTF-8 names
def _tiny_classifier(out: Path) -> Path:
    from glfuse.checkpoint import save_model
    from glfuse.registry import create_model

    torch.manual_seed(0)
    m = create_model("vit_base_patch16_224", num_classes=2, img_size=32, patch_size=8, hidden_size=16, mlp_dim=32,
                     num_layers=1, num_heads=2)
    pre = {"img_size": 32, "resize_size": 37, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "in_chans": 3}
    save_model(m, out, extra={"class_names": ["cat", "dog"], "preprocessing": pre})
    return out


def _class_tree(data: Path) -> Path:
    for k, cls in enumerate(("cat", "dog")):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((24, 24, 3), 60 * k + 20 * i, np.uint8)).save(data / cls / f"{cls}{i}.png")
    return data


@pytest.mark.skipif(os.name != "posix", reason="bytes file names are a POSIX feature")
def test_non_utf8_file_names_predict_and_evaluate(tmp_path, capsys):
    model = _tiny_classifier(tmp_path / "model")
    data = _class_tree(tmp_path / "data")
    raw = os.path.join(os.fsencode(data / "cat"), b"caf\xe9.png")  # Latin-1 name: not valid UTF-8
    Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(os.fsdecode(raw))
    out = tmp_path / "pred.csv"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert main(["classify", "predict", str(model), str(data), "-o", str(out), "--device", "cpu"]) == 0
    assert any("caf\\udce9.png" in str(w.message) and "UTF-8" in str(w.message) for w in rec)
    text = out.read_text(encoding="utf-8")
    assert "caf\\udce9.png" in text and len(text.strip().splitlines()) == 1 + 5
    rep = tmp_path / "report"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["classify", "evaluate", str(model), "--data", str(data), "-o", str(rep),
                     "--device", "cpu", "--no-flops"]) == 0
    assert "caf\\udce9.png" in (rep / "predictions.csv").read_text(encoding="utf-8")
    assert json.loads((rep / "metrics.json").read_text())["n"] == 5


# ------------------------------------------------------------------------------------------------ decompression bomb
def test_fuse_run_decompression_bomb_is_one_line_and_limit_is_configurable(tmp_path, capsys, monkeypatch):
    from glfuse.data.image_io import read_image

    a, b = _pairs(tmp_path, names=("x",))
    (a / "x.png").unlink()
    bomb = _png_bomb(a / "x.png", 12_000, 12_000)  # 144 Mpx in a small file
    assert bomb.stat().st_size < 400_000
    out = tmp_path / "out"
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(out)]) == RUNTIME_ERROR
    line = _err_line(capsys)
    assert str(bomb) in line and "pixel limit" in line and "GLFUSE_MAX_PIXELS" in line
    assert not (out / "x.png").exists()
    # the limit is one setting for every reader: lowered, a normal image is refused by classification's loader too
    small = _grey(tmp_path / "small.png", 0)
    monkeypatch.setenv("GLFUSE_MAX_PIXELS", "100")
    from glfuse.data.images import load_image

    with pytest.raises(ValueError, match=r"small\.png.*pixel limit"):
        load_image(small)
    with pytest.raises(ValueError, match=r"small\.png.*pixel limit"):
        read_image(small)
    monkeypatch.setenv("GLFUSE_MAX_PIXELS", "0")  # 0 = no limit
    assert read_image(small)[0].shape == (32, 36)
    monkeypatch.setenv("GLFUSE_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match="GLFUSE_MAX_PIXELS"):
        read_image(small)


# ------------------------------------------------------------------------------------------------ NaN in metrics
def test_nan_tiff_in_fusion_metrics_names_file_and_nan(tmp_path, capsys):
    a, b = _pairs(tmp_path)
    fused = tmp_path / "fused"
    fused.mkdir()
    for n in ("p1", "p2"):
        _grey(fused / f"{n}.png", 7)
    bad = _nan_tiff(fused / "p3.tif")
    assert main(["fuse", "metrics", "--fused", str(fused), "--a", str(a), "--b", str(b), "--metrics", "EN,MI"]) == RUNTIME_ERROR
    line = _err_line(capsys)
    assert str(bad) in line and "NaN" in line and "negative" not in line
    assert not (fused / "metrics").exists()
    # arrays handed to the metrics directly: the argument and NaN are named
    from glfuse.metrics.fusion import evaluate

    x = np.zeros((16, 16))
    with pytest.raises(ValueError, match="fused image contains 1 NaN"):
        evaluate(np.where(np.eye(16, dtype=bool) & (np.arange(16) == 0), np.nan, x), x, x, metrics=["EN"])


# ------------------------------------------------------------------------------------------------ truncated fused PNG
def _fused_set(tmp_path: Path, seed: int) -> tuple[Path, Path, Path]:
    a, b = _pairs(tmp_path)
    fused = tmp_path / "fused"
    fused.mkdir()
    for n in ("p1", "p2", "p3"):
        _grey(fused / f"{n}.png", seed)
    return a, b, fused


def test_truncated_fused_png_in_metrics_is_one_line(tmp_path, capsys):
    a, b, fused = _fused_set(tmp_path, 11)
    data = (fused / "p2.png").read_bytes()
    (fused / "p2.png").write_bytes(data[: len(data) // 2])
    assert main(["fuse", "metrics", "--fused", str(fused), "--a", str(a), "--b", str(b), "--metrics", "EN"]) == RUNTIME_ERROR
    assert str(fused / "p2.png") in _err_line(capsys)
    assert not (fused / "metrics").exists()


# ------------------------------------------------------------------------------------------------ metrics report
def test_metrics_report_needs_overwrite_and_unmatched_names_the_flag(tmp_path, capsys):
    a, b, fused = _fused_set(tmp_path, 5)
    args = ["fuse", "metrics", "--fused", str(fused), "--a", str(a), "--b", str(b), "--metrics", "EN,SD"]
    assert main(args) == 0
    capsys.readouterr()
    summary = fused / "metrics" / "summary.csv"
    before = summary.read_bytes()
    summary.write_text("sentinel")
    assert main(args) == RUNTIME_ERROR
    line = _err_line(capsys)
    assert "--overwrite" in line and str(fused / "metrics") in line
    assert summary.read_text() == "sentinel"
    assert main([*args, "--overwrite"]) == 0
    assert summary.read_bytes() == before
    capsys.readouterr()
    (fused / "p3.png").unlink()
    assert main([*args, "-o", str(tmp_path / "m2")]) == RUNTIME_ERROR
    line = _err_line(capsys)
    assert "--allow-unmatched" in line and "strict=False" not in line.split("--allow-unmatched")[0]


def test_constant_images_follow_reference_and_psnr_inf_needs_no_numpy_warning(tmp_path):
    from glfuse.fusion.io_metrics import evaluate_folder

    dirs = {k: tmp_path / k for k in ("fused", "A", "B")}
    for d in dirs.values():
        d.mkdir()
        for n in ("c1", "c2"):
            Image.fromarray(np.full((48, 48), 100, np.uint8)).save(d / f"{n}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from numpy
        rows, summary = evaluate_folder(dirs["fused"], dirs["A"], dirs["B"], metrics=["Qabf", "PSNR", "CC", "MSE"],
                                        progress=False)
    # Qabf of identical constant images: the zero-padded Sobel sees the border as an edge (reference evaluator)
    assert rows[0]["Qabf"] == pytest.approx(_qabf_flat_reference(), rel=1e-9)
    assert summary["mean"]["PSNR"] == np.inf and summary["std"]["PSNR"] == 0.0
    assert summary["mean"]["CC"] == 0.0
    assert any("constant image" in n and "c1.png" in n for n in summary["notes"])


def _qabf_flat_reference() -> float:
    """Qabf the reference evaluator (CDDFuse Evaluator.py) gives for F = A = B = const (written from its formulas):
    on the border g_S == g_F, where its quirk uses G = g_F; inside g = 0 (weight 0)."""
    from scipy.signal import convolve2d

    x = np.full((48, 48), 100.0)
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    sx, sy = convolve2d(x, h3, mode="same"), convolve2d(x, h1, mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    q = 0.9994 / (1 + np.exp(-15 * (g - 0.5))) * 0.9879 / (1 + np.exp(-22 * (1 - 0.8)))
    return float(np.sum(q * g + q * g) / np.sum(g + g))


# ------------------------------------------------------------------------------------------------ altered inputs
def test_fusion_input_repairs_are_warned_recorded_and_can_be_refused(tmp_path, capsys):
    import nibabel as nib

    a, b = tmp_path / "mri", tmp_path / "ct"
    a.mkdir()
    b.mkdir()
    _nan_tiff(a / "t.tif")
    _grey(b / "t.png", 1)
    vol = np.random.default_rng(0).random((32, 36, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(a / "v.nii.gz"))
    _grey(b / "v.png", 2)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(out)]) == 0
    msgs = [str(w.message) for w in rec]
    assert any("t.tif" in m and "NaN" in m for m in msgs)
    assert any("v.nii.gz" in m and "middle" in m for m in msgs)
    info = json.loads((out / "fusion.json").read_text())
    notes = {r["name"]: r.get("input_notes", {}) for r in info["images"]}
    assert any("1 NaN and 1 inf" in n for n in notes["t"]["a"]) and any("min-max" in n for n in notes["t"]["a"])
    assert any("slice 2 of 5" in n for n in notes["v"]["a"])
    # the user's choice: an explicit slice (no warning), or refuse repairs
    out2 = tmp_path / "out2"
    (a / "t.tif").unlink()
    (b / "t.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(out2),
                     "--slice", "1"]) == 0
    assert any("slice 1 of 5" in n for n in json.loads((out2 / "fusion.json").read_text())["images"][0]["input_notes"]["a"])
    capsys.readouterr()
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(tmp_path / "o3"),
                 "--strict-inputs"]) == RUNTIME_ERROR
    line = _err_line(capsys)
    assert str(a / "v.nii.gz") in line and "middle" in line
    assert not (tmp_path / "o3" / "v.png").exists()


# ------------------------------------------------------------------------------------------------ resume fuse run
def test_fuse_run_failing_part_way_records_and_resumes(tmp_path, capsys):
    a, b = _pairs(tmp_path, names=("p1", "p2", "p3"))
    good = (b / "p2.png").read_bytes()
    (b / "p2.png").write_bytes(good[:40])  # p2 fails half-way through the folder
    out = tmp_path / "out"
    args = ["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(out)]
    assert main(args) == RUNTIME_ERROR
    assert str(b / "p2.png") in _err_line(capsys)
    info = json.loads((out / "fusion.json").read_text())
    assert info["complete"] is False and str(b / "p2.png") in info["error"]
    assert [r["name"] for r in info["images"]] == ["p1"]
    assert sorted(p.name for p in out.glob("*.png")) == ["p1.png"]
    first = (out / "p1.png").stat().st_mtime_ns
    (b / "p2.png").write_bytes(good)
    assert main(args) == RUNTIME_ERROR  # a plain rerun still refuses and says what to do
    assert "--resume" in _err_line(capsys)
    assert main([*args, "--resume"]) == 0
    info = json.loads((out / "fusion.json").read_text())
    assert info["complete"] is True and [r["name"] for r in info["images"]] == ["p1", "p2", "p3"]
    assert "skipped" in info["images"][0] and "seconds" in info["images"][1]
    assert (out / "p1.png").stat().st_mtime_ns == first
    assert main([*args, "--resume", "--overwrite"]) == RUNTIME_ERROR
    assert "--resume" in _err_line(capsys)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_refused_pickle_and_truncated_safetensors_are_one_line(tmp_path, capsys):
    from glfuse.checkpoint import load_model
    from glfuse.registry import read_state_dict

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"w": Payload()}, f, protocol=2)
    with pytest.raises(ValueError) as ei:
        read_state_dict(evil)
    msg = str(ei.value)
    assert msg.startswith(f"{evil} is not a safe checkpoint (it needs arbitrary code to load)") and "\n" not in msg
    assert "weights_only=False" not in msg and not (tmp_path / "pwned").exists()

    model = _tiny_classifier(tmp_path / "model")
    w = model / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ValueError) as ei:
        load_model(model)
    assert str(w) in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(ValueError, match="model.safetensors"):
        read_state_dict(w)
    img = _grey(tmp_path / "x.png", 0)
    assert main(["classify", "predict", str(model), str(img), "-o", str(tmp_path / "p.csv")]) == RUNTIME_ERROR
    assert str(w) in _err_line(capsys)


# ------------------------------------------------------------------------------------------------ disk full
@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    import gc

    gc.collect()  # close file objects still referenced by a failed writer's traceback
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy detach: never leave a mount behind


def _fill(mnt: Path, leave: int) -> None:
    """Fill the file system until fewer than ``leave`` bytes are free."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    if free > leave:
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (free - leave))


def test_disk_full_fuse_run_and_metrics(tiny_fs, tmp_path, capsys):
    a, b = _pairs(tmp_path, names=("p1", "p2"))
    for n in ("p1", "p2"):  # bigger, incompressible images
        for d in (a, b):
            Image.fromarray(np.random.default_rng(len(n)).integers(0, 255, (300, 300), dtype=np.uint8)).save(d / f"{n}.png")
    out = tiny_fs / "fused"
    out.mkdir()
    _fill(tiny_fs, 30_000)
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(out)]) == RUNTIME_ERROR
    line = _err_line(capsys)
    assert "no space left on device" in line and str(out) in line
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    for p in out.glob("*.png"):  # whatever was written is complete
        with Image.open(p) as im:
            im.load()
    (tiny_fs / "filler").unlink()
    # metrics report into the full disk: nothing half-written
    fused = tmp_path / "fusedok"
    fused.mkdir()
    for n in ("p1", "p2"):
        _grey(fused / f"{n}.png", 3, shape=(300, 300))
    rep = tiny_fs / "rep"
    _fill(tiny_fs, 2_000)
    assert main(["fuse", "metrics", "--fused", str(fused), "--a", str(a), "--b", str(b), "--metrics", "EN,SD",
                 "-o", str(rep)]) == RUNTIME_ERROR
    assert "no space left on device" in _err_line(capsys)
    assert not rep.exists() or sorted(p.name for p in rep.iterdir()) == []


def test_write_error_names_path_and_leaves_nothing(tiny_fs):
    from glfuse.files import WriteError, write_csv

    _fill(tiny_fs, 0)
    target = tiny_fs / "table.csv"
    with pytest.raises(WriteError) as ei:
        write_csv(target, [{"a": "x" * 100_000}])
    assert str(target) in str(ei.value) and "no space left" in str(ei.value)
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["filler"]


def test_disk_full_classify_evaluate_leaves_no_half_report(tiny_fs, tmp_path, capsys):
    model = _tiny_classifier(tmp_path / "model")
    data = _class_tree(tmp_path / "data")
    rep = tiny_fs / "report"
    _fill(tiny_fs, 6_000)  # room for the JSON and CSVs, not for the confusion-matrix PNG
    rc = main(["classify", "evaluate", str(model), "--data", str(data), "-o", str(rep), "--device", "cpu", "--no-flops"])
    assert rc == RUNTIME_ERROR
    line = _err_line(capsys)
    assert "no space left on device" in line and str(rep) in line
    assert not rep.exists() or sorted(p.name for p in rep.iterdir()) == []


def test_read_only_file_system_fuse_run(tiny_fs, tmp_path, capsys):
    a, b = _pairs(tmp_path, names=("p1",))
    r = subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    out = tiny_fs / "fused"
    assert main(["fuse", "run", "--model", "average", "--a", str(a), "--b", str(b), "-o", str(out)]) == RUNTIME_ERROR
    line = _err_line(capsys)
    assert str(out) in line and "read-only file system" in line
    assert not out.exists()


def test_disk_full_torch_save_is_named_as_such(tiny_fs):
    from glfuse.checkpoint import save_training_state
    from glfuse.files import WriteError

    _fill(tiny_fs, 50_000)
    target = tiny_fs / "last" / "training_state.pt"
    with pytest.raises(WriteError) as ei:
        save_training_state({"w": torch.zeros(200_000)}, target)  # 800 KB into 50 KB
    assert str(ei.value) == f"{target}: cannot write: no space left on device (nothing written)"
    assert not target.exists() and [p.name for p in (tiny_fs / "last").iterdir()] == []
