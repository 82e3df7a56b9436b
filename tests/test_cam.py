"""Grad-CAM on a tiny CNN (known answer), on token outputs, and layer selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glfuse.cam import default_cam_layers, grad_cam, save_cam_figure, tokens_to_map


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_gradcam_highlights_the_evidence():
    model = TinyCNN()
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2:4, 5:7] = 1.0  # bright blob → class 0 evidence at that place
    maps, logits = grad_cam(model, x)
    assert list(maps) == ["last_conv"] and logits.argmax(1).item() == 0
    m = maps["last_conv"][0]
    assert m.shape == (8, 8) and m.min() == 0 and m.max() == pytest.approx(1.0)
    assert m[2:4, 5:7].min() > 0.99 and m[0, 0] == 0
    # class 1 has no positive evidence → an all-zero map (no NaN)
    maps1, _ = grad_cam(model, x, target=1)
    assert torch.isfinite(maps1["last_conv"]).all() and maps1["last_conv"].max() == 0
    assert not any(p.grad is not None for p in model.parameters())


def test_token_maps_and_named_layers(tmp_path):
    from glfuse.registry import create_model

    torch.manual_seed(0)  # a random tiny ViT can give an all-negative CAM (ReLU → zero map) for some seeds
    vit = create_model("vit_base_patch16_224", num_classes=3, img_size=32, patch_size=8, hidden_size=16, mlp_dim=32,
                       num_layers=2, num_heads=2)
    x = torch.rand(2, 3, 32, 32)
    maps, logits = grad_cam(vit, x, target=[0, 2])
    assert maps["features"].shape == (2, 32, 32) and logits.shape == (2, 3)
    assert maps["features"].amax((1, 2)).tolist() == pytest.approx([1.0, 1.0])
    t = torch.arange(2 * 5 * 3).view(2, 5, 3).float()  # class token + 2×2 grid
    g = tokens_to_map(t)
    assert g.shape == (2, 3, 2, 2) and torch.equal(g[0, :, 0, 1], t[0, 2])
    # several layers in one pass, custom reshape for a [B, h*w, C] layout without class token
    layers = {"first": vit.blocks[0].norm1, "last": vit.blocks[-1].norm1}
    maps2, _ = grad_cam(vit, x, layers, reshape={"first": lambda a: tokens_to_map(a[:, 1:])})
    assert set(maps2) == {"first", "last"}
    out = save_cam_figure(tmp_path / "c.png", x[0], {k: v[0] for k, v in maps2.items()}, title="vit")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_default_layers_prefers_cam_layers():
    from glfuse.registry import create_model

    m = create_model("efficientnet_b0", num_classes=2)
    assert list(default_cam_layers(m)) == ["features"]
    with pytest.raises(ValueError, match="no cam_layers"):
        default_cam_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
