"""Colour conversion (ITU-R BT.601), the one implementation every system uses.

Formulas (on any scale for Y; Cb/Cr on [0, 1] values, correct R-G-B channel order)::

    Y  = .299 R + .587 G + .114 B      Cr = .713 (R − Y) + .5      Cb = .564 (B − Y) + .5
    R  = Y + 1.403 (Cr − .5)           G  = Y − .714 (Cr − .5) − .344 (Cb − .5)      B = Y + 1.773 (Cb − .5)

Precision follows the input: float32 arrays are converted in float32 (the fusion networks' inputs), anything else
(uint8, float64, torch tensors) in float64 (the fusion metrics, on the input's scale: uint8 → 0–255).

:func:`to_y` is the grey → Y rule shared by fusion training and inference: a colour image gives its Y; a grey image
enters as the Y of the grey replicated to three channels — what the official MACTFusion code computed from a grey
file read as RGB (it differs from the grey value by at most one float32 step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rgb_to_y", "rgb_to_ycbcr", "to_grey_y", "to_y", "ycbcr_to_rgb"]

_KR, _KG, _KB = 0.299, 0.587, 0.114


def _float(arr: Any) -> np.ndarray:
    arr = np.asarray(arr)
    return arr if arr.dtype == np.float32 else arr.astype(np.float64)


def rgb_to_y(rgb: Any) -> np.ndarray:
    """BT.601 luma of an ``HxWx3`` (or ``HxWx4``, alpha ignored) array, on the input's scale.

    float32 input → float32 result; any other dtype → float64.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB array, got shape {rgb.shape}")
    rgb = _float(rgb)
    t = rgb.dtype.type
    return t(_KR) * rgb[..., 0] + t(_KG) * rgb[..., 1] + t(_KB) * rgb[..., 2]


def to_grey_y(img: Any) -> np.ndarray:
    """Grey float64 image of any ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` input (colour → BT.601 Y, alpha ignored).

    A torch tensor may also be ``CxHxW`` (C = 1, 3 or 4, detected when the last axis is not 1/3/4).
    """
    if hasattr(img, "detach"):  # torch tensor, without importing torch here
        t = img.detach().cpu()
        if t.ndim == 3 and t.shape[-1] not in (1, 3, 4) and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        img = t.double().numpy()
    arr = np.asarray(img)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected H×W, H×W×1, H×W×3 or H×W×4 image, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        return arr[..., 0].astype(np.float64)
    return rgb_to_y(arr.astype(np.float64))


def to_y(img: np.ndarray) -> np.ndarray:
    """The Y channel a fusion network sees (training and inference): RGB → BT.601 Y; grey g → Y(g, g, g)."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return rgb_to_y(img)


def rgb_to_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (``HxWx3``, [0, 1], R-G-B order) → float32 ``(Y, Cb, Cr)``."""
    rgb = np.asarray(rgb, dtype=np.float32)
    y = rgb_to_y(rgb)
    cr = np.float32(0.713) * (rgb[..., 0] - y) + np.float32(0.5)
    cb = np.float32(0.564) * (rgb[..., 2] - y) + np.float32(0.5)
    return y, cb, cr


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """``(Y, Cb, Cr)`` → float32 RGB ``HxWx3`` in R-G-B order (not clamped)."""
    y = np.asarray(y, dtype=np.float32)
    dcr = np.asarray(cr, dtype=np.float32) - np.float32(0.5)
    dcb = np.asarray(cb, dtype=np.float32) - np.float32(0.5)
    r = y + np.float32(1.403) * dcr
    g = y - np.float32(0.714) * dcr - np.float32(0.344) * dcb
    b = y + np.float32(1.773) * dcb
    return np.stack([r, g, b], axis=-1).astype(np.float32)
