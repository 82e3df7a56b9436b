"""Window helpers for (shifted-)window attention on channels-last maps ``[B, H, W, C]``."""

from __future__ import annotations

import torch

__all__ = ["relative_position_index", "shifted_window_mask", "window_partition", "window_reverse"]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``[B, H, W, C]`` → ``[B, nW, ws*ws, C]`` non-overlapping windows in row-major window order."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, ws, w // ws, ws, c).transpose(2, 3)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B, nW, ws*ws, C]`` → ``[B, H, W, C]``."""
    b, _, _, c = windows.shape
    ws = window_size
    x = windows.view(b, height // ws, width // ws, ws, ws, c).transpose(2, 3)
    return x.reshape(b, height, width, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """Swin relative-position index ``[N, N]`` (N = ws²) into a ``(2ws-1)²`` bias table."""
    ws = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # [N, N, 2], each in [0, 2ws-2]
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(
    height: int, width: int, window_size: int, shift: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Swin region mask ``[nW, N, N]`` for a map cyclically shifted by ``-shift``: 0 within a region, -100 across.

    ``height``/``width`` must be multiples of ``window_size`` (pad first). Regions are the slices
    ``[0, -ws)``, ``[-ws, -shift)``, ``[-shift, end)`` of each axis, exactly as Swin (and HiFuse) build them — also when
    the map is a single window, where the three slices degenerate to two.
    """
    img = torch.zeros(1, height, width, 1, device=device)
    cnt = 0
    slices = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    for hs in slices:
        for wsl in slices:
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, window_size).squeeze(0).squeeze(-1)  # [nW, N]
    mask = win[:, None, :] - win[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
