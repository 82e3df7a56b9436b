"""Transforms: shapes/ranges, RandomResizedCrop sampling, seeded determinism, eval resize+crop exactness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glfuse.data.transforms import CenterCrop, RandomResizedCrop, Resize, ToTensor, build_transforms, eval_resize_size


def _pil(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(300, 200), (50, 400), (224, 224), (61, 115)])
def test_shapes_and_ranges(size):
    img = _pil(*size)
    for train in (True, False):
        x = build_transforms(train, 64)(img)
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert x.min() >= -1 - 1e-5 and x.max() <= 1 + 1e-5


def test_seeded_determinism():
    img, tf = _pil(120, 90), build_transforms(True, 32)
    torch.manual_seed(7)
    a = [tf(img) for _ in range(3)]
    torch.manual_seed(7)
    b = [tf(img) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])


def test_random_resized_crop_params_and_fallback():
    rrc = RandomResizedCrop(224)
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = rrc.get_params(100, 160)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 160
        assert 0.08 * 16000 * 0.5 <= h * w <= 16000
    # an impossible scale forces the fallback: whole image clamped to the ratio range, centred
    wide = RandomResizedCrop(8, scale=(5.0, 6.0))
    assert wide.get_params(100, 400) == (0, 133, 100, 133)  # ratio 4 > 4/3 → w = round(100 * 4/3)
    assert wide.get_params(400, 100) == (133, 0, 133, 100)  # ratio 1/4 < 3/4 → h = round(100 / (3/4))
    assert wide.get_params(90, 100) == (0, 0, 90, 100)


def test_eval_resize_crop_exact():
    img = _pil(300, 200)
    x = build_transforms(False, 224)(img)
    # manual: shorter side 200 → 256, longer int(256*300/200) = 384; centre crop offsets round((256-224)/2), round(80)
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    r = F.interpolate(t, size=(256, 384), mode="bilinear", align_corners=False, antialias=True)[0]
    ref = (r[:, 16:240, 80:304] - 0.5) / 0.5
    assert torch.allclose(x, ref, atol=1e-6)
    assert eval_resize_size(224) == 256 and eval_resize_size(112) == 128
    assert Resize(256).output_size(115, 61) == (482, 256)
    # close to PIL's bilinear resize (antialiased)
    pil = torch.from_numpy(np.array(img.resize((384, 256), Image.BILINEAR))).permute(2, 0, 1).float() / 255
    assert (pil - r).abs().mean() < 0.02


def test_center_crop_pads_small_and_to_tensor_grey():
    x = ToTensor()(Image.new("L", (5, 3), 255))
    assert x.shape == (1, 3, 5) and x.max() == 1.0
    y = CenterCrop(4)(x)
    assert y.shape == (1, 4, 4) and y.sum() == 12  # 3 rows x 4 columns of ones, one padded row of zeros
