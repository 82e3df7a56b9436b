"""Image input/output for fusion — the shared 2-D image layer, re-exported under its historical name.

Reading, listing, pairing and saving live in :mod:`glfuse.data.image_io`, colour conversion (BT.601) in
:mod:`glfuse.data.color`; every system uses those. See there for the reading rules, the saving rule
``rint(clip(x, 0, 1) · 255)`` and the pixel limit.
"""

from __future__ import annotations

from glfuse.data.color import rgb_to_y, rgb_to_ycbcr, to_y, ycbcr_to_rgb
from glfuse.data.image_io import (
    IMAGE_EXTS,
    ImageRead,
    image_stem,
    images_by_stem,
    pair_folders,
    read_grey,
    read_image,
    read_pair,
    resize_to,
    save_image,
    to_uint8,
)

__all__ = [
    "IMAGE_EXTS",
    "ImageRead",
    "image_stem",
    "images_by_stem",
    "pair_folders",
    "read_grey",
    "read_image",
    "read_pair",
    "resize_to",
    "rgb_to_y",
    "rgb_to_ycbcr",
    "save_image",
    "to_uint8",
    "to_y",
    "ycbcr_to_rgb",
]
