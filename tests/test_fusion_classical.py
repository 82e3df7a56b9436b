"""Classical fusion baselines: shapes, exact rules, perfect reconstruction, range."""

from __future__ import annotations

import numpy as np
import pytest

from glfuse.fusion import classical as C

SHAPES = [(64, 64), (37, 51), (1, 9), (9, 1), (17, 16), (3, 3)]


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(shape), rng.random(shape)


def test_registry():
    assert set(C.CLASSICAL) == {"average", "max", "laplacian", "dwt"}
    assert all(callable(fn) for fn in C.CLASSICAL.values())


@pytest.mark.parametrize("name", sorted(C.CLASSICAL))
@pytest.mark.parametrize("shape", SHAPES)
def test_shape_dtype_range(name, shape):
    a, b = _pair(shape)
    out = C.CLASSICAL[name](a, b)
    assert out.shape == shape and out.dtype == np.float64
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_average_and_max_exact():
    a, b = _pair((31, 45), seed=1)
    assert np.array_equal(C.CLASSICAL["average"](a, b), (a + b) / 2)
    assert np.array_equal(C.CLASSICAL["max"](a, b), np.maximum(a, b))
    assert np.array_equal(C.CLASSICAL["average"](a.astype(np.float32), b), (a.astype(np.float32) + b) / 2)


@pytest.mark.parametrize("name", ["laplacian", "dwt"])
@pytest.mark.parametrize("shape", SHAPES + [(255, 257), (128, 96)])
def test_perfect_reconstruction_self_fusion(name, shape):
    a, _ = _pair(shape, seed=2)
    out = C.CLASSICAL[name](a, a.copy(), clip=False)
    assert np.abs(out - a).max() <= 1e-6


@pytest.mark.parametrize("levels", [1, 2, 5, 9])
def test_levels_and_reconstruction(levels):
    a, _ = _pair((45, 70), seed=3)
    assert np.abs(C.fuse_laplacian(a, a, levels=levels, clip=False) - a).max() <= 1e-6
    assert np.abs(C.fuse_dwt(a, a, levels=levels, clip=False) - a).max() <= 1e-6


def test_multiscale_rules_are_sensible():
    # a: left half textured, right half flat 0.5; b: the opposite. Fusion keeps the texture of both halves.
    rng = np.random.default_rng(4)
    tex = 0.5 + 0.4 * np.sign(rng.standard_normal((64, 64)))
    a = np.full((64, 64), 0.5)
    b = np.full((64, 64), 0.5)
    a[:, :32], b[:, 32:] = tex[:, :32], tex[:, 32:]
    avg = C.fuse_average(a, b)
    for name in ("laplacian", "dwt"):
        out = C.CLASSICAL[name](a, b)
        assert np.abs(out - tex).mean() < np.abs(avg - tex).mean() / 2, name
    # the DWT approximation is the average: constant images fuse to their mean
    assert np.allclose(C.fuse_dwt(np.full((9, 7), 0.2), np.full((9, 7), 0.6)), 0.4)
    assert np.allclose(C.fuse_laplacian(np.full((9, 7), 0.2), np.full((9, 7), 0.6)), 0.4)


def test_colour_and_errors():
    a, b = _pair((20, 22, 3), seed=5)
    out = C.fuse_dwt(a, b)
    assert out.shape == (20, 22, 3)
    assert np.allclose(out[..., 1], C.fuse_dwt(a[..., 1], b[..., 1]))
    with pytest.raises(ValueError, match="same shape"):
        C.fuse_max(a, b[:-1])
    with pytest.raises(ValueError):
        C.fuse_average(np.zeros(5), np.zeros(5))
