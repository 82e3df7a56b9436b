"""HiFuse: sizes, FLOPs, official-checkpoint conversion and block-level golden equivalence with the official code."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import shared_path
from torch.utils.flop_counter import FlopCounterMode

import glfuse
from glfuse.layers.window import shifted_window_mask
from glfuse.models import prepare_inference
from glfuse.models.hifuse import HiFuse, convert_official_state_dict, official_depths

VARIANTS = ("hifuse_tiny", "hifuse_small", "hifuse_base")
# Official "used in forward" parameter counts (spec § 3), per class count.
PARAMS = {
    7: (118_086_497, 121_664_273, 132_397_601),
    2: (118_082_652, 121_660_428, 132_393_756),
    8: (118_087_266, 121_665_042, 132_398_370),
}
GFLOPS_224 = (35.04, 36.49, 40.85)  # FlopCounterMode, batch 1, 224²


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _meta(name: str, **kw) -> torch.nn.Module:
    with torch.device("meta"):
        return glfuse.create_model(name, **kw)


def _flops(model: torch.nn.Module, size: int = 224) -> int:
    dev = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(torch.randn(1, 3, size, size, device=dev))
    return fc.get_total_flops()


@pytest.fixture(scope="module")
def tiny() -> HiFuse:
    torch.manual_seed(0)
    return glfuse.create_model("hifuse_tiny", num_classes=7).eval()


# ---------------------------------------------------------------------------------------------------- size / cost
@pytest.mark.parametrize("num_classes", sorted(PARAMS))
@pytest.mark.parametrize("idx", range(3))
def test_param_counts_exact(idx: int, num_classes: int) -> None:
    m = _meta(VARIANTS[idx], num_classes=num_classes)
    assert _n_params(m) == PARAMS[num_classes][idx]


def test_real_build_matches_meta_and_official_init(tiny: HiFuse) -> None:
    assert _n_params(tiny) == PARAMS[7][0]
    assert all(p.requires_grad for p in tiny.parameters())
    # official init: branch convs trunc-normal std 0.2, Linear std 0.02 (bias 0), HFF blocks PyTorch default
    stem = tiny.local_downsample[0][0].weight
    assert 0.15 < stem.std().item() < 0.25 and stem.abs().max() <= 2.0
    qkv = tiny.global_stages[0].blocks[0].attn.qkv
    assert 0.015 < qkv.weight.std().item() < 0.025 and torch.count_nonzero(qkv.bias) == 0
    dense = tiny.fusion[0].irmlp.conv3x3.weight  # kaiming-uniform(a=sqrt 5): bound 1/sqrt(fan_in)
    assert dense.abs().max() <= 1 / (288 * 9) ** 0.5 + 1e-7 and dense.std() < 0.02


@pytest.mark.parametrize("idx", range(3))
def test_flops_224(idx: int) -> None:
    assert _flops(_meta(VARIANTS[idx], num_classes=7)) / 1e9 == pytest.approx(GFLOPS_224[idx], abs=0.01)


@pytest.mark.parametrize("idx", range(3))
def test_paper_variants(idx: int) -> None:
    dense, paper = _meta(VARIANTS[idx], num_classes=7), _meta(VARIANTS[idx] + "_paper", num_classes=7)
    # the only difference is the IRMLP 3x3: dense C'^2*9 vs depthwise C'*9 weights (C' = 3C = 288, 576, 1152, 2304)
    widths = (288, 576, 1152, 2304)
    assert _n_params(dense) - _n_params(paper) == sum(c * c * 9 - c * 9 for c in widths)
    sides = (56, 28, 14, 7)
    mac_diff = sum((c * c * 9 - c * 9) * s * s for c, s in zip(widths, sides))
    f_dense, f_paper = _flops(dense), _flops(paper)
    assert f_dense - f_paper == 2 * mac_diff
    assert f_paper / 2e9 == pytest.approx((8.13, 8.84, 10.97)[idx], abs=0.15)  # the paper's Table 4 "FLOPs" (= MAC)


# --------------------------------------------------------------------------------------------------- API / shapes
def test_list_models() -> None:
    names = glfuse.list_models("hifuse*")
    assert set(names) >= {v for n in VARIANTS for v in (n, n + "_paper")}


def test_input_160_real_with_cam_layers(tiny: HiFuse) -> None:
    # 160 -> 40/20/10/5 grids: every global stage pads to a multiple of the window (stage 4: one padded, shifted window)
    got: dict[str, tuple[int, ...]] = {}
    hooks = [
        mod.register_forward_hook(lambda _m, _i, out, k=k: got.__setitem__(k, tuple(out.shape)))
        for k, mod in tiny.cam_layers().items()
    ]
    try:
        with torch.no_grad():
            f = tiny.forward_features(torch.randn(1, 3, 160, 160))
    finally:
        for h in hooks:
            h.remove()
    assert f.shape == (1, 768, 5, 5) and torch.isfinite(f).all()
    assert got == {"local": (1, 768, 5, 5), "global": (1, 768, 5, 5), "fusion": (1, 768, 5, 5)}


@pytest.mark.parametrize("size", [192, 256, 320])
def test_input_sizes_shapes(size: int) -> None:
    m = _meta("hifuse_tiny", num_classes=7).eval()
    f = m.forward_features(torch.randn(2, 3, size, size, device="meta"))
    assert f.shape == (2, 768, size // 32, size // 32)
    assert m.forward_head(f).shape == (2, 7)


def test_bad_input_size(tiny: HiFuse) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny(torch.randn(1, 3, 200, 224))


def test_create_model_in_chans_and_heads(tiny: HiFuse) -> None:
    with torch.device("meta"):
        m = glfuse.create_model("hifuse_tiny", num_classes=2, in_chans=1)
        assert m(torch.randn(2, 1, 192, 192)).shape == (2, 2)
    assert m.glfuse_cfg == {"arch": "hifuse_tiny", "model_args": {"num_classes": 2, "in_chans": 1}}
    assert m.local_downsample[0][0].in_channels == 1 and m.patch_embed.proj.in_channels == 1 and m.head.out_features == 2
    x = torch.randn(2, 3, 64, 64)  # 2x2 at stage 4, padded to one 7x7 window
    with torch.no_grad():
        feats = tiny.forward_features(x)
        assert feats.shape == (2, 768, 2, 2)
        assert tiny.forward_head(feats, pre_logits=True).shape == (2, 768)
        logits = tiny(x)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, tiny.forward_head(feats))


def test_backward_reaches_every_parameter() -> None:
    m = _meta("hifuse_tiny_paper", num_classes=3).train()
    m(torch.randn(2, 3, 64, 64, device="meta")).sum().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


# ----------------------------------------------------------------------------------------------------- converter
def _fake_official_sd(name: str, num_classes: int = 7) -> dict[str, torch.Tensor]:
    """An official-format state dict built by inverting our key mapping, plus the official never-used keys."""
    m = _meta(name, num_classes=num_classes)
    inv = {
        r"local_downsample\.": "downsample_layers.",
        r"local_stages\.": "stages.",
        r"head_norm\.": "conv_norm.",
        r"^head\.": "conv_head.",
    }
    out: dict[str, torch.Tensor] = {}
    for k, v in m.state_dict().items():
        o = k
        for a, b in inv.items():
            o = re.sub(a, b, o)
        g = re.match(r"global_stages\.(\d)\.(.*)", o)
        if g:
            o = f"layers{int(g[1]) + 1}.{g[2].replace('.fc.', '.fc1.')}"
        f = re.match(r"fusion\.(\d)\.(.*)", o)
        if f:
            i, rest = int(f[1]) + 1, f[2]
            table = {
                "local_proj.": "W_l.", "global_proj.": "W_g.", "prev_proj.": "Updim.",
                "fuse_norm.": "norm2." if i == 1 else "norm1.", "fuse_conv.": "W." if i == 1 else "W3.",
                "spatial_attn.": "spatial.", "channel_attn.fc1.": "se.0.", "channel_attn.fc2.": "se.2.",
                "out_norm.": "norm3.", "irmlp.conv3x3.": "residual.conv1.conv.", "irmlp.bn1.": "residual.bn1.",
                "irmlp.expand.": "residual.conv2.conv.", "irmlp.project.": "residual.conv3.conv.",
                "irmlp.bn2.": "residual.conv3.bn.",
            }  # fmt: skip
            pre = next(p for p in table if rest.startswith(p))
            o = f"fu{i}.{table[pre]}{rest[len(pre) :]}"
        out["module." + o] = torch.zeros(v.shape)
    t = torch.zeros
    out["module.norm.weight"], out["module.head.weight"] = t(768), t(num_classes, 768)
    out["module.fu1.Updim.conv.weight"], out["module.fu3.W.bn.running_mean"] = t(96, 48, 1, 1), t(384)
    out["module.layers2.blocks.1.norm2.bias"] = t(192)
    out["module.layers1.blocks.0.attn.relative_position_index"] = t(49, 49, dtype=torch.long)
    return out


def test_load_official_roundtrip_and_variant_check() -> None:
    sd = _fake_official_sd("hifuse_tiny", num_classes=8)
    m = glfuse.load_official("hifuse_tiny", {"state_dict": sd})
    assert m.num_classes == 8 and not m.training
    assert all(torch.count_nonzero(p) == 0 for p in m.parameters())  # every parameter came from the checkpoint
    with pytest.raises(ValueError, match=r"hifuse_tiny .*but hifuse_small was requested"):
        glfuse.load_official("hifuse_small", sd)
    with pytest.raises(ValueError, match="num_classes"):
        glfuse.load_official("hifuse_tiny", sd, num_classes=3)


def test_wrong_variant_names_both() -> None:
    sd = {k.removeprefix("module."): v for k, v in _fake_official_sd("hifuse_small").items()}
    assert official_depths(sd) == (2, 2, 6, 2)
    with pytest.raises(ValueError) as e:
        glfuse.load_official("hifuse_tiny", sd)
    msg = str(e.value)
    assert "hifuse_small" in msg and "hifuse_tiny" in msg and "2,2,6,2" in msg


def test_converter_rejects_unknown_keys() -> None:
    with pytest.raises(KeyError, match="bogus"):
        convert_official_state_dict({"fu2.bogus.weight": torch.zeros(1)})
    assert convert_official_state_dict({"fu2.W.conv.weight": torch.zeros(1), "fu1.norm1.bias": torch.zeros(1)}) == {}


# ------------------------------------------------------------------------------------------------ golden (official)
@pytest.fixture(params=["reference", "fast", "portable"])
def prepared_tiny(request, tiny: HiFuse):
    """``tiny`` on the reference path and on each prepared-inference path (undone afterwards)."""
    prepare_inference(tiny, request.param)
    assert tiny.glfuse_prepared == (None if request.param == "reference" else request.param)
    yield tiny
    prepare_inference(tiny, "reference")
    tiny.eval()


def _golden(name: str) -> dict:
    return torch.load(shared_path("golden", "hifuse", name), map_location="cpu", weights_only=True)


def _load_golden_weights(model: HiFuse, g: dict) -> None:
    sd = {k: v.float() if v.is_floating_point() else v for k, v in g["state_dict"].items()}
    conv = convert_official_state_dict(sd)
    own = model.state_dict()
    assert conv and set(conv) <= set(own), sorted(set(conv) - set(own))
    model.load_state_dict(conv, strict=False)
    for k, v in conv.items():  # loaded exactly
        assert torch.equal(model.state_dict()[k], v), k


def _check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-4


def test_golden_stem_and_patch_embed(prepared_tiny: HiFuse) -> None:
    tiny = prepared_tiny
    g = _golden("stem_and_patch_embed.pt")
    _load_golden_weights(tiny, g)
    img = g["inputs"]["img"]
    with torch.no_grad():
        _check(tiny.local_downsample[0](img), g["output"]["local_stem"])
        _check(tiny.patch_embed(img).flatten(1, 2), g["output"]["patch_embed_tokens"])


def test_golden_local_block(prepared_tiny: HiFuse) -> None:
    tiny = prepared_tiny
    g = _golden("local_stage1_block0.pt")
    _load_golden_weights(tiny, g)
    x = g["inputs"]["x"]
    with torch.no_grad():
        _check(tiny.local_stages[0][0](x), g["output"])
        _check(tiny.local_stages[0][0](x.contiguous(memory_format=torch.channels_last)), g["output"])


def test_golden_global_blocks(prepared_tiny: HiFuse) -> None:
    tiny = prepared_tiny
    g = _golden("global_stage1_blocks.pt")
    _load_golden_weights(tiny, g)
    x = g["inputs"]["x"].view(2, 56, 56, 96)
    mask = shifted_window_mask(56, 56, 7, 3)
    assert torch.equal(mask, g["attn_mask"])
    stage = tiny.global_stages[0]
    with torch.no_grad():
        _check(stage.blocks[0](x).flatten(1, 2), g["output"]["block0"])
        _check(stage.blocks[1](x, mask).flatten(1, 2), g["output"]["block1"])
        _check(stage.blocks[1](x).flatten(1, 2), g["output"]["block1"])  # mask computed by the block itself
        chained = stage(x.permute(0, 3, 1, 2))  # NCHW view in, NCHW out
        _check(chained.flatten(2).transpose(1, 2), g["output"]["layer_chained"])


def test_golden_hff_block(prepared_tiny: HiFuse) -> None:
    tiny = prepared_tiny
    g = _golden("hff_fu2.pt")
    _load_golden_weights(tiny, g)
    blk = tiny.fusion[1]
    ins = g["inputs"]
    with torch.no_grad():
        _check(blk(ins["l"], ins["g"], ins["f"]), g["output"])
        cl = {k: v.contiguous(memory_format=torch.channels_last) for k, v in ins.items()}
        _check(blk(cl["l"], cl["g"], cl["f"]), g["output"])
        state = {k: v.clone() for k, v in blk.state_dict().items()}
        try:
            blk.train()
            _check(blk(ins["l"], ins["g"], ins["f"]), g["output_train_mode"])
        finally:
            blk.eval()
            blk.load_state_dict(state)  # undo the running-stat update


def test_golden_head(prepared_tiny: HiFuse) -> None:
    tiny = prepared_tiny
    g = _golden("head.pt")
    _load_golden_weights(tiny, g)
    f4 = g["inputs"]["f4"]
    with torch.no_grad():
        _check(tiny.forward_head(f4, pre_logits=True), g["output"]["normed"])
        _check(tiny.forward_head(f4), g["output"]["logits"])
