"""Training a fusion network (MACTFusion) on registered image pairs with the shared engine.

Data layout: ``<root>/<split>/<VIS>/<id>.png`` and ``<root>/<split>/<IR>/<id>.png`` (e.g. ``havard-fusion/CT-MRI``
with ``vis: MRI``, ``ir: CT``), or two parallel folders ``vis_dir`` / ``ir_dir``. Same file stem = one registered pair
(unmatched names are an error that lists them). ``vis`` is the input whose Y channel the network takes (MRI for
CT–MRI, the colour image for PET/SPECT–MRI); a colour file becomes its BT.601 Y, a grey file enters as
``Y(g, g, g)`` like the official loader.

Validation: the Harvard data has no validation split, so a seeded fraction (``data.val_fraction`` of the sorted training
pairs, permuted with ``data.split_seed``) is held out and never trained on; the chosen names are written to
``<run>/split.json``. Validation images are used whole (or centre-cropped to ``data.val_crop`` to keep CPU runs short);
the task reports the mean of a few fast fusion metrics (``metrics``; default EN, SD, SF, MI, Qabf, SSIM from
:mod:`glfuse.metrics.fusion`, computed on the 8-bit rule ``rint(clip(F,0,1)·255)`` against the sources on 0–255).

Training pairs are random crops (``data.crop``, e.g. 128 for CPU; ``null`` = whole images, official 256²), optional
horizontal flips (off by default: the official recipe has no augmentation). ``data.samples_per_epoch`` sets the epoch
length (the official loader fixes 30000 samples per epoch by cycling; default: one pass over the pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from glfuse.config import Range
from glfuse.engine import TrainConfig

__all__ = ["FusionConfig", "FusionDataConfig", "FusionModelConfig", "FusionPairDataset", "FusionTask",
           "find_pairs", "split_pairs", "train"]

DEFAULT_VAL_METRICS = ["EN", "SD", "SF", "MI", "Qabf", "SSIM"]


@dataclass
class FusionModelConfig:
    name: str = "mactfusion"
    args: dict = field(default_factory=dict)
    # Recompute block activations in backward: batch 4 at 256² peaks at ~3 GiB instead of ~12-14.5 GiB (same maths).
    grad_checkpointing: bool = True


@dataclass
class FusionDataConfig:
    root: str = "../shared/data/havard-fusion/CT-MRI"
    split: str = "train"
    vis: str = "MRI"  # folder of the network's first input (Y channel): MRI for CT–MRI, PET/SPECT otherwise
    ir: str = "CT"  # folder of the second (grey) input
    vis_dir: str | None = None  # alternative to root/split/vis: two parallel folders
    ir_dir: str | None = None
    crop: Annotated[int, Range(ge=8)] | None = 256  # random training crop (None: whole images)
    hflip: bool = False
    val_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.1  # seeded hold-out from the training pairs (havard has no val split)
    split_seed: int = 0
    val_crop: Annotated[int, Range(ge=8)] | None = None  # centre crop for validation (None: whole images)
    samples_per_epoch: Annotated[int, Range(ge=1)] | None = None  # None: one pass over the training pairs


@dataclass
class FusionConfig:
    model: FusionModelConfig = field(default_factory=FusionModelConfig)
    data: FusionDataConfig = field(default_factory=FusionDataConfig)
    loss: Literal["official", "paper"] = "official"
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_VAL_METRICS))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=2, batch_size=4, optimizer="adam", lr=1e-3, weight_decay=0.0, no_decay_1d=False, schedule="exp",
        exp_gamma=0.75, monitor="Qabf", monitor_mode="max", drop_last=True))


# ---------------------------------------------------------------------------------------------------------------- data
def find_pairs(data: FusionDataConfig) -> list[tuple[str, Path, Path]]:
    """Sorted ``[(stem, vis_path, ir_path)]`` for the configured folders."""
    from glfuse.data.image_io import pair_folders

    if (data.vis_dir is None) != (data.ir_dir is None):
        raise ValueError("config keys 'data.vis_dir' and 'data.ir_dir' must be given together")
    if data.vis_dir is not None:
        vis_dir, ir_dir = Path(data.vis_dir), Path(data.ir_dir)
    else:
        base = Path(data.root) / data.split
        vis_dir, ir_dir = base / data.vis, base / data.ir
    for d in (vis_dir, ir_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: training folder not found (config data.root / data.vis / data.ir)")
    return pair_folders(vis_dir, ir_dir)


def split_pairs(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded hold-out: ``(train, val)``; ``val`` has ``round(fraction·n)`` pairs (at least 1 if fraction > 0)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"config key 'data.val_fraction': must be in [0, 1), got {fraction}")
    n = len(pairs)
    n_val = 0 if fraction == 0 else max(1, round(fraction * n))
    if n_val >= n:
        raise ValueError(f"only {n} pair(s): cannot hold out {n_val} for validation (lower data.val_fraction)")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = set(perm[:n_val].tolist())
    return [p for i, p in enumerate(pairs) if i not in val_idx], [p for i, p in enumerate(pairs) if i in val_idx]


def _load_y(path: Path) -> np.ndarray:
    from glfuse.data.color import to_y
    from glfuse.data.image_io import read_image

    return to_y(read_image(path)[0])  # the same grey -> Y rule as inference (glfuse.fusion.api)


class FusionPairDataset(Dataset):
    """Registered pairs held in memory as float32 ``[1, H, W]`` (vis Y, ir); samples ``{"vis", "ir"}``.

    ``crop``: random crop size for training (uses torch's global RNG, so the engine's seeding/resume applies);
    ``centre_crop``: deterministic centre crop (validation). ``length``: virtual epoch length (cycles the pairs).
    """

    def __init__(self, pairs: list[tuple[str, Path, Path]], *, crop: int | None = None,
                 centre_crop: int | None = None, hflip: bool = False, length: int | None = None) -> None:
        self.names = [p[0] for p in pairs]
        self.vis, self.ir = [], []
        for _stem, pv, pi in pairs:
            v, i = _load_y(pv), _load_y(pi)
            if v.shape != i.shape:
                raise ValueError(f"size mismatch: {pv} is {v.shape[1]}x{v.shape[0]} but {pi} is {i.shape[1]}x{i.shape[0]}")
            for c in (crop, centre_crop):
                if c is not None and (c > v.shape[0] or c > v.shape[1]):
                    raise ValueError(f"crop {c} larger than image {pv} ({v.shape[1]}x{v.shape[0]})")
            self.vis.append(torch.from_numpy(v)[None])
            self.ir.append(torch.from_numpy(i)[None])
        self.crop, self.centre_crop, self.hflip = crop, centre_crop, hflip
        self.length = length or len(pairs)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        k = idx % len(self.vis)
        v, i = self.vis[k], self.ir[k]
        h, w = v.shape[-2:]
        if self.crop is not None:
            top = int(torch.randint(0, h - self.crop + 1, ()).item())
            left = int(torch.randint(0, w - self.crop + 1, ()).item())
            v = v[:, top:top + self.crop, left:left + self.crop]
            i = i[:, top:top + self.crop, left:left + self.crop]
        elif self.centre_crop is not None:
            top, left = (h - self.centre_crop) // 2, (w - self.centre_crop) // 2
            v = v[:, top:top + self.centre_crop, left:left + self.centre_crop]
            i = i[:, top:top + self.centre_crop, left:left + self.centre_crop]
        if self.hflip and torch.rand(()) < 0.5:
            v, i = v.flip(-1), i.flip(-1)
        return {"vis": v.contiguous(), "ir": i.contiguous()}


# ---------------------------------------------------------------------------------------------------------------- task
class FusionTask:
    """Engine task: loss on ``model(vis, ir)``; validation = per-pair fusion metrics (means)."""

    def __init__(self, loss: str | torch.nn.Module = "official", metrics: list[str] | None = None) -> None:
        if isinstance(loss, str):
            from glfuse.fusion.losses import build_fusion_loss

            if loss not in ("official", "paper"):
                raise ValueError(f"config key 'loss': expected 'official' or 'paper', got {loss!r}")
            loss = build_fusion_loss(loss)
        self.loss = loss
        self.metrics = list(metrics or DEFAULT_VAL_METRICS)

    def training_step(self, model, batch):
        vis, ir = batch["vis"], batch["ir"]
        fused = model(vis, ir)
        out = self.loss(fused, vis, ir)
        total, terms = out if isinstance(out, tuple) else (out, {})
        return total, {k: float(v) for k, v in terms.items()}

    def predict_step(self, model, batch) -> dict[str, torch.Tensor]:
        from glfuse.metrics.fusion import evaluate

        vis, ir = batch["vis"], batch["ir"]
        fused = model(vis, ir).float()
        f8 = torch.round(fused.clamp(0, 1) * 255).cpu().double().numpy()
        v = (vis.float().cpu().double() * 255).numpy()
        i = (ir.float().cpu().double() * 255).numpy()
        rows = [evaluate(f8[n, 0], i[n, 0], v[n, 0], metrics=self.metrics) for n in range(f8.shape[0])]
        return {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in self.metrics}

    def compute_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        return {k: float(torch.nanmean(v.double())) for k, v in outputs.items()}

    def batch_size(self, batch) -> int:
        return int(batch["vis"].shape[0])

    def metric_names(self) -> list[str]:
        return list(self.metrics)


# ------------------------------------------------------------------------------------------------------------- train
def train(cfg: FusionConfig, run_dir: str | Path, *, resume: bool | str = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` into ``run_dir`` (see :func:`glfuse.engine.fit` for the layout; also
    ``split.json``). ``resume`` / ``overwrite``: the run lifecycle of :func:`glfuse.runs.open_run` (``resume="auto"``:
    resume a started run, else start). The saved ``best/`` and ``last/`` folders carry the fusion preprocessing and the
    modality roles (``fusion: {vis, ir}``), so ``glfuse fuse run --model RUN/best`` needs no further arguments."""
    from glfuse.runs import run_training

    return run_training(run_dir, "fusion", cfg.train, lambda run: _train(cfg, run), resume=resume, overwrite=overwrite)


def _train(cfg: FusionConfig, run: Any) -> dict[str, Any]:
    from glfuse.checkpoint import save_json
    from glfuse.config import check_resume_config, save_config
    from glfuse.engine import check_monitor, fit, seed_everything
    from glfuse.registry import create_model, model_info

    run_dir = run.dir
    if run.resume:
        check_resume_config(cfg, run_dir / "config.yaml")  # only e.g. train.epochs may change
    if model_info(cfg.model.name).input != "pair":
        raise ValueError(f"config key 'model.name': {cfg.model.name!r} is not a fusion network (see `glfuse models`)")
    task = FusionTask(cfg.loss, cfg.metrics)
    check_monitor(task, cfg.train, cfg.data.val_fraction > 0)
    pairs = find_pairs(cfg.data)
    tr_pairs, val_pairs = split_pairs(pairs, cfg.data.val_fraction, cfg.data.split_seed)
    train_ds = FusionPairDataset(tr_pairs, crop=cfg.data.crop, hflip=cfg.data.hflip, length=cfg.data.samples_per_epoch)
    val_ds = FusionPairDataset(val_pairs, centre_crop=cfg.data.val_crop) if val_pairs else None
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # the initial weights too (fit seeds again for training)
    model = create_model(cfg.model.name, **cfg.model.args)
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(cfg.model.grad_checkpointing)

    if run.main:
        save_config(cfg, run_dir / "config.yaml")  # on resume: the checked config, e.g. with the new train.epochs
    if run.main and not run.resume:
        save_json({"val_fraction": cfg.data.val_fraction, "split_seed": cfg.data.split_seed,
                   "train": [p[0] for p in tr_pairs], "val": [p[0] for p in val_pairs]}, run_dir / "split.json")
    extra = {"task": "fusion", "fusion": {
        "vis": cfg.data.vis, "ir": cfg.data.ir,
        "input": "forward(vis_y, ir), [B,1,H,W] in [0,1]; vis_y = BT.601 Y of the vis image (grey: Y of 3 grey "
                 "channels), ir = grey",
        "colour": "RGB->YCbCr BT.601; fused Y replaces Y; the colour source's Cb/Cr are put back",
        "output": "raw fused Y; saved as rint(clip(x,0,1)*255)",
        "loss": cfg.loss, "trained_on": str(cfg.data.vis_dir or Path(cfg.data.root) / cfg.data.split),
    }}
    return fit(model, task, train_ds, val_ds, cfg.train, run_dir, resume=run.resume, model_extra=extra)
