"""glfuse.export: ONNX / TorchScript / torch.export files of the three model families match eager (small models)."""

from __future__ import annotations

import json

import pytest
import torch

from glfuse.checkpoint import save_model
from glfuse.export import export_model
from glfuse.registry import create_model

SMALL = {
    "hifuse": ("hifuse_tiny", {"num_classes": 3, "dims": (32, 64, 128, 256), "num_heads": (1, 2, 4, 8)}, 64),
    "vdpf": ("vdpf", {"num_classes": 3, "img_size": 32, "embed_dim": 64, "depth": 1, "num_heads": 4,
                      "cross_mlp_hidden": 64}, 32),
    "mactfusion": ("mactfusion", {"dims": (8, 16, 24)}, 16),
    "baseline": ("efficientnet_b0", {"num_classes": 2}, 64),
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model_dir(tmp_path, family: str):
    arch, kwargs, size = SMALL[family]
    torch.manual_seed(0)
    model = create_model(arch, **kwargs)
    return save_model(model, tmp_path / family, extra={"img_size": size, "preprocessing": {"size": size}})


@pytest.mark.parametrize("family", ["hifuse", "vdpf", "mactfusion", "baseline"])
def test_onnx_matches_eager(tmp_path, family):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    meta = export_model(_model_dir(tmp_path, family), tmp_path / "m", "onnx")
    assert (tmp_path / "m.onnx").is_file()
    assert meta["check"]["max_abs_diff"] <= 1e-4 and meta["check"]["batch"] == 3
    assert json.loads((tmp_path / "m.onnx.json").read_text())["preprocessing"] == {"size": SMALL[family][2]}
    assert meta["inputs"][0]["shape"][0] == "batch"
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(tmp_path / family, tmp_path / "m.onnx", "onnx")


@pytest.mark.parametrize("fmt", ["torchscript", "exported"])
def test_torch_formats_match_eager(tmp_path, fmt):
    meta = export_model(_model_dir(tmp_path, "mactfusion"), tmp_path / "m", fmt)
    assert meta["check"]["max_abs_diff"] <= 1e-4 and meta["format"] == fmt


def test_bad_format(tmp_path):
    with pytest.raises(ValueError, match="onnx"):
        export_model(tmp_path, tmp_path / "x", "tflite")
