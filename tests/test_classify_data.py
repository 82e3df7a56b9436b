"""Image datasets (folder / CSV / COVID-CT split files), upfront image checks, stratified splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from glfuse.data.images import image_csv, image_folder, split_files
from glfuse.data.splits import make_kfold, make_splits, read_split_csv, write_split_csvs
from glfuse.data.transforms import build_transforms


def _img(path, mode="RGB", size=(30, 20), value=100):
    arr = np.full((size[1], size[0], 4), value, np.uint8)
    im = Image.fromarray(arr, "RGBA")
    if mode == "P":
        im = im.convert("RGB").convert("P")
    elif mode != "RGBA":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    _img(root / "b_class" / "x1.png", "RGBA", (17, 33))
    _img(root / "b_class" / "sub" / "x2.jpg", "L", (101, 7))
    _img(root / "a_class" / "y1.png", "P", (64, 64))
    _img(root / "a_class" / "y2.PNG", "RGB", (5, 9))
    (root / "a_class" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_modes_sizes_and_classes(tree):
    ds = image_folder(tree, build_transforms(False, 16))
    assert ds.class_names == ["a_class", "b_class"]
    assert len(ds) == 4 and sorted(ds.targets) == [0, 0, 1, 1]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
    grey = image_folder(tree, build_transforms(False, 16), in_chans=1)
    assert grey[0][0].shape == (1, 16, 16)
    # a test folder must use the training classes; an unknown class folder is an error
    sub = image_folder(tree, class_names=["a_class", "b_class", "c_class"])
    assert sub.class_names == ["a_class", "b_class", "c_class"]
    with pytest.raises(ValueError, match="not among the classes"):
        image_folder(tree, class_names=["a_class"])


def test_corrupt_image_error_names_path_or_is_skipped(tree):
    bad = tree / "b_class" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match="broken.png"):
        image_folder(tree)
    with pytest.warns(UserWarning, match="broken.png"):
        ds = image_folder(tree, skip_bad=True)
    assert len(ds) == 4 and bad not in ds.paths


def test_csv_dataset(tmp_path, tree):
    csv_path = tmp_path / "lists" / "train.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("path,label\n../tree/a_class/y1.png,benign\n../tree/b_class/x1.png,malignant\n"
                        f"{tree / 'a_class' / 'y2.PNG'},benign\n")
    ds = image_csv(csv_path, build_transforms(True, 24))
    assert ds.class_names == ["benign", "malignant"] and ds.targets == [0, 1, 0]
    assert ds[1][0].shape == (3, 24, 24)
    num = tmp_path / "lists" / "num.csv"
    num.write_text("path,label\n../tree/a_class/y1.png,2\n../tree/b_class/x1.png,0\n")
    assert image_csv(num).class_names == ["0", "1", "2"]
    missing = tmp_path / "lists" / "missing.csv"
    missing.write_text("path,label\n../tree/a_class/nope.png,0\n")
    with pytest.raises(ValueError, match="nope.png"):
        image_csv(missing)
    with pytest.raises(ValueError, match="'path' and 'label'"):
        (tmp_path / "lists" / "h.csv").write_text("file,y\na,0\n")
        image_csv(tmp_path / "lists" / "h.csv")


def test_split_files_synthetic(tmp_path):
    root = tmp_path / "ct"
    for cls, folder in (("COVID", "CT_COVID"), ("NonCOVID", "CT_NonCOVID")):
        for i in range(3):
            _img(root / folder / f"{cls}_{i}.png", "RGB", (20 + i, 30))
        split = root / "Data-split" / cls
        split.mkdir(parents=True)
        (split / f"train{folder}.txt").write_text(f"{cls}_0.png\r\n{cls}_1.png\n\n")
        (split / f"test{folder}.txt").write_text(f"{cls}_2.png")
    tr = split_files(root, "train")
    assert tr.class_names == ["COVID", "NonCOVID"] and len(tr) == 4
    assert all(p.parent.name == ("CT_COVID" if y == 0 else "CT_NonCOVID") for p, y in tr.items)
    assert len(split_files(root, "test")) == 2
    with pytest.raises(FileNotFoundError, match="val"):
        split_files(root, "val")
    # without the file-name cue the folder is matched by its last word (never CT_NonCOVID for COVID)
    for f in (root / "Data-split").rglob("*.txt"):
        f.rename(f.with_name(f.name.replace("CT_COVID", "").replace("CT_NonCOVID", "")))
    tr2 = split_files(root, "train")
    assert [p.parent.name for p, _ in tr2.items] == ["CT_COVID"] * 2 + ["CT_NonCOVID"] * 2


def test_covid_ct_official_split():
    root = shared_path("data", "covid-ct")
    sizes = {}
    for s in ("train", "val", "test"):
        ds = split_files(root, s)
        assert ds.class_names == ["COVID", "NonCOVID"]
        sizes[s] = len(ds)
    assert sizes == {"train": 425, "val": 118, "test": 203}
    assert sum(sizes.values()) == 746
    ds = split_files(root, "val", build_transforms(False))
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and y == 0


def test_make_splits_stratified_seeded():
    items = [f"img{i}" for i in range(50)]
    labels = ["a"] * 30 + ["b"] * 20
    s1 = make_splits(items, labels, (0.7, 0.1, 0.2), seed=3)
    s2 = make_splits(list(reversed(items)), list(reversed(labels)), (0.7, 0.1, 0.2), seed=3)
    assert s1 == s2  # independent of input order
    assert make_splits(items, labels, seed=4) != s1
    counts = {k: (sum(lab == "a" for _, lab in v), sum(lab == "b" for _, lab in v)) for k, v in s1.items()}
    assert counts == {"train": (21, 14), "val": (3, 2), "test": (6, 4)}
    assert sorted(i for v in s1.values() for i, _ in v) == sorted(items)


def test_make_kfold_and_csv(tmp_path):
    items = [f"case{i:02d}" for i in range(23)]
    labels = [i % 3 for i in range(23)]
    folds = make_kfold(items, labels, k=5, seed=0)
    vals = [i for f in folds for i, _ in f["val"]]
    assert sorted(vals) == sorted(items)  # each item validated exactly once
    assert all(len(f["train"]) + len(f["val"]) == 23 for f in folds)
    assert max(len(f["val"]) for f in folds) - min(len(f["val"]) for f in folds) <= 1
    paths = write_split_csvs(folds[0], tmp_path, relative_paths=False, header=("case_id", "label"))
    assert read_split_csv(paths["val"]) == [(i, str(lab)) for i, lab in folds[0]["val"]]
    with pytest.raises(FileExistsError):
        write_split_csvs(folds[0], tmp_path)
