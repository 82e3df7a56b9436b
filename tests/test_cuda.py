"""CUDA code paths: AMP (bf16, fp16 + GradScaler), channels-last, pinned memory, DDP over nccl, the fusion API's device
handling and MACTFusion's FFT convolution. Every test is skipped without CUDA (the DDP test also without two GPUs);
``benchmarks/gpu_check.sh`` runs them on a GPU machine in one call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

sys.path.insert(0, str(Path(__file__).parent))
from _engine_helpers import Blobs, TinyNet, TinyTask  # noqa: E402


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Compare CUDA with CPU in true float32 (cuDNN convolutions default to TF32 on Ampere and later)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _cfg(**kw):
    from glfuse.engine import TrainConfig

    base = {"epochs": 1, "batch_size": 4, "lr": 1e-2, "warmup_epochs": 0.5, "progress": False, "monitor": "acc",
            "device": "cuda", "max_steps_per_epoch": 2}
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------------------- AMP
@needs_cuda
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_amp_fit_steps(tmp_path, monkeypatch, dtype):
    """engine.fit with amp on CUDA: bf16 autocast (no scaler), or fp16 autocast with a GradScaler whose state is
    checkpointed; the weights move and stay finite, float32 master weights."""
    from glfuse.checkpoint import load_training_state
    from glfuse.engine import fit

    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    if dtype == "fp16":
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    seen = []
    model = TinyNet()
    orig = model.forward

    def spy(x):
        y = orig(x)
        seen.append(y.dtype)
        return y

    model.forward = spy
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, TinyTask(), Blobs(16), Blobs(6, seed=1), _cfg(amp=True), tmp_path / "run")
    assert seen and seen[0] == (torch.bfloat16 if dtype == "bf16" else torch.float16)
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p.detach().cpu()) for a, p in zip(before, model.parameters()))
    st = load_training_state(tmp_path / "run" / "last" / "training_state.pt")
    assert bool(st["scaler"]) == (dtype == "fp16")  # GradScaler only for fp16
    if dtype == "fp16":
        fit(TinyNet(), TinyTask(), Blobs(16), Blobs(6, seed=1), _cfg(amp=True, epochs=2), tmp_path / "run",
            resume=True)  # the scaler state loads back


@needs_cuda
def test_hifuse_bf16_autocast_train_step():
    """HiFuse (tiny widths) forward+backward under bf16 autocast on CUDA: finite loss and gradients."""
    import glfuse

    if not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    m = glfuse.create_model("hifuse_tiny", num_classes=3, dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8)).cuda()
    x, y = torch.randn(4, 3, 64, 64, device="cuda"), torch.tensor([0, 1, 2, 0], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(m(x).float(), y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@needs_cuda
def test_mactfusion_amp_fit(tmp_path):
    """The MACTFusion preset trains with amp: true; two engine steps with the official loss on CUDA stay finite."""
    import glfuse
    from glfuse.engine import fit
    from glfuse.fusion.train import FusionTask

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"vis": torch.rand(1, 32, 32, generator=g), "ir": torch.rand(1, 32, 32, generator=g)}

    model = glfuse.create_model("mactfusion")
    model.set_grad_checkpointing(True)
    summary = fit(model, FusionTask("official", ["EN", "SD"]), Pairs(), Pairs(),
                  _cfg(amp=True, batch_size=2, optimizer="adam", monitor="EN"), tmp_path / "run")
    assert np.isfinite(summary["last"]["train_loss"]) and np.isfinite(summary["last"]["val_EN"])


@needs_cuda
def test_mactfusion_bf16_autocast_inference():
    """Inference under bf16 autocast (the throughput benchmark's bf16 forward). MACTFusion runs its two branches in two
    threads without autograd; autocast is thread-local, so the worker thread must get the caller's autocast state."""
    import glfuse

    if not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    m = glfuse.create_model("mactfusion").cuda().eval()
    x = torch.rand(2, 1, 64, 64, device="cuda")
    with torch.no_grad():
        ref = m(x, x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(x, x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)  # bf16: ~3 significant digits


# ------------------------------------------------------------------------------------------------- channels-last
@needs_cuda
def test_fit_converts_channels_last_models(tmp_path):
    """A model with ``channels_last = True`` is put in channels-last memory on CUDA by engine.fit and still learns."""
    from glfuse.engine import fit

    class Net(TinyNet):
        channels_last = True

        def __init__(self):
            super().__init__()
            self.mix = torch.nn.Conv2d(4, 4, 3, padding=1)  # [4, 4, 3, 3]: the two layouts differ

        def forward(self, x):
            return self.head(torch.relu(self.mix(self.conv(x))).mean((2, 3)))

    model = Net()
    assert not model.mix.weight.is_contiguous(memory_format=torch.channels_last)
    fit(model, TinyTask(), Blobs(16), None, _cfg(amp=False), tmp_path / "run")
    assert model.mix.weight.is_cuda and model.mix.weight.is_contiguous(memory_format=torch.channels_last)


@needs_cuda
def test_hifuse_channels_last_cuda_matches_cpu():
    """HiFuse's channels-last paths on CUDA give the CPU's float32 result."""
    import glfuse

    torch.manual_seed(0)
    m = glfuse.create_model("hifuse_tiny", num_classes=3, dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8)).eval()
    assert m.channels_last
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        out = m.cuda().to(memory_format=torch.channels_last)(x.cuda().contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------- pinned memory
@needs_cuda
@pytest.mark.parametrize("where", ["fit", "evaluate"])
def test_loader_batches_are_pinned(tmp_path, monkeypatch, where):
    """On CUDA the engine's loaders pin host memory (fast, asynchronous host→device copies)."""
    import glfuse.engine as engine

    pinned: list[bool] = []
    orig = engine._to_device

    def spy(batch, device):
        pinned.append(all(t.is_pinned() for t in batch if isinstance(t, torch.Tensor)))
        return orig(batch, device)

    monkeypatch.setattr(engine, "_to_device", spy)
    if where == "fit":
        engine.fit(TinyNet(), TinyTask(), Blobs(8), None, _cfg(amp=False), tmp_path / "run")
    else:
        metrics, out = engine.evaluate(TinyNet().cuda(), TinyTask(), Blobs(7), batch_size=2, device="cuda",
                                       progress=False)
        assert out["index"].tolist() == list(range(7))
    assert pinned and all(pinned)


# --------------------------------------------------------------------------------------------------------- fusion
@needs_cuda
def test_fuse_images_keeps_a_cuda_model_on_cuda():
    """fuse_images runs a caller's CUDA model where it is (it must not move the model to the CPU) and gives the CPU
    model's result."""
    import glfuse
    from glfuse.fusion.api import fuse_images

    torch.manual_seed(0)
    cpu_model = glfuse.create_model("mactfusion").eval()
    rng = np.random.default_rng(0)
    mri, ct = rng.random((64, 64), dtype=np.float32), rng.random((64, 64), dtype=np.float32)
    ref = fuse_images(cpu_model, mri, ct, clamp=False)
    gpu_model = glfuse.create_model("mactfusion").eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    out = fuse_images(gpu_model, mri, ct, clamp=False)
    assert next(gpu_model.parameters()).is_cuda, "fuse_images moved the caller's model off the GPU"
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def _fft_conv2d():
    """MACTFusion's FFT convolution, wherever the models refactor (acceleration apart from the paper maths) puts it."""
    import importlib

    for mod in ("glfuse.models.mactfusion", "glfuse.layers.fused", "glfuse.layers"):
        fn = getattr(importlib.import_module(mod), "fft_conv2d", None)
        if fn is not None:
            return fn
    pytest.fail("fft_conv2d not found in glfuse.models.mactfusion or glfuse.layers")


def test_load_fusion_model_leaves_a_module_where_it_is():
    """CPU check of the same rule: a module on another device (here "meta") is used where it is, not copied to CPU;
    inference runs on a prepared copy, so the caller's module itself is left untouched."""
    from glfuse.fusion.api import load_fusion_model

    m = torch.nn.Conv2d(1, 1, 3).to("meta").train()
    fuser = load_fusion_model(m)
    assert fuser.module is not m and fuser.module.weight.device.type == "meta"
    assert m.weight.device.type == "meta" and m.training


@needs_cuda
def test_fft_conv_equals_direct_conv_on_cuda():
    """MACTFusion's 31×31 grouped convolution by FFT equals the direct convolution on CUDA in float64."""
    fft_conv2d = _fft_conv2d()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 16, 40, 48, device="cuda", dtype=torch.float64, generator=g)
    w = torch.randn(4, 4, 31, 31, device="cuda", dtype=torch.float64, generator=g)
    out = fft_conv2d(x, w, 15, groups=4)
    ref = F.conv2d(x, w, padding=15, groups=4)
    assert out.is_cuda and out.shape == ref.shape
    torch.testing.assert_close(out.to(ref.dtype), ref, atol=1e-9, rtol=1e-9)


@needs_cuda
def test_mactfusion_dfe_fft_path_on_cuda():
    """The DFE block's FFT path equals its direct path on CUDA (float64 weights and input)."""
    from glfuse.models.mactfusion import DFE

    torch.manual_seed(0)
    blk = DFE().double().cuda().eval()
    if not hasattr(blk, "use_fft"):
        pytest.skip("DFE has no use_fft switch any more (the FFT path is chosen elsewhere); the function test covers it")
    x = torch.rand(1, 1, 64, 64, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        blk.use_fft = True
        a = blk(x)
        blk.use_fft = False
        b = blk(x)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


# ------------------------------------------------------------------------------------------------------------ DDP
_DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    from _engine_helpers import Blobs, TinyNet, TinyTask
    from glfuse.engine import TrainConfig, evaluate, fit, get_device

    run_dir, out_json = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0.5, progress=False, monitor="acc", amp=True)
    model = TinyNet()
    fit(model, TinyTask(), Blobs(22), Blobs(7, seed=1), cfg, run_dir)
    dev = get_device("auto")
    metrics, outputs = evaluate(model, TinyTask(), Blobs(7, seed=1), batch_size=2, device=dev, progress=False)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()
    with open(f"{out_json}.{dist.get_rank()}", "w") as f:
        json.dump({"n": metrics["n"], "index": outputs["index"].tolist(), "checksum": flat.double().sum().item(),
                   "backend": dist.get_backend(), "device": str(dev), "world": dist.get_world_size()}, f)
    dist.barrier()
    dist.destroy_process_group()
""")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over nccl needs two GPUs")
@needs_cuda
def test_ddp_nccl_two_gpus(tmp_path):
    """torchrun --nproc_per_node=2 on two GPUs: nccl, one device per rank, identical weights, each sample once."""
    script = tmp_path / "ddp_cuda.py"
    script.write_text(_DDP_SCRIPT)
    tests = Path(__file__).parent
    src = tests.parent / "src"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests), str(src), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "run"), str(tmp_path / "out.json")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path / f"out.json.{k}").read_text()) for k in (0, 1)]
    assert [x["backend"] for x in res] == ["nccl", "nccl"] and [x["device"] for x in res] == ["cuda:0", "cuda:1"]
    assert res[0]["checksum"] == pytest.approx(res[1]["checksum"], rel=1e-6)
    assert res[0]["n"] == 7 and sorted(res[0]["index"]) == list(range(7))
