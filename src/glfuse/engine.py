"""Training engine: one small module, not a framework.

``fit(model, task, train_ds, val_ds, cfg, run_dir)`` runs epochs with AdamW/Adam, a per-iteration warm-up + cosine
schedule (or per-epoch exponential decay), gradient accumulation, AMP on CUDA, optional gradient clipping, early
stopping on a validation metric, best/last checkpoints written atomically, exact resume (``resume=True`` continues a
killed run from its last completed epoch with the same weights an uninterrupted run would reach), seeded determinism,
a rich progress bar and a per-epoch CSV/JSON log. It runs unchanged under ``torchrun --nproc_per_node=N`` (DDP, gloo on
CPU, nccl on GPU); evaluation shards the data without padding, so no sample is counted twice.

A *task* adapts the engine to a system. It provides

* ``training_step(model, batch) -> loss`` (a scalar tensor) or ``(loss, {name: float})``;
* ``predict_step(model, batch) -> {name: tensor with a leading per-sample dimension}``;
* ``compute_metrics(outputs) -> {name: float}`` on all gathered ``predict_step`` outputs, in dataset order;
* optionally ``batch_size(batch) -> int`` (for throughput; default: length of the first tensor).

Run directory layout: ``config.yaml`` (resolved config, written by the caller), ``best/`` and ``last/`` (each
``model.safetensors`` + ``config.json``; ``last/training_state.pt`` holds optimizer, scheduler, epoch, RNG, best
metric — plain types only), ``log.csv``, ``log.json`` and ``summary.json``.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from glfuse.checkpoint import (
    WEIGHTS_NAME,
    load_training_state,
    save_json,
    save_model,
    save_training_state,
    unwrap_model,
)
from glfuse.runtime import tune_cpu_allocator

__all__ = [
    "TrainConfig",
    "Task",
    "fit",
    "evaluate",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "seed_everything",
    "setup_distributed",
    "is_main_process",
    "get_device",
    "ShardSampler",
    "progress_bar",
]


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by every system (the ``train:`` section of a preset)."""

    epochs: int = 100
    batch_size: int = 32  # per process
    eval_batch_size: int | None = None
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_1d: bool = True  # 1-D parameters and biases get weight decay 0 (official HiFuse train.py)
    schedule: str = "warmup_cosine"  # warmup_cosine | exp | constant
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 1e-3
    end_factor: float = 0.01  # cosine ends at lr * end_factor
    exp_gamma: float = 0.75  # schedule=exp: lr * gamma**epoch
    accum_steps: int = 1  # optimiser step every N iterations
    grad_clip: float | None = None  # max global grad norm
    amp: bool = True  # autocast (bf16/fp16) only when CUDA is used
    monitor: str = "acc"  # validation metric for best checkpoint / early stopping
    monitor_mode: str = "max"  # max | min
    early_stop_patience: int | None = None  # evaluations without improvement
    eval_every: int = 1
    save_every: int = 0  # also keep epoch_<n>/ every N epochs (0 = never)
    max_steps_per_epoch: int | None = None  # shorten epochs (quick CPU runs)
    drop_last: bool = False
    shuffle: bool = True
    num_workers: int = 0
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True
    # glfuse.tune_cpu_allocator(): keep glibc's heap (no page faults on large activations each step). Turn off where the
    # heap fragments badly: MACTFusion training at batch 4, 256² then peaks at ~10 GiB instead of ~3 GiB.
    tune_allocator: bool = True


class Task(Protocol):
    """What a system supplies to the engine (see module docstring)."""

    def training_step(self, model: nn.Module, batch: Any) -> Any: ...

    def predict_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]: ...

    def compute_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]: ...


# ----------------------------------------------------------------------------------------------------------- utilities
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def setup_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed from torchrun's environment; returns (rank, world_size, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return rank, world, local_rank


def is_main_process() -> bool:
    """True on rank 0 or without torch.distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_device(spec: str = "auto") -> torch.device:
    """``auto`` → this process's CUDA device when available, else CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(spec)


class ShardSampler(Sampler[int]):
    """Evaluation sampler for DDP: rank r takes indices r, r+W, r+2W, … — no padding, so nothing is counted twice."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _TrainSampler(Sampler[int]):
    """Seeded per-epoch permutation, split across ranks (padded like DistributedSampler; training only)."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int, world: int) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch = 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + 1000003 * self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world
        order = (order * math.ceil(total / max(self.n, 1)))[:total]
        return iter(order[self.rank : total : self.world])

    def __len__(self) -> int:
        return self.per_rank


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr after ``step`` optimiser steps.

    ``warmup_cosine`` is the official HiFuse schedule: linear from ``warmup_start_factor`` to 1 over ``warmup_epochs``
    epochs, then cosine from 1 to ``end_factor`` over the remaining epochs, stepped per iteration.
    """
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "exp":
        return cfg.exp_gamma ** (step // max(steps_per_epoch, 1))
    if cfg.schedule != "warmup_cosine":
        raise ValueError(f"config key 'train.schedule': unknown schedule {cfg.schedule!r} (warmup_cosine|exp|constant)")
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step <= warm:
        a = step / warm
        return cfg.warmup_start_factor * (1 - a) + a
    total = max((cfg.epochs - cfg.warmup_epochs) * steps_per_epoch, 1)
    cur = min(step - warm, total)
    return (1 + math.cos(cur * math.pi / total)) / 2 * (1 - cfg.end_factor) + cfg.end_factor


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or Adam; with ``no_decay_1d`` biases and 1-D parameters (norms) get weight decay 0."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if cfg.no_decay_1d and (p.ndim <= 1 or name.endswith(".bias")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = cfg.optimizer.lower()
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if opt == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    raise ValueError(f"config key 'train.optimizer': unknown optimizer {cfg.optimizer!r} (adamw|adam)")


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """LambdaLR stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, steps_per_epoch))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(task: Any, batch: Any) -> int:
    if hasattr(task, "batch_size"):
        return int(task.batch_size(batch))
    x = batch
    while isinstance(x, (list, tuple, dict)):
        x = next(iter(x.values())) if isinstance(x, dict) else x[0]
    return int(x.shape[0]) if isinstance(x, torch.Tensor) else 1


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_plain(np.random.get_state()),
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _np_state_to_plain(st: tuple) -> dict[str, Any]:
    return {"name": st[0], "keys": torch.from_numpy(np.asarray(st[1], dtype=np.int64)), "pos": int(st[2]),
            "has_gauss": int(st[3]), "cached": float(st[4])}


def _py_state_to_plain(st: tuple) -> dict[str, Any]:
    return {"version": st[0], "state": list(st[1]), "gauss": st[2]}


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def progress_bar(enabled: bool = True):
    """The rich progress bar every long glfuse job uses (task field ``info`` shows running figures)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
    )


# ---------------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Any,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    collate_fn: Callable | None = None,
    progress: bool = True,
    description: str = "eval",
    tune_allocator: bool = True,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Run ``task.predict_step`` over ``dataset`` (sharded across DDP ranks without padding), gather the outputs in
    dataset order on every rank, and return ``(task.compute_metrics(outputs), outputs)``. ``tune_allocator``: call
    :func:`glfuse.tune_cpu_allocator` first."""
    if tune_allocator:
        tune_cpu_allocator()
    device = torch.device(device)
    rank, world = _rank(), _world()
    sampler = ShardSampler(len(dataset), rank, world)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_fn, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    with progress_bar(progress and is_main_process()) as bar:
        t = bar.add_task(description, total=len(loader), info="")
        for batch in loader:
            out = task.predict_step(model, _to_device(batch, device))
            for k, v in out.items():
                chunks.setdefault(k, []).append(torch.as_tensor(v).detach().cpu())
            bar.advance(t)
    local = {k: torch.cat(v) for k, v in chunks.items()}
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, local)
        outputs: dict[str, torch.Tensor] = {}
        keys = [k for g in gathered for k in g]
        for k in dict.fromkeys(keys):
            parts = [g[k] for g in gathered if k in g]
            # rank r holds samples r, r+W, ...: interleave back into dataset order
            n = sum(p.shape[0] for p in parts)
            full = torch.empty((n, *parts[0].shape[1:]), dtype=parts[0].dtype)
            for r, p in enumerate(parts):
                full[r::world] = p
            outputs[k] = full
    else:
        outputs = local
    model.train(was_training)
    return task.compute_metrics(outputs), outputs


# ------------------------------------------------------------------------------------------------------------ training
def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value > best if mode == "max" else value < best


def fit(
    model: nn.Module,
    task: Any,
    train_ds: Dataset,
    val_ds: Dataset | None,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    collate_fn: Callable | None = None,
    model_extra: dict[str, Any] | None = None,
    callbacks: Sequence[Callable[[int, dict[str, Any]], None]] = (),
) -> dict[str, Any]:
    """Train ``model`` on ``train_ds``; validate on ``val_ds`` each ``eval_every`` epochs; write ``run_dir``.

    Args:
        model: built with :func:`glfuse.create_model` (its ``glfuse_cfg`` goes into the saved ``config.json``).
        task: see module docstring.
        train_ds / val_ds: map-style datasets; ``val_ds`` may be None (then the last epoch is also "best").
        cfg: :class:`TrainConfig`.
        run_dir: output folder. It must not hold an earlier run unless ``resume=True``.
        resume: continue from ``run_dir/last`` exactly where the earlier run stopped.
        model_extra: extra ``config.json`` entries for saved models (class names, preprocessing, ...).
        callbacks: called as ``cb(epoch, log_row)`` on the main process after each epoch.

    Returns the summary dict (also written to ``summary.json``).
    """
    run_dir = Path(run_dir)
    if cfg.tune_allocator:
        tune_cpu_allocator()
    rank, world, _ = setup_distributed()
    main = rank == 0
    device = get_device(cfg.device)
    seed_everything(cfg.seed + rank, cfg.deterministic)
    last_dir = run_dir / "last"
    state_path = last_dir / "training_state.pt"
    if resume and not last_dir.exists() and (run_dir / "last.old").exists():
        os.replace(run_dir / "last.old", last_dir)  # crashed between the two renames of _save_last
    if not resume and (last_dir.exists() or (run_dir / "last.old").exists()):
        raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume or choose another --output")
    if resume and not state_path.exists():
        raise FileNotFoundError(f"{state_path}: nothing to resume (no completed epoch saved in {run_dir})")

    base = unwrap_model(model)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last) if getattr(base, "channels_last", False) else model
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = _TrainSampler(len(train_ds), cfg.seed, cfg.shuffle, rank, world)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_fn, drop_last=cfg.drop_last, worker_init_fn=_worker_init,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    iters_per_epoch = len(loader)
    if cfg.max_steps_per_epoch:
        iters_per_epoch = min(iters_per_epoch, cfg.max_steps_per_epoch)
    if iters_per_epoch == 0:
        raise ValueError(f"training set too small for batch_size={cfg.batch_size} with drop_last={cfg.drop_last}")
    steps_per_epoch = math.ceil(iters_per_epoch / cfg.accum_steps)
    opt = build_optimizer(base, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, best, bad_evals, history = 0, None, 0, []
    if resume:
        from safetensors.torch import load_file

        st = load_training_state(state_path)
        base.load_state_dict(load_file(str(last_dir / WEIGHTS_NAME), device=str(device)))
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if "scaler" in st and st["scaler"]:
            scaler.load_state_dict(st["scaler"])
        start_epoch, best, bad_evals, history = st["epoch"] + 1, st["best"], st["bad_evals"], list(st["history"])
        _set_rng_state(st["rng"][rank] if rank < len(st["rng"]) else st["rng"][0])
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    stopped_early = False
    with progress_bar(cfg.progress and main) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            ddp_model.train()
            t0 = time.perf_counter()
            epoch_lr = opt.param_groups[0]["lr"]  # logged: the lr this epoch starts with (per-iteration schedules move on)
            n_seen, loss_sum, extra_sum = 0, 0.0, {}
            job = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=iters_per_epoch, info="")
            opt.zero_grad(set_to_none=True)
            for it, batch in enumerate(loader):
                if it >= iters_per_epoch:
                    break
                batch = _to_device(batch, device)
                last_of_group = (it + 1) % cfg.accum_steps == 0 or it + 1 == iters_per_epoch
                group = min(cfg.accum_steps, iters_per_epoch - (it // cfg.accum_steps) * cfg.accum_steps)
                sync = last_of_group or world == 1
                ctx = ddp_model.no_sync() if (world > 1 and not sync) else _null()
                with ctx:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        res = task.training_step(ddp_model, batch)
                    loss, logs = (res if isinstance(res, tuple) else (res, {}))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, iteration {it + 1}")
                    scaler.scale(loss / group).backward()
                if last_of_group:
                    if cfg.grad_clip:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
                    sched.step()
                bs = _batch_size(task, batch)
                n_seen += bs
                loss_sum += loss.item() * bs
                for k, v in logs.items():
                    extra_sum[k] = extra_sum.get(k, 0.0) + float(v) * bs
                dt = time.perf_counter() - t0
                bar.update(job, advance=1, info=f"loss {loss_sum / n_seen:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                                                f"{n_seen * world / max(dt, 1e-9):.1f} img/s")
            train_time = time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_seen, 1),
                                   "lr": epoch_lr, "train_time_s": round(train_time, 3),
                                   "train_samples_per_s": round(n_seen * world / max(train_time, 1e-9), 3)}
            row.update({f"train_{k}": v / max(n_seen, 1) for k, v in extra_sum.items()})
            improved = False
            if val_ds is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                metrics, _ = evaluate(base, task, val_ds, batch_size=cfg.eval_batch_size or cfg.batch_size,
                                      num_workers=cfg.num_workers, device=device, collate_fn=collate_fn,
                                      progress=cfg.progress, description="  validate",
                                      tune_allocator=cfg.tune_allocator)
                row.update({f"val_{k}": v for k, v in metrics.items()})
                if cfg.monitor not in metrics:
                    raise KeyError(f"config key 'train.monitor': {cfg.monitor!r} is not a validation metric; "
                                   f"available: {', '.join(metrics)}")
                if _better(metrics[cfg.monitor], best, cfg.monitor_mode):
                    best, bad_evals, improved = float(metrics[cfg.monitor]), 0, True
                else:
                    bad_evals += 1
            elif val_ds is None:
                improved = True
            history.append(row)
            if main and cfg.progress:
                shown = {k: v for k, v in row.items() if k.startswith("val_") or k == "train_loss"}
                bar.console.print(f"epoch {epoch + 1}/{cfg.epochs}  " + "  ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
                    + f"  ({row['train_time_s']:.0f} s, {row['train_samples_per_s']:.1f} samples/s)"
                    + ("  *best*" if improved and val_ds is not None else ""))
            stop = cfg.early_stop_patience is not None and bad_evals >= cfg.early_stop_patience
            rngs = _gather_rng()
            if main:
                _write_logs(run_dir, history)
                state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                         "epoch": epoch, "best": best, "bad_evals": bad_evals, "history": history,
                         "rng": rngs, "world_size": world}
                _save_last(base, run_dir, {**(model_extra or {}), "epoch": epoch + 1}, state)
                # best/ and epoch_N/ share last/'s weights file by hard link (one 0.5 GB write per epoch, not two)
                if improved:
                    _publish(last_dir, run_dir / "best", {"monitor": cfg.monitor, "best": best})
                if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                    _publish(last_dir, run_dir / f"epoch_{epoch + 1}", {})
                for cb in callbacks:
                    cb(epoch, row)
            if world > 1:
                dist.barrier()
            bar.remove_task(job)
            if stop:
                stopped_early = True
                break
    summary = {"epochs_run": len(history), "best_" + cfg.monitor: best, "monitor": cfg.monitor,
               "stopped_early": stopped_early, "last": history[-1] if history else {}, "world_size": world}
    if main:
        save_json(summary, run_dir / "summary.json")
    return summary


def _save_last(model: nn.Module, run_dir: Path, extra: dict[str, Any], state: dict[str, Any]) -> None:
    """Weights + training state into ``last.tmp/``, then swap directories, so ``last/`` is always one consistent pair."""
    import shutil

    tmp, last, old = run_dir / "last.tmp", run_dir / "last", run_dir / "last.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, extra=extra)
    save_training_state(state, tmp / "training_state.pt")
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        os.replace(last, old)
    os.replace(tmp, last)
    shutil.rmtree(old, ignore_errors=True)


def _publish(src: Path, dst: Path, extra: dict[str, Any]) -> None:
    """Expose ``src``'s weights as ``dst/`` (hard link when possible, else copy) with its config plus ``extra``."""
    import json
    import shutil

    from glfuse.checkpoint import CONFIG_NAME

    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / f".{WEIGHTS_NAME}.tmp"
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src / WEIGHTS_NAME, tmp)
    except OSError:
        shutil.copyfile(src / WEIGHTS_NAME, tmp)
    os.replace(tmp, dst / WEIGHTS_NAME)
    cfg = json.loads((src / CONFIG_NAME).read_text())
    cfg.update(extra)
    save_json(cfg, dst / CONFIG_NAME)


def _gather_rng() -> list[dict[str, Any]]:
    st = _rng_state()
    if _world() > 1:
        out: list[Any] = [None] * _world()
        dist.all_gather_object(out, st)
        return out
    return [st]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _write_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    from glfuse.files import write_csv

    save_json(history, run_dir / "log.json")
    write_csv(run_dir / "log.csv", history)
