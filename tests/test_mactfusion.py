"""MACTFusion: architecture size, official-checkpoint conversion, golden outputs, any-size input, training losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED, shared_path

from glfuse.fusion.losses import build_fusion_loss, ms_ssim, ssim
from glfuse.layers.maxvit import GridAttentionBlock, WindowAttentionBlock
from glfuse.models import prepare_inference
from glfuse.models.mactfusion import MACTFusion, convert_official_state_dict, fft_conv2d
from glfuse.registry import create_model, list_models, load_official, read_state_dict

GOLDEN = "golden/mactfusion"
CKPT = "mactfusion_ct_mri_official.pth"
GOLDEN_FILES = sorted(p.name for p in (SHARED / GOLDEN).glob("*.npz")) or ["(../shared absent)"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tensors here are small and the CPU is shared: one thread avoids per-op thread synchronisation stalls.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def official_sd() -> dict[str, torch.Tensor]:
    return read_state_dict(shared_path(GOLDEN, CKPT))


@pytest.fixture(scope="module")
def official_model(official_sd):
    return load_official("mactfusion", official_sd)


def test_registered_and_exact_parameter_count():
    assert "mactfusion" in list_models("mact*")
    model = create_model("mactfusion")
    assert sum(p.numel() for p in model.parameters()) == 571_035
    assert model.glfuse_cfg["arch"] == "mactfusion"


@pytest.fixture(params=["reference", "fast"])
def prepared_model(request, official_model):
    """The official model on the reference path and on the fast prepared-inference path (undone afterwards)."""
    prepare_inference(official_model, request.param)
    yield official_model
    prepare_inference(official_model, "reference")


@pytest.mark.parametrize("fname", GOLDEN_FILES)
def test_official_checkpoint_matches_golden_outputs(prepared_model, fname):
    d = np.load(shared_path(GOLDEN, fname))
    vis_y, ir, ref = (torch.from_numpy(d[k]) for k in ("vis_y", "ir", "fused_y"))
    with torch.no_grad():
        out = prepared_model(vis_y, ir)
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= 1e-4, f"{fname}: max |Δ| = {err:.3g}"


def test_golden_output_on_every_fast_inference_path(official_model, monkeypatch):
    """Prepared "fast": the oneDNN-fused kernels, their plain eager fallback and the two-thread side-by-side branches
    all reproduce the golden output; the side-by-side run equals the serial one (same kernels, one thread each)."""
    from glfuse.layers import fused

    name = GOLDEN_FILES[0]
    d = np.load(shared_path(GOLDEN, name))
    vis_y, ir, ref = (torch.from_numpy(d[k]) for k in ("vis_y", "ir", "fused_y"))
    model = prepare_inference(official_model, "fast")
    try:
        with torch.no_grad():
            serial = model(vis_y, ir)  # module fixture: one thread, so the branches run one after the other
            torch.set_num_threads(2)
            try:
                side = model(vis_y, ir)
            finally:
                torch.set_num_threads(1)
            monkeypatch.setattr(fused, "fusion_available", lambda: False)
            eager = model(vis_y, ir)
    finally:
        prepare_inference(official_model, "reference")
    assert (side - serial).abs().max().item() <= 1e-6
    for out in (serial, eager):
        assert (out - ref).abs().max().item() <= 1e-4


def test_portable_path_equals_reference_without_fft_or_fused_kernels(official_model, monkeypatch):
    """Prepared "portable": plain ops only (the FFT convolution and every oneDNN-fused helper would raise here) and the
    reference output (golden crop: the direct 31×31 convolution is slow at full size)."""
    from glfuse.layers import conv, fused

    d = np.load(shared_path(GOLDEN, GOLDEN_FILES[0]))
    vis_y, ir = (torch.from_numpy(d[k])[..., 96:144, 100:140] for k in ("vis_y", "ir"))
    with torch.no_grad():
        ref = official_model(vis_y, ir)

    def forbidden(*args, **kwargs):
        raise AssertionError("not a portable op")

    for mod, name in ((fused, "conv2d"), (fused, "linear"), (conv, "fft_conv2d")):
        monkeypatch.setattr(mod, name, forbidden)
    try:
        with torch.no_grad():
            out = prepare_inference(official_model, "portable")(vis_y, ir)
    finally:
        prepare_inference(official_model, "reference")
    assert (out - ref).abs().max().item() <= 1e-4


def test_converter_drops_exactly_the_unused_keys(official_sd):
    mapped = convert_official_state_dict(official_sd)
    ours = MACTFusion().state_dict()
    assert set(mapped) == set(ours)
    dropped = len(official_sd) - len(mapped)
    n_index = sum(k.endswith("relative_position_index") for k in official_sd)
    assert n_index == 8  # 2 self + 2 cross MaxViT blocks × (block, grid)
    unused = [k for k in official_sd if (".mb2_conv." in k and "_max." in k) or ".conv_noshared." in k]
    assert dropped == len(unused) + n_index
    # unused parameters only (buffers aside): 52,320 elements, as in the spec
    assert sum(official_sd[k].numel() for k in unused if "running" not in k and "num_batches" not in k) == 52_320


def test_module_prefixed_state_dict_loads(official_sd):
    prefixed = {f"module.{k}": v for k, v in official_sd.items()}
    model = load_official("mactfusion", prefixed)
    assert torch.equal(model.decoder[2].conv.bias, official_sd["decode.2.conv2d.bias"])
    assert torch.equal(model.vis_grdb1.sobel_x, official_sd["vis_rgbd1.sobelconv.convx.weight"])
    assert not model.training


def test_missing_and_unexpected_keys_fail_clearly(official_sd):
    broken = dict(official_sd)
    del broken["vis_cross.select1.conv.weight"]
    with pytest.raises(KeyError, match=r"missing.*vis_fusion\.gate\.weight"):
        load_official("mactfusion", broken)
    extra = dict(official_sd)
    extra["vis_cross.something_new.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match=r"unexpected.*something_new"):
        load_official("mactfusion", extra)
    wrong = dict(official_sd)
    wrong["decode.2.conv2d.weight"] = torch.zeros(1, 32, 1, 1)
    with pytest.raises(ValueError, match="shape mismatch.*decoder.2.conv.weight"):
        load_official("mactfusion", wrong)


def test_odd_sizes_and_input_checks():
    torch.manual_seed(0)
    model = MACTFusion().eval()
    vis, ir = torch.rand(2, 1, 100, 75), torch.rand(2, 1, 100, 75)
    with torch.no_grad():
        out = model(vis, ir)
        small_pair = torch.rand(2, 1, 5, 13), torch.rand(2, 1, 5, 13)
        small = model(*small_pair)
        # each image of a batch is fused independently in eval mode
        small0 = model(small_pair[0][:1], small_pair[1][:1])
    assert out.shape == (2, 1, 100, 75) and torch.isfinite(out).all()
    assert small.shape == (2, 1, 5, 13)
    assert torch.allclose(small[:1], small0, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="differ"):
        model(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 24))


def test_fft_conv_equals_direct_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 37, 29)
    w = torch.randn(4, 4, 31, 31) * 0.05
    ref = F.conv2d(x, w, padding=15, groups=4)
    assert (fft_conv2d(x, w, 15, 4) - ref).abs().max() < 1e-4 * ref.abs().max()


def _naive_partition_attention(block, x: torch.Tensor, mode: str) -> torch.Tensor:
    """Reference: explicit partition → softmax(q kᵀ·scale + bias) v → reverse, for one sub-block."""
    b, h, w, c = x.shape
    p, nh = block.partition, block.num_heads
    if mode == "window":
        t = x.view(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p, c)
    else:
        t = x.view(b, p, h // p, p, w // p, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, p * p, c)
    y = block.norm1(t)
    q, k, v = block.attn.qkv(y).view(t.shape[0], p * p, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
    a = (q @ k.transpose(-1, -2)) * nh**-0.5 + block.attn.rel_pos()
    t = t + block.attn.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(t.shape[0], p * p, c))
    t = t + block.mlp(block.norm2(t))
    if mode == "window":
        return t.view(b, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    return t.view(b, h // p, w // p, p, p, c).permute(0, 3, 1, 4, 2, 5).reshape(b, h, w, c)


@pytest.mark.parametrize("cls,mode", [(WindowAttentionBlock, "window"), (GridAttentionBlock, "grid")])
def test_window_and_grid_attention_against_naive_reference(cls, mode):
    torch.manual_seed(0)
    block = cls(48, num_heads=4, partition=8).eval()
    x = torch.randn(2, 32, 48, 48)
    with torch.no_grad():
        ref = _naive_partition_attention(block, x, mode)
        out = block(x)
    # reference forward with autograd (explicit attention map): same values and the naive reference's gradients,
    # the relative-position table included
    with torch.enable_grad():
        out_grad_path = block(x)
    assert (out - ref).abs().max() < 1e-4
    assert (out_grad_path - ref).abs().max() < 1e-4
    g = torch.randn_like(x)
    grads = []
    for fn in (block, lambda t: _naive_partition_attention(block, t, mode)):
        block.zero_grad(set_to_none=True)
        (fn(x) * g).sum().backward()
        grads.append({n: p.grad.clone() for n, p in block.named_parameters()})
    assert grads[0]["attn.rel_pos.relative_position_bias_table"].abs().sum() > 0
    for name, ref_grad in grads[1].items():
        assert torch.allclose(grads[0][name], ref_grad, rtol=1e-4, atol=1e-5), name
    # prepared (fast) variant: chunked (several chunks forced), fused linears, in place
    prepare_inference(block, "fast")
    block.chunk_tokens = 256
    with torch.no_grad():
        chunked = block(x)
        inplace = block(x.clone(), True)
    assert type(block).__name__.startswith("Fast")
    assert (chunked - ref).abs().max() < 1e-4 and (inplace - chunked).abs().max() == 0


def test_grad_checkpointing_same_gradients_and_batchnorm_counts_once():
    torch.manual_seed(0)
    a = MACTFusion().train()
    b = MACTFusion().train()
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    vis, ir = torch.rand(2, 1, 16, 24), torch.rand(2, 1, 16, 24)
    loss_fn = build_fusion_loss("official")
    for m in (a, b):
        loss, _ = loss_fn(m(vis, ir), vis, ir)
        loss.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-3, atol=1e-6), name
    bn_a, bn_b = a.vis_maxvit.sdconv.norm, b.vis_maxvit.sdconv.norm
    assert int(bn_b.num_batches_tracked) == 1
    assert torch.allclose(bn_a.running_mean, bn_b.running_mean, atol=1e-6)
    assert torch.allclose(bn_a.running_var, bn_b.running_var, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# losses


def test_ms_ssim_identity_and_torchmetrics_agreement():
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    torch.manual_seed(0)
    x = torch.rand(2, 1, 192, 192, dtype=torch.float64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ms_ssim(x, x, normalize=None), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # torchmetrics computes its last-level SSIM over a reflect-padded map; with w5 = 0 both are Wang's Π cs_i^{w_i}
    w = (0.0448, 0.2856, 0.3001, 0.2363, 0.0)
    for norm in (None, "simple"):
        ours = ms_ssim(x, y, weights=w, normalize=norm)
        ref = tm_ms_ssim(x, y, data_range=1.0, betas=w, normalize=norm, reduction="none")
        assert torch.allclose(ours, ref, atol=1e-10), (norm, ours, ref)
    # correct combination: the last level enters once (the official code raises it to the 4th power)
    w_last = (0.0, 0.0, 0.0, 0.0, 1.0)
    down = F.avg_pool2d(F.avg_pool2d(F.avg_pool2d(F.avg_pool2d(x, 2), 2), 2), 2)
    down_y = F.avg_pool2d(F.avg_pool2d(F.avg_pool2d(F.avg_pool2d(y, 2), 2), 2), 2)
    assert torch.allclose(ms_ssim(x, y, weights=w_last, normalize=None), ssim(down, down_y))


@pytest.mark.parametrize("preset", ["official", "paper"])
def test_fusion_losses_finite_and_differentiable(preset):
    torch.manual_seed(0)
    vis, ir = torch.rand(2, 1, 64, 48), torch.rand(2, 1, 64, 48)
    fused = (0.5 * (vis + ir)).requires_grad_()
    loss_fn = build_fusion_loss(preset)
    total, terms = loss_fn(fused, vis, ir)
    assert set(terms) == {"ssim", "intensity", "gradient"}
    assert torch.isfinite(total) and all(torch.isfinite(t) for t in terms.values())
    total.backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    # weights: total is the documented combination of the terms
    expect = 10 * terms["ssim"] + 20 * terms["intensity"] + 10 * terms["gradient"]
    assert torch.allclose(total.detach(), expect)
    # a perfect fusion of identical sources has zero loss
    zero, _ = loss_fn(vis, vis, vis)
    assert zero.abs() < 1e-6
    with pytest.raises(KeyError):
        build_fusion_loss("nope")


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv1x1_matmul_paths_equal_conv2d(with_bias):
    from glfuse.layers.fused import conv1x1

    torch.manual_seed(0)
    x = torch.randn(2, 24, 97, 101).contiguous(memory_format=torch.channels_last)  # 19,594 pixels: a ragged last chunk
    w, b = torch.randn(40, 24, 1, 1), (torch.randn(40) if with_bias else None)
    ref = F.conv2d(x, w, b)
    with torch.no_grad():
        chunked = conv1x1(x, w, b)
    whole = conv1x1(x, w, b)  # autograd on: one matmul
    for out in (chunked, whole):
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert (out - ref).abs().max() < 1e-4
