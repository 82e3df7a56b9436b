"""VDPF model family: shapes, shared encoder, GLFM roles, FFFN / CA, feature subsets, masking, errors, weights."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glfuse.models.vdpf import (
    FEATURES,
    FFFN,
    VDPF,
    Attention,
    CoordinateAttention,
    CrossAttentionBlock,
    ViTEncoder,
)
from glfuse.registry import create_model, list_models

VARIANTS = ["vdpf", "vdpf_resnet", "vdpf_ca", "vdpf_cat", "vdpf_sc"]
# Tiny ViT: 32x32 images, patch 8 -> 4x4 = 16 tokens per branch, D 64.
TINY = {
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "cross_mlp_hidden": 96,
}
N_TINY = 16


def tiny(name: str = "vdpf", **kw) -> VDPF:
    torch.manual_seed(0)
    if name == "vdpf_resnet":
        kw = {"img_size": 64, "embed_dim": 64, "num_heads": 4, "cross_mlp_hidden": 96, **kw}
    else:
        kw = {**TINY, **kw}
    return create_model(name, num_classes=kw.pop("num_classes", 3), **kw)


def batch(b: int = 2, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 1, size, size, generator=g)
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, size // 4 : size // 2, size // 8 : size // 2] = 1
    return image, mask


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# registry and shapes
# ---------------------------------------------------------------------------------------------------------------------
def test_all_variants_registered():
    assert set(VARIANTS) <= set(list_models("vdpf*"))


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_shapes(name):
    m = tiny(name, num_classes=5)
    size = 64 if name == "vdpf_resnet" else 32
    image, mask = batch(3, size)
    n = m.num_tokens
    assert n == (4 if name == "vdpf_resnet" else N_TINY)
    feats = m.forward_features(image, mask)
    assert feats.shape == (3, 3 * n, 64)
    assert m.forward_head(feats, pre_logits=True).shape == (3, 64)
    logits = m(image, mask)
    assert logits.shape == (3, 5)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    # every parameter takes part (no dead modules, DDP-safe)
    assert all(p.grad is not None for p in m.parameters()), [k for k, p in m.named_parameters() if p.grad is None]


def test_full_size_parameter_count():
    """ViT-B/16 + GLFM sizes from D, depth, MLP, checked against the official backbone figure in the spec."""
    m = create_model("vdpf", num_classes=2)
    d, depth, mlp, n, p2, h2 = 768, 12, 3072, 196, 16 * 16, 2048
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp + mlp * d + d)
    encoder = (p2 * 1 * d + d) + n * d + depth * block + 2 * d
    assert n_params(m.encoder) == encoder == 85_403_904
    # spec §1: official backbone 86,173,929 incl. unused 1000-way head (769,000), cls_token (768), frozen mask conv (257)
    assert encoder == 86_173_929 - 769_000 - 768 - 257
    sa = 3 * d * d + d * d + d  # qkv without bias + proj
    cross = 2 * (4 * d * d + d) + (d * h2 + h2 + h2 * d + d) + 3 * 2 * d
    # spec §1: official FAB 10,234,880 = our cross block + its extra self-attention + one more LN
    assert cross == 10_234_880 - sa - 2 * d
    assert n_params(m.glfm) == 2 * (sa + 2 * d) + cross
    t = 3 * n
    fffn = (3 * 16 + 16) + 2 * 16 + 2 * (16 * 3 + 1) + 2 * t + 2 * d + 2 * (3 + 1)
    assert n_params(m.fffn) == fffn
    assert n_params(m) == encoder + n_params(m.glfm) + fffn + 2 * d + (d * 2 + 2)
    print(f"vdpf (ViT-B/16, 2 classes): {n_params(m):,} parameters")


# ---------------------------------------------------------------------------------------------------------------------
# shared encoder
# ---------------------------------------------------------------------------------------------------------------------
def test_one_encoder_shared_by_both_branches():
    m = tiny()
    encoders = [mod for mod in m.modules() if isinstance(mod, ViTEncoder)]
    assert len(encoders) == 1
    image, mask = batch()
    # the one-pass [I_G; I_L] trick equals two separate calls of the encoder
    toks = m.branch_tokens(image, mask)
    torch.testing.assert_close(toks["global"], m.encoder(image), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(toks["local"], m.encoder(image * mask), atol=1e-5, rtol=1e-5)
    # changing one encoder weight changes both F_G and F_L
    with torch.no_grad():
        m.encoder.blocks[0].mlp.fc1.weight[0, 0] += 1.0
    toks2 = m.branch_tokens(image, mask)
    assert not torch.allclose(toks2["global"], toks["global"])
    assert not torch.allclose(toks2["local"], toks["local"])


def test_encoder_gradients_accumulate_from_both_paths():
    m = tiny()
    image, mask = batch()
    wg = torch.randn(2, N_TINY, 64)
    wl = torch.randn(2, N_TINY, 64)
    toks = m.branch_tokens(image, mask)
    ((toks["global"] * wg).sum() + (toks["local"] * wl).sum()).backward()
    both = {k: p.grad.clone() for k, p in m.encoder.named_parameters()}
    grads = []
    for x, w in ((image, wg), (image * mask, wl)):
        m.zero_grad()
        (m.encoder(x) * w).sum().backward()
        grads.append({k: p.grad.clone() for k, p in m.encoder.named_parameters()})
    for k, g in both.items():
        torch.testing.assert_close(g, grads[0][k] + grads[1][k], atol=1e-4, rtol=1e-4)
        if k != "pos_embed":
            assert not torch.allclose(grads[0][k], torch.zeros_like(g)) and not torch.allclose(grads[1][k], 0 * g)


def test_resnet_encoder_train_mode_keeps_per_path_batchnorm():
    m = tiny("vdpf_resnet").train()
    image, mask = batch(2, 64)
    toks = m.branch_tokens(image, mask)
    torch.testing.assert_close(toks["local"], m.encoder(image * mask), atol=1e-5, rtol=1e-5)
    m.eval()
    toks = m.branch_tokens(image, mask)
    torch.testing.assert_close(toks["global"], m.encoder(image), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# I_L = image x mask
# ---------------------------------------------------------------------------------------------------------------------
def test_local_branch_sees_only_the_box():
    m = tiny().eval()
    image, mask = batch()
    torch.testing.assert_close(m.local_image(image, mask), image * mask)
    changed = image.clone()
    changed[mask == 0] = torch.rand(int((mask == 0).sum()))
    with torch.no_grad():
        a, b = m.branch_tokens(image, mask), m.branch_tokens(changed, mask)
    torch.testing.assert_close(a["local"], b["local"], atol=1e-6, rtol=0)
    assert not torch.allclose(a["global"], b["global"])
    # the local input is really masked: an all-zero mask gives the encoder of a blank image
    with torch.no_grad():
        empty = m.branch_tokens(image, torch.zeros_like(mask))["local"]
        torch.testing.assert_close(empty, m.encoder(torch.zeros_like(image)), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# GLFM / cross-attention roles
# ---------------------------------------------------------------------------------------------------------------------
def _manual_mha(mod, q_in, kv_in):
    h = mod.num_heads
    b, n, d = q_in.shape
    q = mod.wq(q_in).view(b, n, h, d // h).transpose(1, 2)
    k = mod.wk(kv_in).view(b, kv_in.shape[1], h, d // h).transpose(1, 2)
    v = mod.wv(kv_in).view(b, kv_in.shape[1], h, d // h).transpose(1, 2)
    a = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
    return mod.proj((a @ v).transpose(1, 2).reshape(b, n, d))


def _manual_cross(block: CrossAttentionBlock, x, y):
    xy = block.norm1(_manual_mha(block.attn_xy, x, y) + x)  # eq. (1)
    xym = block.norm2(xy + block.mlp.fc2(F.gelu(block.mlp.fc1(xy))))  # eq. (2), GELU
    return block.norm3(_manual_mha(block.attn_yx, y, xym) + y)  # eq. (3)


@pytest.mark.parametrize("name", ["vdpf_cat", "vdpf_sc"])
def test_glfm_matches_equations_and_sc_swaps_roles(name):
    m = tiny(name if name == "vdpf_sc" else "vdpf", fusion="none").eval()
    image, mask = batch()
    seen = {}
    m.glfm.cross.register_forward_hook(lambda mod, args, out: seen.update(args=args))
    with torch.no_grad():
        feats = m.forward_features(image, mask)
        f_g, f_l = m.encoder(image), m.encoder(image * mask)
        g = m.glfm
        f_gs = g.norm_global(f_g + g.sa_global(f_g))
        f_ls = g.norm_local(f_l + g.sa_local(f_l))
        if name == "vdpf_sc":
            want_args, other_args = (f_gs, f_l), (f_ls, f_g)
        else:
            want_args, other_args = (f_ls, f_g), (f_gs, f_l)
        f_cross = _manual_cross(g.cross, *want_args)
        swapped = _manual_cross(g.cross, *other_args)
    for got, want in zip(seen["args"], want_args):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats, torch.cat([f_gs, f_ls, f_cross], dim=1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(f_cross, swapped, atol=1e-3)


def test_vit_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    att = Attention(64, 4)
    x = torch.randn(2, 10, 64)
    qkv = att.qkv(x).view(2, 10, 3, 4, 16).permute(2, 0, 3, 1, 4)
    a = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) * 16**-0.5, dim=-1)
    want = att.proj((a @ qkv[2]).transpose(1, 2).reshape(2, 10, 64))
    torch.testing.assert_close(att(x), want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# fusion variants
# ---------------------------------------------------------------------------------------------------------------------
def test_cat_has_no_fffn():
    m = tiny("vdpf_cat")
    assert not any(isinstance(mod, (FFFN, CoordinateAttention)) for mod in m.modules())
    image, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(m.forward_features(image, mask), m.glfm(*m.branch_tokens(image, mask).values()))


def test_ca_uses_coordinate_attention():
    m = tiny("vdpf_ca")
    cas = [mod for mod in m.modules() if isinstance(mod, CoordinateAttention)]
    assert len(cas) == 1 and not any(isinstance(mod, FFFN) for mod in m.modules())
    seen = {}
    cas[0].register_forward_hook(lambda mod, args, out: seen.update(shape=args[0].shape))
    m(*batch())
    assert seen["shape"] == (2, 64, 3 * 4, 4)  # F_C as a [B, D, 3*gh, gw] map
    # reduction 32 with at least 8 hidden channels (Hou et al.): 768 -> 24
    assert CoordinateAttention(768).conv1.out_channels == 24


def test_coordinate_attention_gates():
    torch.manual_seed(0)
    ca = CoordinateAttention(64).eval()
    x = torch.rand(2, 64, 12, 4) + 0.1
    y = ca(x)
    assert y.shape == x.shape
    ratio = y / x
    assert (ratio > 0).all() and (ratio < 1).all()


def test_fffn_shape_and_gates():
    torch.manual_seed(0)
    f = FFFN(48, 64)
    x = torch.randn(3, 48, 64)
    y = f(x)
    assert y.shape == x.shape
    a_t, a_d = f.gates(x)
    assert a_t.shape == (3, 48) and a_d.shape == (3, 64)
    for a in (a_t, a_d):
        assert (a > 0).all() and (a < 1).all()
    torch.testing.assert_close(y, x * a_t[:, :, None] * a_d[:, None, :])
    # the gates depend on the input (not constant)
    b_t, _ = f.gates(torch.randn(3, 48, 64) * 5)
    assert not torch.allclose(a_t, b_t)
    with pytest.raises(ValueError, match="FFFN built for"):
        f(torch.randn(3, 47, 64))


def test_default_model_uses_fffn():
    m = tiny()
    assert isinstance(m.fffn, FFFN) and m.fffn.num_tokens == 3 * N_TINY


# ---------------------------------------------------------------------------------------------------------------------
# features= subsets (Table 3)
# ---------------------------------------------------------------------------------------------------------------------
SUBSETS = [c for k in (1, 2, 3) for c in itertools.combinations(FEATURES, k)]


@pytest.mark.parametrize("features", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_feature_subsets_change_token_count(features):
    m = tiny(features=features)
    image, mask = batch()
    assert m.forward_features(image, mask).shape == (2, len(features) * N_TINY, 64)
    assert m.fffn.num_tokens == len(features) * N_TINY
    assert (m.glfm.cross is not None) == ("cross" in features)
    m(image, mask).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_feature_order_is_canonical():
    a, b = tiny(features=("cross", "global")), tiny(features=("global", "cross"))
    assert a.features == b.features == ("global", "cross")


# ---------------------------------------------------------------------------------------------------------------------
# Grad-CAM taps
# ---------------------------------------------------------------------------------------------------------------------
def test_cam_layers_see_one_branch_each():
    m = tiny()
    image, mask = batch()
    acts, grads = {}, {}
    for name, layer in m.cam_layers().items():
        layer.register_forward_hook(lambda mod, args, out, name=name: acts.__setitem__(name, out))
        layer.register_full_backward_hook(lambda mod, gi, go, name=name: grads.__setitem__(name, go[0]))
    m(image, mask)[:, 1].sum().backward()
    toks = m.branch_tokens(image, mask)
    for name in ("global", "local"):
        assert acts[name].shape == grads[name].shape == (2, N_TINY, 64)
        torch.testing.assert_close(acts[name], toks[name])
        assert grads[name].abs().sum() > 0
        assert m.tokens_to_map(acts[name]).shape == (2, 64, 4, 4)


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"features": ()}, "non-empty"),
        ({"features": ("global", "bogus")}, "subset"),
        ({"features": ("local", "local")}, "repeats"),
        ({"fusion": "mlp"}, "fusion"),
        ({"encoder": "swin"}, "encoder"),
        ({"swap_cross": True, "features": ("global", "local")}, "swap_cross"),
        ({"num_classes": 0}, "num_classes"),
        ({"img_size": 30}, "divisible"),
        ({"embed_dim": 66}, "divisible"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        VDPF(**{**TINY, **kw})


def test_bad_inputs():
    m = tiny()
    image, mask = batch()
    with pytest.raises(ValueError, match="box_mask"):
        m(image, mask[:1])
    with pytest.raises(ValueError, match="box_mask"):
        m(image, mask[:, :, :16])
    with pytest.raises(ValueError, match="image"):
        m(image.repeat(1, 3, 1, 1), mask)


# ---------------------------------------------------------------------------------------------------------------------
# local encoder weights (never downloaded)
# ---------------------------------------------------------------------------------------------------------------------
def test_encoder_weights_from_local_file(tmp_path):
    from safetensors.torch import save_file

    src = tiny()
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in src.encoder.state_dict().items()}, str(path))
    torch.manual_seed(123)
    dst = VDPF(**TINY, encoder_weights=path)
    for k, v in src.encoder.state_dict().items():
        torch.testing.assert_close(dst.encoder.state_dict()[k], v)

    # a timm-style ViT file: class token + its position, RGB patch conv, 1000-way head
    sd = {k: v.clone() for k, v in src.encoder.state_dict().items()}
    rgb = sd["patch_embed.proj.weight"].repeat(1, 3, 1, 1) / 3
    sd.update(
        {
            "patch_embed.proj.weight": rgb,
            "pos_embed": torch.cat([torch.zeros(1, 1, 64), sd["pos_embed"]], dim=1),
            "cls_token": torch.zeros(1, 1, 64),
            "head.weight": torch.zeros(1000, 64),
            "head.bias": torch.zeros(1000),
        }
    )
    torch.save(sd, tmp_path / "timm.pth")
    dst = VDPF(**TINY, encoder_weights=tmp_path / "timm.pth")
    torch.testing.assert_close(dst.encoder.pos_embed, src.encoder.pos_embed)
    torch.testing.assert_close(dst.encoder.patch_embed.proj.weight, src.encoder.patch_embed.proj.weight)

    with pytest.raises(ValueError, match="do not match"):
        VDPF(**{**TINY, "depth": 3}, encoder_weights=path)
    with pytest.raises(FileNotFoundError):
        VDPF(**TINY, encoder_weights=tmp_path / "missing.safetensors")
