"""glfuse.files: the atomic writers every system uses (CSV, JSON, text/Markdown) and their error contract."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from glfuse import checkpoint, files


def test_write_csv_rows_of_dicts_and_sequences(tmp_path):
    p = files.write_csv(tmp_path / "sub" / "a.csv", [{"x": 1, "y": 2.5}, {"x": 3, "z": "w"}])
    assert list(csv.reader(open(p))) == [["x", "y", "z"], ["1", "2.5", ""], ["3", "", "w"]]
    q = files.write_csv(tmp_path / "b.csv", [[1, "a"], [2, "b"]], header=["n", "s"])
    assert q.read_text().splitlines() == ["n,s", "1,a", "2,b"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_non_utf8_text_is_escaped_with_a_warning_naming_it(tmp_path):
    name = os.fsdecode(b"scan\xe9.png")  # a file name that is not valid UTF-8 (lone surrogate)
    with pytest.warns(UserWarning, match=r"scan\\udce9\.png.*not valid UTF-8"):
        files.write_csv(tmp_path / "p.csv", [[name, 1]], header=["path", "pred"])
    assert (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()[1] == "scan\\udce9.png,1"
    files.save_json({"path": name, "v": np.float32(0.5), "t": torch.tensor([1, 2])}, tmp_path / "j.json")
    assert json.loads((tmp_path / "j.json").read_text()) == {"path": name, "v": 0.5, "t": [1, 2]}
    files.write_markdown(tmp_path / "r.md", ["# t", name])
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == "# t\nscan\\udce9.png\n"


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = files.write_text(tmp_path / "x.txt", "old")

    def boom(tmp: str) -> None:
        open(tmp, "w").write("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        files.atomic_write(target, boom)
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["x.txt"]


def test_all_or_nothing_removes_what_the_block_created(tmp_path):
    keep = files.write_text(tmp_path / "keep.txt", "k")
    with pytest.raises(ValueError):
        with files.all_or_nothing([tmp_path / "new.txt", keep]):
            files.write_text(tmp_path / "new.txt", "n")
            raise ValueError("later step failed")
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_one_line_write_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(files.WriteError, match=r"ro/x\.csv: cannot write: permission denied"):
            files.write_csv(ro / "x.csv", [[1]])
    finally:
        ro.chmod(0o700)


def test_checkpoint_re_exports_the_file_helpers():
    assert checkpoint.atomic_write is files.atomic_write and checkpoint.save_json is files.save_json
