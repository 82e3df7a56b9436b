"""glfuse.models.prepare_inference (reference / fast / portable paths) and the shared layers in glfuse.layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glfuse.layers import maxvit, window
from glfuse.layers.attention import Attention, Mlp, PatchEmbed, attend
from glfuse.layers.conv import FFTConv2d, NCHWConv2d, PointwiseConv2d
from glfuse.models import prepare_inference
from glfuse.models.mactfusion import MACTFusion
from glfuse.registry import create_model


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _classes(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules()]


def _trained_like_mactfusion() -> MACTFusion:
    torch.manual_seed(0)
    model = MACTFusion()
    with torch.no_grad():  # non-trivial BatchNorm statistics and SAFM γ/β (zero at init), so every path does work
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        for name, p in model.named_parameters():
            if ".gamma." in name or ".beta." in name:
                p.normal_(0, 0.02)
    return model


def test_fast_path_matches_reference_and_is_explicit_and_undoable():
    model = _trained_like_mactfusion().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    vis, ir = torch.rand(2, 1, 40, 36), torch.rand(2, 1, 40, 36)
    with torch.no_grad():
        ref = model(vis, ir)
    assert not any(c.startswith("Fast") for c in _classes(model))

    out_model = prepare_inference(model, "fast")
    assert out_model is model and not model.training and model.glfuse_prepared == "fast"
    assert model.glfuse_prepared_variants["FastSDConv"] == 6 and model.glfuse_prepared_variants["FastMACTFusion"] == 1
    classes = _classes(model)
    prepare_inference(model, "fast")  # idempotent
    assert _classes(model) == classes
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        fast = model(vis, ir)
    assert (fast - ref).abs().max() < 1e-4
    with pytest.raises(RuntimeError, match="prepared for fast inference"):
        model(vis, ir)  # autograd on

    prepare_inference(model, "reference")
    assert not any(c.startswith("Fast") for c in _classes(model)) and model.glfuse_prepared is None
    model.train()
    loss = model(vis, ir).square().mean()
    loss.backward()  # the reference path trains again
    assert model.vis_dfe.conv1.weight.grad is not None


def test_portable_path_has_no_fft_and_matches_reference():
    model = _trained_like_mactfusion().eval()
    vis, ir = torch.rand(1, 1, 24, 32), torch.rand(1, 1, 24, 32)
    with torch.no_grad():
        ref = model(vis, ir)
    prepare_inference(model, "portable")
    assert model.glfuse_prepared == "portable"
    assert not any(isinstance(m, FFTConv2d) for m in model.modules())
    assert type(model.vis_dfe.conv_large) is nn.Conv2d
    with torch.no_grad():
        out = model(vis, ir)
    assert (out - ref).abs().max() < 1e-4
    model(vis, ir)  # portable modules keep autograd working (no hook)
    prepare_inference(model, "reference")
    assert type(model.vis_dfe.conv_large) is FFTConv2d


@pytest.mark.parametrize("name,kwargs", [("hifuse_tiny", {"num_classes": 3}),
                                         ("vdpf", {"img_size": 32, "embed_dim": 64, "depth": 1, "num_heads": 4})])
def test_models_without_variants_are_put_in_eval_mode(name, kwargs):
    model = create_model(name, **kwargs).train()
    before = _classes(model)
    prepare_inference(model, "fast")
    assert not model.training and _classes(model) == before and model.glfuse_prepared_variants == {}


def test_bad_mode():
    with pytest.raises(ValueError, match="fast"):
        prepare_inference(nn.Linear(2, 2), "quick")


# ----------------------------------------------------------------------------------------------------------------------
# shared layers


def test_one_relative_position_index_helper():
    assert maxvit.relative_position_index is window.relative_position_index
    idx = window.relative_position_index(3)
    assert idx.shape == (9, 9) and int(idx.max()) == 24 and torch.equal(idx.diagonal(), torch.full((9,), 12))


@pytest.mark.parametrize("learned_bias", [False, True])
def test_attention_matches_explicit_softmax(learned_bias):
    torch.manual_seed(0)
    att = Attention(32, 4, scale=0.3)
    x = torch.randn(3, 5, 10, 32)  # any leading dimensions
    bias = torch.randn(4, 10, 10, requires_grad=learned_bias)
    q, k, v = att.qkv(x).view(3, 5, 10, 3, 4, 8).permute(3, 0, 1, 4, 2, 5)
    ref = att.proj(((q @ k.transpose(-1, -2)) * 0.3 + bias).softmax(-1).matmul(v).transpose(-3, -2).reshape(3, 5, 10, 32))
    out = att(x, bias)
    assert (out - ref).abs().max() < 1e-5
    if learned_bias:  # explicit-map kernel: the bias gets its gradient
        out.sum().backward()
        assert bias.grad is not None and bias.grad.abs().sum() > 0
    d = 8
    assert torch.allclose(attend(q, k, v), ((q @ k.transpose(-1, -2)) * d**-0.5).softmax(-1) @ v, atol=1e-5)


def test_mlp_and_patch_embed():
    torch.manual_seed(0)
    mlp = Mlp(6, 12)
    x = torch.randn(2, 6)
    assert torch.allclose(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))
    pe = PatchEmbed(1, 8, 4, norm=True, flatten=False, pad=True)
    img = torch.randn(2, 1, 10, 13)
    grid = pe(img)
    assert grid.shape == (2, 3, 4, 8)
    ref = pe.norm(pe.proj(F.pad(img, (0, 3, 0, 2))).permute(0, 2, 3, 1))
    assert torch.allclose(grid, ref)
    tokens = PatchEmbed(1, 8, 4)(torch.randn(2, 1, 8, 12))
    assert tokens.shape == (2, 6, 8)


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_conv_layers_equal_conv2d(fmt):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 11, 9).contiguous(memory_format=fmt)
    pw = PointwiseConv2d(8, 5)
    out = pw(x)
    assert (out - F.conv2d(x, pw.weight, pw.bias)).abs().max() < 1e-5
    assert out.is_contiguous(memory_format=fmt)
    nchw = NCHWConv2d(8, 6, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    assert nchw.weight.is_contiguous()  # stays NCHW
    out = nchw(x)
    assert (out - F.conv2d(x, nchw.weight, padding=1)).abs().max() < 1e-5
    assert out.is_contiguous(memory_format=fmt)
    fft = FFTConv2d(8, 4, 7, padding=3, groups=4, bias=False)
    assert (fft(x) - F.conv2d(x, fft.weight, padding=3, groups=4)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="stride 1"):
        FFTConv2d(8, 4, 7, stride=2, bias=False)
