"""Image transforms of the official HiFuse recipe, in torch (no torchvision), driven by torch's global RNG.

* train: :class:`RandomResizedCrop` (224, scale 0.08–1, ratio 3/4–4/3, bilinear; torchvision's sampling algorithm with its
  10-attempt fallback to a centred crop) → :class:`RandomHorizontalFlip` (0.5) → :class:`Normalize` (mean 0.5, std 0.5);
* eval: :class:`Resize` (shorter side to ``size·256/224`` = 256, bilinear) → :class:`CenterCrop` (224) → :class:`Normalize`.

Every transform takes and returns a float tensor ``[C, H, W]``; :class:`ToTensor` converts a PIL image (values in
[0, 1]). Resizing uses ``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``, close
to PIL's bilinear filter. Randomness comes from ``torch`` (seeded by the engine, per DataLoader worker), so training
runs are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ToTensor",
    "build_transforms",
    "eval_resize_size",
    "resize_tensor",
]


class Compose:
    """Apply callables in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ToTensor:
    """PIL image (or ``HxW``/``HxWxC`` uint8 array) → float tensor ``[C, H, W]`` in [0, 1]."""

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            return img.float()
        arr = np.array(img)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        return t.float().div_(255.0) if arr.dtype == np.uint8 else t.float()

    def __repr__(self) -> str:
        return "ToTensor()"


def resize_tensor(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of ``[C, H, W]`` to ``(h, w)`` (identity when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


class Resize:
    """Resize so that the shorter side is ``size`` (the longer one is ``int(size · long / short)``, as torchvision);
    with a ``(h, w)`` pair, resize to exactly that."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = size

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if not isinstance(self.size, int):
            return int(self.size[0]), int(self.size[1])
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if h <= w else (new_long, new_short)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return resize_tensor(x, self.output_size(*x.shape[-2:]))

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop:
    """Centre crop to ``size`` (offsets ``round((H - h) / 2)``); zero-pads first if the image is smaller."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        th, tw = self.size
        h, w = x.shape[-2:]
        if h < th or w < tw:
            ph, pw = max(th - h, 0), max(tw - w, 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
            h, w = x.shape[-2:]
        top = round((h - th) / 2.0)
        left = round((w - tw) / 2.0)
        return x[..., top : top + th, left : left + tw]

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


def _uniform(a: float, b: float) -> float:
    return float(torch.empty(1).uniform_(a, b).item())


def _randint(low: int, high: int) -> int:
    """Integer in [low, high)."""
    return int(torch.randint(low, high, (1,)).item())


class RandomResizedCrop:
    """Crop a random area/aspect-ratio region and resize it to ``size``.

    Sampling (torchvision's algorithm): up to 10 times draw an area fraction ``U(scale)`` and a log-uniform aspect
    ratio in ``ratio``; take the first ``w = round(sqrt(A·r))``, ``h = round(sqrt(A/r))`` that fits, at a uniformly
    random position. If none fits, crop the whole image clamped to the ratio range, centred.
    """

    def __init__(self, size: int | tuple[int, int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"RandomResizedCrop: scale {tuple(scale)} and ratio {tuple(ratio)} must be (min, max)")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def get_params(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(log_lo, log_hi))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return _randint(0, height - h + 1), _randint(0, width - w + 1), h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.get_params(*x.shape[-2:])
        return resize_tensor(x[..., top : top + h, left : left + w], self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Flip left–right with probability ``p`` (one torch draw per call)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if torch.rand(1).item() < self.p else x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(x - mean) / std`` per channel; a single value applies to every channel."""

    def __init__(self, mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5) -> None:
        self.mean = [float(mean)] if isinstance(mean, (int, float)) else [float(m) for m in mean]
        self.std = [float(std)] if isinstance(std, (int, float)) else [float(s) for s in std]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[0]
        mean, std = self.mean, self.std
        if len(mean) == 1:
            mean = mean * c
        if len(std) == 1:
            std = std * c
        if len(mean) != c or len(std) != c:
            raise ValueError(f"Normalize: mean/std have {len(self.mean)}/{len(self.std)} values for {c} channels")
        m = torch.tensor(mean, dtype=x.dtype).view(c, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(c, 1, 1)
        return (x - m) / s

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def eval_resize_size(img_size: int) -> int:
    """The official eval resize for a crop of ``img_size``: ``img_size · 256 / 224`` (256 for 224)."""
    return round(img_size * 256 / 224)


def build_transforms(
    train: bool,
    img_size: int = 224,
    *,
    resize_size: int | None = None,
    mean: float | Sequence[float] = 0.5,
    std: float | Sequence[float] = 0.5,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> Compose:
    """The official train or eval pipeline (PIL image → normalised tensor)."""
    if train:
        steps: list[Any] = [ToTensor(), RandomResizedCrop(img_size, scale, ratio)]
        if hflip > 0:
            steps.append(RandomHorizontalFlip(hflip))
    else:
        steps = [ToTensor(), Resize(resize_size or eval_resize_size(img_size)), CenterCrop(img_size)]
    steps.append(Normalize(mean, std))
    return Compose(steps)
