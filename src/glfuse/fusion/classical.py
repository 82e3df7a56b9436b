"""Classical (non-learned) image-fusion baselines.

Every method is ``fuse(a, b) -> np.ndarray``: float arrays in [0, 1] of the same shape, any size (odd sizes
included), 2-D or H×W×C (channels fused independently).  Outputs are float64 in [0, 1] (multi-scale methods may
overshoot slightly and are clipped; pass ``clip=False`` to keep the raw reconstruction).

- ``average``: (A + B) / 2.
- ``max``: pixel-wise maximum.
- ``laplacian``: Laplacian pyramid (Burt & Adelson 1983; REDUCE = 5-tap binomial [1 4 6 4 1]/16 with reflect borders
  then ×2 subsampling, EXPAND = its polyphase interpolation with replicated borders; ``levels`` = 4 detail levels),
  max-absolute rule for the detail bands, average for the base band.
- ``dwt``: orthonormal Haar wavelet transform (``levels`` = 3), max-absolute rule for the detail sub-bands, average
  for the approximation.  Odd sizes are handled by edge-replicating one row/column before each decomposition level
  and cropping after reconstruction.

Both multi-scale transforms reconstruct exactly (to float rounding), so fusing an image with itself returns it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

__all__ = ["CLASSICAL", "fuse_average", "fuse_dwt", "fuse_laplacian", "fuse_max"]

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _prepare(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected H×W or H×W×C arrays, got shape {a.shape}")
    return a, b


def _per_channel(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return fn(a, b)
    return np.stack([fn(a[..., c], b[..., c]) for c in range(a.shape[-1])], axis=-1)


def _max_abs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) >= np.abs(y), x, y)


def fuse_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel-wise mean."""
    a, b = _prepare(a, b)
    return (a + b) / 2.0


def fuse_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel-wise maximum."""
    a, b = _prepare(a, b)
    return np.maximum(a, b)


# ---- Laplacian pyramid ---------------------------------------------------------------------------------------------
def _blur(x: np.ndarray) -> np.ndarray:
    y = ndimage.correlate1d(x, _BINOMIAL, axis=0, mode="reflect")
    return ndimage.correlate1d(y, _BINOMIAL, axis=1, mode="reflect")


def _reduce(x: np.ndarray) -> np.ndarray:
    return _blur(x)[::2, ::2]


def _expand1d(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Burt–Adelson EXPAND along ``axis`` to length ``n``: the binomial kernel ×2 split into its polyphase parts
    (even outputs [1 6 1]/8, odd outputs [1 1]/2) with edge-replicated borders, so constants stay constant."""
    x = np.moveaxis(x, axis, 0)
    xp = np.concatenate([x[:1], x, x[-1:]], axis=0)
    m = x.shape[0]
    out = np.empty((n, *x.shape[1:]))
    out[0::2] = (xp[:m] + 6.0 * xp[1 : m + 1] + xp[2 : m + 2])[: (n + 1) // 2] / 8.0
    out[1::2] = ((xp[1 : m + 1] + xp[2 : m + 2]) / 2.0)[: n // 2]
    return np.moveaxis(out, 0, axis)


def _expand(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return _expand1d(_expand1d(x, shape[0], 0), shape[1], 1)


def _laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    pyr = []
    cur = x
    for _ in range(levels):
        if min(cur.shape) < 2:
            break
        nxt = _reduce(cur)
        pyr.append(cur - _expand(nxt, cur.shape))
        cur = nxt
    pyr.append(cur)
    return pyr


def _collapse(pyr: list[np.ndarray]) -> np.ndarray:
    cur = pyr[-1]
    for lap in reversed(pyr[:-1]):
        cur = lap + _expand(cur, lap.shape)
    return cur


def fuse_laplacian(a: np.ndarray, b: np.ndarray, *, levels: int = 4, clip: bool = True) -> np.ndarray:
    """Laplacian-pyramid fusion: max-abs detail bands, averaged base band."""
    a, b = _prepare(a, b)

    def one(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px, py = _laplacian_pyramid(x, levels), _laplacian_pyramid(y, levels)
        fused = [_max_abs(u, v) for u, v in zip(px[:-1], py[:-1])] + [(px[-1] + py[-1]) / 2.0]
        return _collapse(fused)

    out = _per_channel(one, a, b)
    return np.clip(out, 0.0, 1.0) if clip else out


# ---- Haar DWT ------------------------------------------------------------------------------------------------------
_S = 1.0 / np.sqrt(2.0)


def _haar2(x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One level of the orthonormal 2-D Haar transform of an even-sized array → (LL, (LH, HL, HH))."""
    lo = (x[0::2] + x[1::2]) * _S
    hi = (x[0::2] - x[1::2]) * _S
    ll, lh = (lo[:, 0::2] + lo[:, 1::2]) * _S, (lo[:, 0::2] - lo[:, 1::2]) * _S
    hl, hh = (hi[:, 0::2] + hi[:, 1::2]) * _S, (hi[:, 0::2] - hi[:, 1::2]) * _S
    return ll, (lh, hl, hh)


def _ihaar2(ll: np.ndarray, details: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    lh, hl, hh = details
    h, w = ll.shape
    lo = np.empty((h, 2 * w))
    hi = np.empty((h, 2 * w))
    lo[:, 0::2], lo[:, 1::2] = (ll + lh) * _S, (ll - lh) * _S
    hi[:, 0::2], hi[:, 1::2] = (hl + hh) * _S, (hl - hh) * _S
    x = np.empty((2 * h, 2 * w))
    x[0::2], x[1::2] = (lo + hi) * _S, (lo - hi) * _S
    return x


def _pad_even(x: np.ndarray) -> np.ndarray:
    return np.pad(x, ((0, x.shape[0] % 2), (0, x.shape[1] % 2)), mode="edge")


def _dwt(x: np.ndarray, levels: int):
    bands, shapes = [], []
    cur = x
    for _ in range(levels):
        if min(cur.shape) < 2:
            break
        shapes.append(cur.shape)
        cur, det = _haar2(_pad_even(cur))
        bands.append(det)
    return cur, bands, shapes


def _idwt(approx: np.ndarray, bands, shapes) -> np.ndarray:
    cur = approx
    for det, shape in zip(reversed(bands), reversed(shapes)):
        cur = _ihaar2(cur, det)[: shape[0], : shape[1]]
    return cur


def fuse_dwt(a: np.ndarray, b: np.ndarray, *, levels: int = 3, clip: bool = True) -> np.ndarray:
    """Haar-DWT fusion: max-abs detail coefficients, averaged approximation."""
    a, b = _prepare(a, b)

    def one(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ax, bx, shapes = _dwt(x, levels)
        ay, by, _ = _dwt(y, levels)
        bands = [tuple(_max_abs(u, v) for u, v in zip(dx, dy)) for dx, dy in zip(bx, by)]
        return _idwt((ax + ay) / 2.0, bands, shapes)

    out = _per_channel(one, a, b)
    return np.clip(out, 0.0, 1.0) if clip else out


CLASSICAL: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "average": fuse_average,
    "max": fuse_max,
    "laplacian": fuse_laplacian,
    "dwt": fuse_dwt,
}
