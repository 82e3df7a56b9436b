"""Slice datasets over a staging cache, VDPF augmentation and the lesion-centred crop for the baselines.

* :class:`SliceCache` loads a cache folder written by :func:`glfuse.staging.prepare.prepare` (all arrays in memory).
* :class:`StagingSliceDataset` yields the **lesion slices** of the given cases (training and evaluation alike: VDPF trains
  only on slices with a box and a case's prediction averages its lesion slices), each as
  ``{"image": [1,S,S] float32, "mask": [1,S,S] float32 (0/1), "label": int64, "case": int64 (case index in the cache),
  "slice": int64 (slice index in the volume)}``.
* :func:`build_augmentation` — MONAI equivalents of the official 'train' list (spec § 5), applied jointly to image and
  mask (mask resampled nearest, so it stays binary): mirror (p 0.5, then each axis 50 %) → Gaussian blur σ 0.5–0.8 (p 0.2)
  → Gaussian noise σ ~ U(0, 0.6) (p 0.15) → gamma 0.7–1.5 (p 0.1) → rotation ±30° (p 0.5) → scale 0.85–1.25 (p 0.3)
  (image bicubic, mask nearest, zero border) → contrast ×0.75–1.25 about the mean, range preserved (p 0.15) → simulated
  low resolution, zoom 0.5–1 (nearest down / bicubic up, p 0.25) → per-sample min–max to [0, 1].
  Per-channel probabilities of the official code collapse to per-sample here (one channel). Each sample draws its MONAI
  seed from torch's global RNG, which the engine seeds and checkpoints, so augmented runs are reproducible and resumable.
* :func:`lesion_crop` — the baselines' input (spec decision 7): the bounding box of the slice's box mask ± 5 px on every
  side (clipped to the slice), resized to S² (image bicubic, mask nearest). The official loader's column-range bug is
  not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from glfuse.staging.prepare import CACHE_ARRAYS, load_cache_index

__all__ = ["SliceCache", "StagingSliceDataset", "build_augmentation", "lesion_crop", "resize_pair"]


class SliceCache:
    """A prepared cache folder: ``index`` (cases.json) + arrays (image, mask, case_index, slice_index, label, has_lesion)."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        self.index = load_cache_index(self.dir)
        p = self.dir / CACHE_ARRAYS
        if not p.is_file():
            raise FileNotFoundError(f"{p}: cache arrays missing (re-run `glfuse stage prepare`)")
        with np.load(p) as z:
            self.arrays = {k: z[k] for k in z.files}
        self.classes: list[str] = list(self.index["classes"])
        self.case_ids: list[str] = [r["case_id"] for r in self.index["cases"]]
        self._pos = {c: i for i, c in enumerate(self.case_ids)}

    def case_index(self, case_id: str) -> int:
        if case_id not in self._pos:
            raise KeyError(f"case {case_id!r} is not in the cache {self.dir}")
        return self._pos[case_id]

    def rows(self, case_id: str, lesion_only: bool = True) -> np.ndarray:
        """Row indices of a case's slices in the arrays (lesion slices only by default)."""
        a, b = self.index["cases"][self.case_index(case_id)]["rows"]
        r = np.arange(a, b)
        return r[self.arrays["has_lesion"][a:b]] if lesion_only else r


def _spread(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced positions out of ``n`` (all when k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[1,H,W] image (bicubic, clamped to [0,1]) and mask (nearest) -> [1,size,size]."""
    if image.shape[-2:] == (size, size):
        return image, mask
    img = F.interpolate(image[None], size=(size, size), mode="bicubic", align_corners=False,
                        antialias=image.shape[-1] > size)[0].clamp_(0, 1)
    m = F.interpolate(mask[None], size=(size, size), mode="nearest-exact")[0]
    return img, m


def lesion_crop(image: torch.Tensor, mask: torch.Tensor, size: int | None = None,
                margin: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop [1,H,W] image and mask to the mask's bounding box ± ``margin`` px (clipped), resize to ``size`` (default H).

    A slice without box is returned unchanged (resized)."""
    h, w = image.shape[-2:]
    size = size or h
    ys, xs = torch.nonzero(mask[0] > 0, as_tuple=True)
    if len(ys):
        y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin, h - 1)
        x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin, w - 1)
        image, mask = image[:, y0: y1 + 1, x0: x1 + 1], mask[:, y0: y1 + 1, x0: x1 + 1]
    img = F.interpolate(image[None], size=(size, size), mode="bicubic", align_corners=False)[0].clamp_(0, 1)
    m = F.interpolate(mask[None], size=(size, size), mode="nearest-exact")[0]
    return img, m


def build_augmentation():
    """MONAI Compose of the official augmentation list (see module docstring); keys ``image`` and ``mask``."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityFixedMeand,
        RandSimulateLowResolutiond,
        ScaleIntensityd,
    )

    both = ["image", "mask"]
    return Compose([
        # mirror: p 0.5 per sample, then each axis with 50 % -> 0.25 per axis
        RandFlipd(both, prob=0.25, spatial_axis=0),
        RandFlipd(both, prob=0.25, spatial_axis=1),
        RandGaussianSmoothd("image", sigma_x=(0.5, 0.8), sigma_y=(0.5, 0.8), prob=0.2),
        RandGaussianNoised("image", prob=0.15, mean=0.0, std=0.6, sample_std=True),
        RandAdjustContrastd("image", prob=0.1, gamma=(0.7, 1.5)),
        RandAffined(both, prob=0.5, rotate_range=(np.pi / 6,), mode=("bicubic", "nearest"), padding_mode="zeros"),
        RandAffined(both, prob=0.3, scale_range=((-0.15, 0.25),), mode=("bicubic", "nearest"), padding_mode="zeros"),
        RandScaleIntensityFixedMeand("image", prob=0.15, factors=0.25, preserve_range=True),
        RandSimulateLowResolutiond("image", prob=0.25, downsample_mode="nearest", upsample_mode="bicubic",
                                   zoom_range=(0.5, 1.0)),
        ScaleIntensityd("image", minv=0.0, maxv=1.0),
    ])


class StagingSliceDataset(Dataset):
    """Lesion slices of ``case_ids`` from a :class:`SliceCache` (see module docstring).

    Args:
        cache: the cache (or its folder).
        case_ids: cases to include (any order; slices keep cache order). Unknown ids raise ``KeyError``.
        augment: apply :func:`build_augmentation` (training).
        crop: lesion-centred crop (baselines, decision 7), applied before augmentation.
        size: output size (default: the cache's); the model's ``img_size`` when it differs.
        max_slices_per_case: keep at most this many lesion slices per case, evenly spread (quick CPU runs).
    """

    def __init__(self, cache: SliceCache | str | Path, case_ids: Sequence[str], *, augment: bool = False,
                 crop: bool = False, size: int | None = None, max_slices_per_case: int | None = None) -> None:
        self.cache = cache if isinstance(cache, SliceCache) else SliceCache(cache)
        self.case_ids = list(case_ids)
        rows = []
        for c in self.case_ids:
            r = self.cache.rows(c)
            if max_slices_per_case:
                r = r[_spread(len(r), max_slices_per_case)]
            rows.append(r)
        self.rows = np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
        self.augment = augment
        self.crop = crop
        self.size = size or int(self.cache.arrays["image"].shape[-1])
        self._aug = build_augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.rows[i])
        a = self.cache.arrays
        img = torch.from_numpy(a["image"][r].astype(np.float32))[None]
        m = torch.from_numpy(a["mask"][r].astype(np.float32))[None]
        if self.crop:
            img, m = lesion_crop(img, m)
        if self._aug is not None:
            self._aug.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,))))
            out = self._aug({"image": img, "mask": m})
            img = torch.as_tensor(out["image"]).as_subclass(torch.Tensor).float()
            m = (torch.as_tensor(out["mask"]).as_subclass(torch.Tensor) > 0.5).float()
        img, m = resize_pair(img, m, self.size)
        return {"image": img.contiguous(), "mask": m.contiguous(), "label": torch.tensor(int(a["label"][r])),
                "case": torch.tensor(int(a["case_index"][r])), "slice": torch.tensor(int(a["slice_index"][r]))}
