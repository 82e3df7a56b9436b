"""glfuse.layers.fused: oneDNN post-op kernels equal the eager maths, and the eager fallback takes over when needed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glfuse.layers import fused

CL = torch.channels_last


def _act(y: torch.Tensor, act: str) -> torch.Tensor:
    return {"none": lambda t: t, "gelu": F.gelu, "sigmoid": torch.sigmoid,
            "leaky_relu": lambda t: F.leaky_relu(t, 0.2)}[act](y)


@pytest.fixture(params=[True, False], ids=["onednn", "eager"])
def mode(request, monkeypatch):
    if request.param:
        if not fused.fusion_available():
            pytest.skip("this PyTorch build has no usable oneDNN post-op kernels")
    else:
        monkeypatch.setattr(fused, "fusion_available", lambda: False)
    return request.param


@pytest.mark.parametrize("act", ["none", "gelu", "leaky_relu", "sigmoid"])
def test_linear_matches_eager(mode, act):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 33, 48, generator=g)
    w, b = torch.randn(72, 48, generator=g) * 0.2, torch.randn(72, generator=g)
    with torch.no_grad():
        out = fused.linear(x, w, b, act=act, slope=0.2)
        nob = fused.linear(x, w, None, act=act, slope=0.2)
    assert out.shape == (5, 33, 72)
    assert (out - _act(F.linear(x, w, b), act)).abs().max() < 2e-5
    assert (nob - _act(F.linear(x, w), act)).abs().max() < 2e-5


def test_linear_residual_and_strided_input(mode):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(33, 5, 48, generator=g).transpose(0, 1)  # not contiguous
    w, b = torch.randn(48, 48, generator=g) * 0.2, torch.randn(48, generator=g)
    r = torch.randn(5, 33, 48, generator=g)
    r0 = r.clone()
    with torch.no_grad():
        assert fused.use_fusion(x, w) == mode
        out = fused.linear(x, w, b, add=r)
    assert (out - (F.linear(x, w, b) + r0)).abs().max() < 2e-5
    assert torch.equal(r, r0)  # the residual is not modified


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
@pytest.mark.parametrize(("k", "groups", "act"), [(3, 1, "leaky_relu"), (3, 1, "gelu"), (1, 1, "none"),
                                                  (1, 1, "sigmoid"), (3, 12, "gelu")])
def test_conv2d_matches_eager(mode, memory_format, k, groups, act):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 12, 19, 23, generator=g).contiguous(memory_format=memory_format)
    w = torch.randn(24, 12 // groups, k, k, generator=g) * 0.2
    b = torch.randn(24, generator=g)
    with torch.no_grad():
        out = fused.conv2d(x, w, b, padding=k // 2, groups=groups, act=act, slope=0.2)
    ref = _act(F.conv2d(x, w, b, padding=k // 2, groups=groups), act)
    assert out.shape == ref.shape and (out - ref).abs().max() < 2e-5
    if mode and memory_format is CL:
        assert out.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("other_format", [CL, torch.contiguous_format])
def test_conv2d_add(mode, other_format):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 21, 17, generator=g).contiguous(memory_format=CL)
    w, b = torch.randn(8, 16, 1, 1, generator=g) * 0.2, torch.randn(8, generator=g)
    r = torch.randn(1, 8, 21, 17, generator=g).contiguous(memory_format=other_format)
    r0 = r.clone()
    with torch.no_grad():
        out = fused.conv2d(x, w, b, add=r)
    assert (out - (F.conv2d(x, w, b) + r0)).abs().max() < 2e-5
    assert torch.equal(r, r0)


def test_autograd_takes_the_eager_path(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(a))  # must not be reached
    x = torch.randn(7, 16, requires_grad=True)
    w, b = torch.randn(8, 16, requires_grad=True), torch.randn(8, requires_grad=True)
    y = fused.linear(x, w, b, act="gelu")
    y.sum().backward()
    assert not calls and x.grad is not None and w.grad is not None
    assert torch.allclose(y, F.gelu(F.linear(x, w, b)))


def test_bad_arguments():
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="unknown activation"):
        fused.linear(x, w, act="relu6")
    with pytest.raises(ValueError, match="not fused"):
        fused.linear(x, w, act="gelu", add=torch.randn(3, 5))
    with pytest.raises(ValueError, match="unknown activation"):
        fused.conv2d(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 3, 3), act="tanh")


def test_env_switch_disables(monkeypatch):
    fused.fusion_available.cache_clear()
    monkeypatch.setenv("GLFUSE_ONEDNN_FUSION", "0")
    try:
        assert fused.fusion_available() is False
        assert not fused.use_fusion(torch.randn(2))
    finally:
        fused.fusion_available.cache_clear()
