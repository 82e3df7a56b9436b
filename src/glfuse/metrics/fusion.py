"""Image-fusion quality metrics with every convention stated explicitly.

Fusion papers disagree mostly because their metric code differs.  Every function here takes its convention as an
explicit keyword argument; the defaults follow ``specs/fusion-metrics.md`` (the most common convention), and
:data:`REFERENCE_CONVENTIONS` reproduces the reference evaluator (CDDFuse ``utils/Evaluator.py``, commit fd8da1f3) that
produced the golden values in ``golden/fusion-metrics``.

Notation: ``a``, ``b`` are the sources (grey, or the Y channel of a colour source), ``f`` is the fused image; all are
2-D arrays (numpy or torch) on the **0–255 scale**, computed in float64.  A colour image is evaluated on its BT.601 Y
channel (``to_grey_y``, from :mod:`glfuse.data.color`: Y = 0.299 R + 0.587 G + 0.114 B).  Functions here take arrays
only; folder evaluation (reading files) is :func:`glfuse.fusion.io_metrics.evaluate_folder`.

Definitions (defaults in brackets; "ref" = how the CDDFuse evaluator differs, if at all)
--------------------------------------------------------------------------------------
EN    entropy −Σ p log p of the 256-bin histogram of uint8(round(F)) [base 2 = bits; ref identical].  Values are clipped
      to 0–255 before the cast (the reference would wrap negatives; irrelevant for saved images).
SD    population standard deviation sqrt(mean((F − mean F)²)) [ddof 0; ref identical, computed in float32].
SF    spatial frequency sqrt(RF² + CF²), RF/CF the root-mean-square of horizontal/vertical first differences [ref id.].
AG    average gradient mean(sqrt((Gx² + Gy²)/2)), central differences inside, one-sided at the borders (numpy
      ``gradient``) [ref identical].
MI    MI(F, A) + MI(F, B) from 256×256 joint histograms of the integer grey values (inputs rounded and clipped to
      0–255) [base e = nats, as the reference (sklearn ``mutual_info_score``); MATLAB fusion code reports bits:
      ``base=2`` = nats × 1/ln 2].
SCD   sum of correlation of differences (Aslantas & Bendes 2015): corr(F − B, A) + corr(F − A, B) [ref identical].
VIF   VIFp(A, F) + VIFp(B, F), LIVE pixel-domain multi-scale VIF (Sheikh & Bovik 2006; 4 scales, Gaussian window
      N = 2^(5−s)+1, σ = N/5, σ_n² = 2, 'valid' filtering): torchmetrics' ``visual_information_fidelity`` algorithm
      (preds = F, target = source), by default re-implemented in vectorised numpy float64 (~100× faster here, equal to
      torchmetrics to 1e-10 — tested); ``backend="torchmetrics"`` calls the library [reduction "sum"; ref identical].
      This is *not* VIFF (Han et al. 2013).
Qabf  Q^{AB/F} (Xydeas & Petrović 2000): 3×3 Sobel (zero padding, 'same'), strength g, orientation
      α = atan(Sy/Sx) (π/2 where Sx = 0), Γg 0.9994, κg −15, σg 0.5, Γα 0.9879, κα −22, σα 0.8,
      Q = Σ(Q^AF g_A + Q^BF g_B) / Σ(g_A + g_B).  ``equal_gradient`` decides the strength ratio where g_S == g_F:
      "reference" [default] uses g_F there (the quirk of the widely used MATLAB code, kept by the reference evaluator),
      "one" uses the mathematically consistent min/max ratio = 1.  The two differ by ~1e-4 on typical images.
SSIM  SSIM(F, A) + SSIM(F, B) (Wang et al. 2004) with scikit-image ``structural_similarity`` defaults: 7×7 uniform
      window, sample covariance (N/(N−1)), K = (0.01, 0.03), mean over the region not touched by the border
      [data_range 255, reduction "sum"].  ref: data_range effectively 2 (old scikit-image default for float input;
      ``data_range=2`` reproduces the golden column ``SSIM``).
MS_SSIM  Wang et al. 2003 multi-scale SSIM (5 scales, Gaussian 11/1.5, K = (0.01, 0.03), weights 0.0448, 0.2856,
      0.3001, 0.2363, 0.1333, "relu" normalisation) via torchmetrics in float64 [data_range 255, reduction "mean" over
      the two sources; not in the reference evaluator; matches golden ``MSSSIM_tm_mean``].  Needs images ≥ 176 px.
      Not the multi-exposure MEF-SSIM that some MATLAB fusion code calls "MS_SSIM".
Qw    Piella & Heijmans 2003 weighted fusion quality: λ = s_A/(s_A + s_B) from local variances (λ = 1/2 where both are
      0), c(w) = max(s_A, s_B)/Σ max (uniform weights if Σ max = 0), Qw = Σ_w c(w)[λ Q0(A,F|w) + (1−λ) Q0(B,F|w)].
      variant "ssim" [default]: Q0 is the SSIM map (Gaussian 11/1.5, L = 255, K = (0.01, 0.03), 'valid' region),
      saliency = Gaussian-weighted local variance (Zheng Liu's ``metricPeilla`` sw = 2; golden ``Qw_piella_sw2``).
      variant "uiqi": Piella's original Q0 = universal image quality index (Wang & Bovik 2002) on 8×8 sliding
      uniform windows ('valid'), saliency = local variance in the same window; flat windows follow Wang & Bovik
      (Q0 = 1 where both windows are constant and equal).  Never returns the edge term (some toolboxes' "Qw" do).
Qe    edge-dependent quality Qe = Qw(A, B, F) · Qw(A', B', F')^α with A', B', F' the Sobel gradient magnitudes
      (same Sobel as Qabf) [α = 1, variant "ssim"].  A negative edge term is clamped to 0 before the power.
PSNR  10 log10(peak² / MSE) with MSE the mean over the two sources [peak 255; ref: peak = max(F) → ``peak="max"``].
      Identical images give +inf.
CC    mean of corr(F, A) and corr(F, B) [reduction "mean"; ref identical].
MSE   mean of MSE(F, A) and MSE(F, B) on 0–255 [reduction "mean"; ref identical].

Degenerate inputs (constant images) never give NaN: a correlation with a zero-variance operand is defined as 0 (CC,
SCD); a VIFp term whose source carries no information (constant source, zero denominator) is 0; Qabf with no source
edges at all (Σ(g_A + g_B) = 0) is 0 (note the zero-padded Sobel sees the border of a constant non-zero image as
an edge, as the reference does); SSIM/MS-SSIM are stabilised by their constants; MI/EN of constant images are 0.

References: Xydeas & Petrović, Electron. Lett. 36(4) 2000; Piella & Heijmans, ICIP 2003; Wang, Bovik, Sheikh &
Simoncelli, IEEE TIP 13(4) 2004; Wang, Simoncelli & Bovik, Asilomar 2003; Sheikh & Bovik, IEEE TIP 15(2) 2006;
Aslantas & Bendes, AEU 69(12) 2015; Zhao et al., CDDFuse, CVPR 2023 (reference evaluator).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from glfuse.data.color import to_grey_y  # noqa: F401 - re-exported: BT.601 Y of a colour image

__all__ = [
    "CONVENTIONS",
    "METRIC_NAMES",
    "REFERENCE_CONVENTIONS",
    "ag",
    "cc",
    "describe_conventions",
    "en",
    "evaluate",
    "mi",
    "ms_ssim",
    "mse",
    "psnr",
    "qabf",
    "qe",
    "qw",
    "scd",
    "sd",
    "sf",
    "ssim",
    "to_grey_y",
    "vif",
]

METRIC_NAMES: tuple[str, ...] = (
    "EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "Qw", "Qe", "SSIM", "MS_SSIM", "PSNR", "CC", "MSE",
)  # fmt: skip

#: Default conventions (``specs/fusion-metrics.md``); keys are the keyword arguments of :func:`evaluate`.
CONVENTIONS: dict[str, Any] = {
    "en_base": 2.0,
    "mi_base": math.e,
    "vif_sigma_n_sq": 2.0,
    "vif_reduction": "sum",
    "qabf_equal_gradient": "reference",
    "qw_variant": "ssim",
    "qe_alpha": 1.0,
    "ssim_data_range": 255.0,
    "ssim_reduction": "sum",
    "ms_ssim_data_range": 255.0,
    "ms_ssim_reduction": "mean",
    "psnr_peak": 255.0,
    "cc_reduction": "mean",
    "mse_reduction": "mean",
}

#: The CDDFuse evaluator's conventions (golden columns ``PSNR`` and ``SSIM``); all other defaults already agree.
REFERENCE_CONVENTIONS: dict[str, Any] = {**CONVENTIONS, "psnr_peak": "max", "ssim_data_range": 2.0}

_DESCRIPTIONS = {
    "scale": "all images on the 0-255 scale, float64",
    "colour": "colour images evaluated on BT.601 Y = 0.299R + 0.587G + 0.114B against grey / Y sources",
    "sources": "A, B = sources, F = fused; two-source metrics are combined as stated by *_reduction",
    "EN": "entropy of the 256-bin histogram of uint8(round(F)), base en_base",
    "MI": "MI(F,A)+MI(F,B), 256x256 joint histograms of integer grey values, base mi_base (e = nats)",
    "VIF": "VIFp(A,F)+VIFp(B,F), LIVE pixel-domain VIF via torchmetrics, sigma_n^2 = vif_sigma_n_sq",
    "Qabf": "Xydeas-Petrovic; qabf_equal_gradient='reference' keeps the MATLAB/CDDFuse G=g_F where g_S==g_F",
    "Qw": "Piella-Heijmans weighted quality, qw_variant ('ssim' = Gaussian 11/1.5 SSIM map, L=255, 'valid')",
    "Qe": "Qw(A,B,F) * Qw(Sobel edges)^qe_alpha",
    "SSIM": "skimage defaults (7x7 uniform, sample covariance, K=(.01,.03)), data_range ssim_data_range",
    "MS_SSIM": "Wang 2003 via torchmetrics (Gaussian 11/1.5, 5 scales, relu), data_range ms_ssim_data_range",
    "PSNR": "10 log10(peak^2 / MSE), peak = psnr_peak (255 or 'max' = max(F)), MSE = mean over sources",
}


def describe_conventions(**overrides: Any) -> dict[str, Any]:
    """The conventions in use (defaults updated with ``overrides``) plus a plain-text description; JSON-serialisable.

    Write this next to every table of metric values.
    """
    conv = _resolve(overrides)
    out: dict[str, Any] = dict(conv)
    out["matches_reference_evaluator"] = {k: conv[k] == v for k, v in REFERENCE_CONVENTIONS.items()}
    out["description"] = dict(_DESCRIPTIONS)
    return out


def _resolve(overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = set(overrides) - set(CONVENTIONS)
    if unknown:
        raise TypeError(f"unknown metric convention(s) {sorted(unknown)}; known: {sorted(CONVENTIONS)}")
    return {**CONVENTIONS, **overrides}


# --------------------------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------------------------
def _as_2d(x: Any, name: str = "image") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim > 2 and all(s == 1 for s in arr.shape[:-2]):
        arr = arr.reshape(arr.shape[-2:])
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D grey image (use to_grey_y for colour), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        raise ValueError(f"{name} image contains {n_nan} NaN and {int((~np.isfinite(arr)).sum()) - n_nan} inf value(s); "
                         "fusion metrics need finite values")
    return arr


def _inputs(f: Any, *sources: Any) -> list[np.ndarray]:
    arrs = [_as_2d(f, "fused")] + [_as_2d(s, f"source {i}") for i, s in enumerate(sources)]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise ValueError(f"fused and source images must have the same shape, got {[a.shape for a in arrs]}")
    return arrs


def _reduce(values: tuple[float, float], reduction: str) -> float:
    if reduction == "sum":
        return float(values[0] + values[1])
    if reduction == "mean":
        return float((values[0] + values[1]) / 2.0)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.int64)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    yc = y - y.mean()
    den = math.sqrt(float(np.sum(xc * xc)) * float(np.sum(yc * yc)))
    return float(np.sum(xc * yc)) / den if den > 0 else 0.0


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation with the 1-D window ``w`` on both axes, 'valid' region only (direct sums, no FFT)."""
    n = len(w)
    lo, hi = n // 2, n - 1 - n // 2
    y = ndimage.correlate1d(x, w, axis=0, mode="constant")
    y = ndimage.correlate1d(y, w, axis=1, mode="constant")
    return y[lo : x.shape[0] - hi, lo : x.shape[1] - hi]


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    d = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(d * d) / (2.0 * sigma * sigma))
    return g / g.sum()


def _check_min_size(x: np.ndarray, n: int, what: str) -> None:
    if min(x.shape) < n:
        raise ValueError(f"{what} needs images of at least {n}×{n}, got {x.shape}")


# --------------------------------------------------------------------------------------------------------------------
# single-image metrics
# --------------------------------------------------------------------------------------------------------------------
def en(f: Any, *, base: float = 2.0) -> float:
    """Entropy of the 256-bin grey histogram of uint8(round(F)) in units of ``base`` (2 = bits)."""
    q = _uint8(_as_2d(f, "fused"))
    p = np.bincount(q.ravel(), minlength=256).astype(np.float64) / q.size
    p = p[p > 0]
    return float(max(0.0, -np.sum(p * np.log(p)) / math.log(base)))


def sd(f: Any, *, ddof: int = 0) -> float:
    """Standard deviation of F on 0–255 (population, ``ddof=0``).

    The MACTFusion slides report SD ≈ 9.6 for CT–MRI, which matches no standard definition (the official outputs give
    ≈ 84 on 0–255; ≈ 9.1 is its square root); we do not imitate it.
    """
    return float(np.std(_as_2d(f, "fused"), ddof=ddof))


def sf(f: Any) -> float:
    """Spatial frequency sqrt(RF² + CF²) (RF/CF: RMS of horizontal/vertical first differences)."""
    x = _as_2d(f, "fused")
    rf2 = np.mean(np.diff(x, axis=1) ** 2) if x.shape[1] > 1 else 0.0
    cf2 = np.mean(np.diff(x, axis=0) ** 2) if x.shape[0] > 1 else 0.0
    return float(math.sqrt(rf2 + cf2))


def ag(f: Any) -> float:
    """Average gradient mean(sqrt((Gx² + Gy²)/2)); central differences, one-sided at the borders."""
    x = _as_2d(f, "fused")
    _check_min_size(x, 2, "AG")
    gy, gx = np.gradient(x)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# --------------------------------------------------------------------------------------------------------------------
# two-source metrics
# --------------------------------------------------------------------------------------------------------------------
def _mi_pair(x: np.ndarray, y: np.ndarray) -> float:
    joint = np.bincount((_uint8(x) * 256 + _uint8(y)).ravel(), minlength=65536).astype(np.float64)
    pxy = joint.reshape(256, 256) / x.size
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    val = float(np.sum(pxy[nz] * np.log(pxy[nz] / (px @ py)[nz])))
    return max(val, 0.0)


def mi(f: Any, a: Any, b: Any, *, base: float = math.e) -> float:
    """MI(F, A) + MI(F, B) from 256×256 joint histograms; ``base=e`` nats (reference), ``base=2`` bits."""
    f, a, b = _inputs(f, a, b)
    return (_mi_pair(f, a) + _mi_pair(f, b)) / math.log(base)


def scd(f: Any, a: Any, b: Any) -> float:
    """Sum of the correlations of differences: corr(F − B, A) + corr(F − A, B)."""
    f, a, b = _inputs(f, a, b)
    return _corr(f - b, a) + _corr(f - a, b)


def cc(f: Any, a: Any, b: Any, *, reduction: str = "mean") -> float:
    """Correlation coefficient of F with each source, mean (default) or sum over the two."""
    f, a, b = _inputs(f, a, b)
    return _reduce((_corr(f, a), _corr(f, b)), reduction)


def mse(f: Any, a: Any, b: Any, *, reduction: str = "mean") -> float:
    """Mean squared error of F against each source on 0–255, mean (default) or sum over the two."""
    f, a, b = _inputs(f, a, b)
    return _reduce((float(np.mean((f - a) ** 2)), float(np.mean((f - b) ** 2))), reduction)


def psnr(f: Any, a: Any, b: Any, *, peak: float | str = 255.0) -> float:
    """10·log10(peak² / MSE), MSE the mean over the sources; ``peak="max"`` uses max(F) (the reference evaluator)."""
    f, a, b = _inputs(f, a, b)
    if isinstance(peak, str):
        if peak != "max":
            raise ValueError(f"peak must be a number or 'max', got {peak!r}")
        peak = float(f.max())
    err = mse(f, a, b, reduction="mean")
    if err == 0:
        return math.inf
    if peak <= 0:
        return -math.inf
    return float(10.0 * math.log10(float(peak) ** 2 / err))


def _vifp_pair(src: np.ndarray, fus: np.ndarray, sigma_n_sq: float) -> float:
    """LIVE pixel-domain VIF of ``fus`` against reference ``src`` (4 scales, separable Gaussian, 'valid')."""
    eps = 1e-10
    num = den = 0.0
    x, y = src, fus
    for scale in range(4):
        n = 2 ** (4 - scale) + 1
        w = _gaussian_1d(n, n / 5.0)
        if scale > 0:
            x = _filter_valid(x, w)[::2, ::2]
            y = _filter_valid(y, w)[::2, ::2]
        mx, my = _filter_valid(x, w), _filter_valid(y, w)
        vx = np.maximum(_filter_valid(x * x, w) - mx * mx, 0.0)
        vy = np.maximum(_filter_valid(y * y, w) - my * my, 0.0)
        cxy = _filter_valid(x * y, w) - mx * my
        g = cxy / (vx + eps)
        sv = vy - g * cxy
        m = vx < eps  # flat reference window: no information to transmit
        g[m], sv[m], vx[m] = 0.0, vy[m], 0.0
        m = vy < eps  # flat distorted window
        g[m], sv[m] = 0.0, 0.0
        m = g < 0  # anti-correlated: treat as pure noise
        sv[m], g[m] = vy[m], 0.0
        sv = np.maximum(sv, eps)
        num += float(np.sum(np.log10(1.0 + g * g * vx / (sv + sigma_n_sq))))
        den += float(np.sum(np.log10(1.0 + vx / sigma_n_sq)))
    return num / den if den > 0 else 0.0  # constant source carries no information → 0 (documented)


def vif(f: Any, a: Any, b: Any, *, sigma_n_sq: float = 2.0, reduction: str = "sum", backend: str = "numpy") -> float:
    """VIFp(A, F) + VIFp(B, F) (LIVE pixel-domain multi-scale VIF). Images must be at least 41×41.

    ``backend="numpy"`` (default, separable filtering, ~50× faster) computes exactly the torchmetrics
    ``visual_information_fidelity`` algorithm (same eps rules; agreement ~1e-12, asserted in the tests);
    ``backend="torchmetrics"`` calls it directly (preds = F, target = source, float64).
    """
    f, a, b = _inputs(f, a, b)
    _check_min_size(f, 41, "VIF")
    if backend == "numpy":
        vals = [_vifp_pair(s, f, sigma_n_sq) for s in (a, b)]
    elif backend == "torchmetrics":
        from torchmetrics.functional.image import visual_information_fidelity

        ft = torch.from_numpy(f)[None, None]
        vals = []
        for s in (a, b):
            v = float(visual_information_fidelity(ft, torch.from_numpy(s)[None, None], sigma_n_sq=sigma_n_sq))
            vals.append(v if math.isfinite(v) else 0.0)  # constant source: 0/0 → 0 (documented)
    else:
        raise ValueError(f"backend must be 'numpy' or 'torchmetrics', got {backend!r}")
    return _reduce((vals[0], vals[1]), reduction)


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3×3 Sobel gradient strength and orientation (zero padding, 'same'); orientation π/2 where Sx = 0.

    Sx, Sy are the true 2-D convolutions with [[-1,0,1],[-2,0,2],[-1,0,1]] and [[1,2,1],[0,0,0],[-1,-2,-1]]
    (MATLAB ``conv2``/``filter2`` convention of the reference), written separably.  The signs matter: the orientation
    is atan(Sy/Sx) except where Sx = 0 (π/2), so flipping only one of them would change Qabf.
    """
    smooth = np.array([1.0, 2.0, 1.0])
    sx = ndimage.correlate1d(ndimage.correlate1d(x, smooth, axis=0, mode="constant"), np.array([1.0, 0.0, -1.0]),
                             axis=1, mode="constant")  # fmt: skip
    sy = ndimage.correlate1d(ndimage.correlate1d(x, np.array([-1.0, 0.0, 1.0]), axis=0, mode="constant"), smooth,
                             axis=1, mode="constant")  # fmt: skip
    g = np.sqrt(sx * sx + sy * sy)
    zero = sx == 0
    alpha = np.where(zero, math.pi / 2, np.arctan(sy / np.where(zero, 1.0, sx)))
    return g, alpha


def _edge_preservation(g_s, a_s, g_f, a_f, equal_gradient: str) -> np.ndarray:
    ratio = np.ones_like(g_s)
    gt, lt = g_s > g_f, g_s < g_f
    ratio[gt] = g_f[gt] / g_s[gt]
    ratio[lt] = g_s[lt] / g_f[lt]
    if equal_gradient == "reference":
        eq = g_s == g_f
        ratio[eq] = g_f[eq]
    elif equal_gradient != "one":
        raise ValueError(f"equal_gradient must be 'reference' or 'one', got {equal_gradient!r}")
    orient = 1.0 - np.abs(a_s - a_f) / (math.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (ratio - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (orient - 0.8)))
    return q_g * q_a


def qabf(f: Any, a: Any, b: Any, *, equal_gradient: str = "reference") -> float:
    """Xydeas–Petrović Q^{AB/F}; ``equal_gradient`` = "reference" (MATLAB/CDDFuse quirk) or "one" (see module doc)."""
    f, a, b = _inputs(f, a, b)
    g_a, al_a = _sobel(a)
    g_b, al_b = _sobel(b)
    g_f, al_f = _sobel(f)
    q_af = _edge_preservation(g_a, al_a, g_f, al_f, equal_gradient)
    q_bf = _edge_preservation(g_b, al_b, g_f, al_f, equal_gradient)
    den = float(np.sum(g_a + g_b))
    if den == 0:
        return 0.0  # no source edges at all (documented)
    return float(np.sum(q_af * g_a + q_bf * g_b) / den)


# ---- SSIM family ---------------------------------------------------------------------------------------------------
def _ssim_uniform(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 7, k1=0.01, k2=0.03) -> float:
    """scikit-image ``structural_similarity`` defaults: uniform win×win, sample covariance, mean of the interior."""
    _check_min_size(x, win, "SSIM")
    w = np.full(win, 1.0 / win)
    ux, uy = _filter_valid(x, w), _filter_valid(y, w)
    uxx, uyy, uxy = _filter_valid(x * x, w), _filter_valid(y * y, w), _filter_valid(x * y, w)
    cov_norm = win * win / (win * win - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def ssim(f: Any, a: Any, b: Any, *, data_range: float = 255.0, reduction: str = "sum") -> float:
    """SSIM(F, A) + SSIM(F, B) (``reduction="sum"``, fusion convention) or their mean; scikit-image defaults.

    ``data_range=2`` reproduces the reference evaluator (old scikit-image default for float input).
    """
    f, a, b = _inputs(f, a, b)
    return _reduce((_ssim_uniform(f, a, data_range), _ssim_uniform(f, b, data_range)), reduction)


# Exact decimal weights; torchmetrics rounds them to float32, which moves MS-SSIM by ~6e-9 relative.
_MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _ms_ssim_pair(x: np.ndarray, y: np.ndarray, data_range: float, k1=0.01, k2=0.03) -> float:
    """Multi-scale SSIM with torchmetrics' conventions: reflect padding by 5 px, Gaussian 11/1.5, population moments,
    variances clamped ≥ 0; per scale the contrast-structure term is averaged over the interior (H−10)×(W−10) and the
    last scale's SSIM over the full reflect-padded map; "relu" normalisation; 2×2 average-pool (floor) between scales.
    """
    w = _gaussian_1d(11, 1.5)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    terms = []
    for i in range(len(_MS_SSIM_BETAS)):
        xp, yp = np.pad(x, 5, mode="reflect"), np.pad(y, 5, mode="reflect")
        ux, uy = _filter_valid(xp, w), _filter_valid(yp, w)
        vx = np.maximum(_filter_valid(xp * xp, w) - ux * ux, 0.0)
        vy = np.maximum(_filter_valid(yp * yp, w) - uy * uy, 0.0)
        vxy = _filter_valid(xp * yp, w) - ux * uy
        cs_map = (2 * vxy + c2) / (vx + vy + c2)
        if i < len(_MS_SSIM_BETAS) - 1:
            terms.append(max(float(cs_map[5:-5, 5:-5].mean()), 0.0))
            h, wd = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
            x = x[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
            y = y[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
        else:
            lum = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
            terms.append(max(float((lum * cs_map).mean()), 0.0))
    return float(np.prod([t**beta for t, beta in zip(terms, _MS_SSIM_BETAS)]))


def ms_ssim(f: Any, a: Any, b: Any, *, data_range: float = 255.0, reduction: str = "mean", backend: str = "numpy") -> float:
    """Multi-scale SSIM (Wang 2003) of F against each source, mean (default) or sum over the two.

    ``backend="numpy"`` (default, fast) reproduces torchmetrics ``multiscale_structural_similarity_index_measure``
    (kernel 11, σ 1.5, default betas, normalize="relu") in float64 (agreement ~1e-10, asserted in the tests);
    ``backend="torchmetrics"`` calls it directly.  Images must be at least 176 px (torchmetrics' 5-scale limit).
    """
    f, a, b = _inputs(f, a, b)
    _check_min_size(f, 176, "MS-SSIM")  # torchmetrics' limit (size // 16 > 10), kept for both backends
    if backend == "numpy":
        vals = [_ms_ssim_pair(f, s, data_range) for s in (a, b)]
    elif backend == "torchmetrics":
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as _ms

        ft = torch.from_numpy(f)[None, None]
        vals = [float(_ms(ft, torch.from_numpy(s)[None, None], data_range=data_range, kernel_size=11, sigma=1.5)) for s in (a, b)]
    else:
        raise ValueError(f"backend must be 'numpy' or 'torchmetrics', got {backend!r}")
    return _reduce((vals[0], vals[1]), reduction)


def _ssim_gauss_map(x: np.ndarray, y: np.ndarray, data_range: float = 255.0, k1=0.01, k2=0.03):
    """SSIM map (Gaussian 11/1.5, population moments, variances clamped ≥ 0) on the 'valid' region + local vars."""
    w = _gaussian_1d(11, 1.5)
    ux, uy = _filter_valid(x, w), _filter_valid(y, w)
    vx = np.maximum(_filter_valid(x * x, w) - ux * ux, 0.0)
    vy = np.maximum(_filter_valid(y * y, w) - uy * uy, 0.0)
    vxy = _filter_valid(x * y, w) - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s, vx, vy


def _uiqi_map(x: np.ndarray, y: np.ndarray, win: int = 8):
    """Universal image quality index map (Wang & Bovik 2002) on win×win sliding windows, 'valid'; + local vars."""
    w = np.full(win, 1.0 / win)
    ux, uy = _filter_valid(x, w), _filter_valid(y, w)
    vx = np.maximum(_filter_valid(x * x, w) - ux * ux, 0.0)
    vy = np.maximum(_filter_valid(y * y, w) - uy * uy, 0.0)
    vxy = _filter_valid(x * y, w) - ux * uy
    d1 = vx + vy
    d2 = ux * ux + uy * uy
    q = np.ones_like(ux)
    both = (d1 > 0) & (d2 > 0)
    q[both] = 4 * vxy[both] * ux[both] * uy[both] / (d1[both] * d2[both])
    only_mean = (d1 == 0) & (d2 > 0)  # both windows flat: luminance term
    q[only_mean] = 2 * ux[only_mean] * uy[only_mean] / d2[only_mean]
    only_var = (d1 > 0) & (d2 == 0)  # both means zero: structure/contrast term
    q[only_var] = 2 * vxy[only_var] / d1[only_var]
    return q, vx, vy


_FLAT_VAR = 1e-9  # local variance below this (on 0–255) is rounding noise of a constant window


def _qw_from_maps(q_af, q_bf, s_a, s_b) -> float:
    # Zheng Liu's convention: where both saliencies are 0, add 1/2 to both (λ = 1/2 and the window keeps weight 1/2).
    # Windows whose variance is float rounding (< _FLAT_VAR on 0-255) count as flat.
    s_a = np.where(s_a < _FLAT_VAR, 0.0, s_a)
    s_b = np.where(s_b < _FLAT_VAR, 0.0, s_b)
    t = np.where(s_a + s_b == 0, 0.5, 0.0)
    s_a, s_b = s_a + t, s_b + t
    lam = s_a / (s_a + s_b)
    m = np.maximum(s_a, s_b)
    c = m / float(m.sum())
    return float(np.sum(c * (lam * q_af + (1.0 - lam) * q_bf)))


def _qw_arrays(f: np.ndarray, a: np.ndarray, b: np.ndarray, variant: str) -> float:
    if variant == "ssim":
        _check_min_size(f, 11, "Qw (ssim variant)")
        q_af, s_a, _ = _ssim_gauss_map(a, f)
        q_bf, s_b, _ = _ssim_gauss_map(b, f)
    elif variant == "uiqi":
        _check_min_size(f, 8, "Qw (uiqi variant)")
        q_af, s_a, _ = _uiqi_map(a, f)
        q_bf, s_b, _ = _uiqi_map(b, f)
    else:
        raise ValueError(f"variant must be 'ssim' or 'uiqi', got {variant!r}")
    return _qw_from_maps(q_af, q_bf, s_a, s_b)


def qw(f: Any, a: Any, b: Any, *, variant: str = "ssim") -> float:
    """Piella–Heijmans weighted fusion quality Q_W; ``variant="ssim"`` (SSIM-map, default) or ``"uiqi"`` (original)."""
    f, a, b = _inputs(f, a, b)
    return _qw_arrays(f, a, b, variant)


def qe(f: Any, a: Any, b: Any, *, alpha: float = 1.0, variant: str = "ssim") -> float:
    """Piella–Heijmans edge-dependent quality Q_E = Q_W(A,B,F) · Q_W(A',B',F')^alpha, primes = Sobel magnitudes."""
    f, a, b = _inputs(f, a, b)
    base = _qw_arrays(f, a, b, variant)
    edge = _qw_arrays(_sobel(f)[0], _sobel(a)[0], _sobel(b)[0], variant)
    return float(base * max(edge, 0.0) ** alpha)


# --------------------------------------------------------------------------------------------------------------------
# all metrics
# --------------------------------------------------------------------------------------------------------------------
_CALLS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]], float]] = {
    "EN": lambda f, a, b, c: en(f, base=c["en_base"]),
    "SD": lambda f, a, b, c: sd(f),
    "SF": lambda f, a, b, c: sf(f),
    "AG": lambda f, a, b, c: ag(f),
    "MI": lambda f, a, b, c: mi(f, a, b, base=c["mi_base"]),
    "SCD": lambda f, a, b, c: scd(f, a, b),
    "VIF": lambda f, a, b, c: vif(f, a, b, sigma_n_sq=c["vif_sigma_n_sq"], reduction=c["vif_reduction"]),
    "Qabf": lambda f, a, b, c: qabf(f, a, b, equal_gradient=c["qabf_equal_gradient"]),
    "Qw": lambda f, a, b, c: qw(f, a, b, variant=c["qw_variant"]),
    "Qe": lambda f, a, b, c: qe(f, a, b, alpha=c["qe_alpha"], variant=c["qw_variant"]),
    "SSIM": lambda f, a, b, c: ssim(f, a, b, data_range=c["ssim_data_range"], reduction=c["ssim_reduction"]),
    "MS_SSIM": lambda f, a, b, c: ms_ssim(f, a, b, data_range=c["ms_ssim_data_range"], reduction=c["ms_ssim_reduction"]),
    "PSNR": lambda f, a, b, c: psnr(f, a, b, peak=c["psnr_peak"]),
    "CC": lambda f, a, b, c: cc(f, a, b, reduction=c["cc_reduction"]),
    "MSE": lambda f, a, b, c: mse(f, a, b, reduction=c["mse_reduction"]),
}

# Metrics with a minimum image size: on smaller images evaluate() reports NaN with a warning instead of failing.
_SIZE_LIMITED = {"VIF": 41, "MS_SSIM": 176, "Qw": 11, "Qe": 11, "SSIM": 7}


def evaluate(fused: Any, a: Any, b: Any, *, metrics: Iterable[str] | None = None, **conventions: Any) -> dict[str, float]:
    """All metrics (keys ``METRIC_NAMES``, or the subset ``metrics``) for one fused image and its two sources.

    ``conventions`` are keys of :data:`CONVENTIONS` (e.g. ``mi_base=2``, ``psnr_peak="max"``); unspecified ones take
    the defaults; ``**REFERENCE_CONVENTIONS`` reproduces the CDDFuse evaluator.  Metrics whose minimum image size is
    not met (VIF 41, MS-SSIM 176) are NaN with a warning.
    """
    conv = _resolve(conventions)
    f, a, b = _inputs(fused, a, b)
    names = METRIC_NAMES if metrics is None else tuple(metrics)
    bad = [n for n in names if n not in _CALLS]
    if bad:
        raise KeyError(f"unknown metric(s) {bad}; known: {list(METRIC_NAMES)}")
    out: dict[str, float] = {}
    for name in names:
        if name in _SIZE_LIMITED and min(f.shape) < _SIZE_LIMITED[name]:
            warnings.warn(f"{name} needs images of at least {_SIZE_LIMITED[name]} px; got {f.shape} → NaN",
                          stacklevel=2)  # fmt: skip
            out[name] = math.nan
            continue
        out[name] = float(_CALLS[name](f, a, b, conv))
    return out
