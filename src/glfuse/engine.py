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
* ``metric_names() -> list[str]``: what ``compute_metrics`` returns (``train.monitor`` is checked against it before the
  first epoch; optional for tasks written before it, which are then checked after the first validation);
* optionally ``batch_size(batch) -> int`` (for throughput; default: length of the first tensor).

``fit`` is split into named steps: :func:`_start` (start or resume), :func:`_train_epoch`, :func:`_validate`,
:func:`_checkpoint` (``last/`` as one unit, then ``best/``, then the logs). Whether a folder may be started, resumed or
replaced is decided by the run lifecycle (:func:`glfuse.runs.open_run`), once for every system. The ``lr`` logged per
epoch is the mean learning rate its iterations trained with.

Run directory layout: ``config.yaml`` (resolved config, written by the caller), ``best/`` and ``last/`` (each
``model.safetensors`` + ``config.json``; ``last/training_state.pt`` holds optimizer, scheduler, epoch, RNG, best
metric — plain types only), ``log.csv``, ``log.json`` and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from glfuse.checkpoint import (
    WEIGHTS_NAME,
    fault_point,
    load_training_state,
    publish_dir,
    save_json,
    save_model,
    save_training_state,
    unwrap_model,
)
from glfuse.config import Match, Range, validate_config
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


_DEVICE = Match(r"auto|cpu|mps|cuda(:\d+)?", "auto | cpu | cuda | cuda:N | mps")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by every system (the ``train:`` section of a preset).

    Every enumerated field is a ``Literal`` and every number carries its allowed range (``Annotated[..., Range]``):
    a bad value fails when the config is built, naming the key and what is allowed, before any work starts.
    """

    epochs: Annotated[int, Range(ge=1)] = 100
    batch_size: Annotated[int, Range(ge=1)] = 32  # per process
    eval_batch_size: Annotated[int, Range(ge=1)] | None = None
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: Annotated[float, Range(ge=0)] = 1e-4
    weight_decay: Annotated[float, Range(ge=0)] = 1e-2
    betas: tuple[Annotated[float, Range(ge=0, lt=1)], Annotated[float, Range(ge=0, lt=1)]] = (0.9, 0.999)
    no_decay_1d: bool = True  # 1-D parameters and biases get weight decay 0 (official HiFuse train.py)
    schedule: Literal["warmup_cosine", "exp", "constant"] = "warmup_cosine"
    warmup_epochs: Annotated[float, Range(ge=0)] = 1.0
    warmup_start_factor: Annotated[float, Range(gt=0, le=1)] = 1e-3
    end_factor: Annotated[float, Range(ge=0, le=1)] = 0.01  # cosine ends at lr * end_factor
    exp_gamma: Annotated[float, Range(gt=0, le=1)] = 0.75  # schedule=exp: lr * gamma**epoch
    accum_steps: Annotated[int, Range(ge=1)] = 1  # optimiser step every N iterations
    grad_clip: Annotated[float, Range(gt=0)] | None = None  # max global grad norm
    amp: bool = True  # autocast (bf16/fp16) only when CUDA is used
    monitor: str = "acc"  # validation metric for best checkpoint / early stopping (checked against the task's metrics)
    monitor_mode: Literal["max", "min"] = "max"
    early_stop_patience: Annotated[int, Range(ge=1)] | None = None  # evaluations without improvement
    eval_every: Annotated[int, Range(ge=1)] = 1
    save_every: Annotated[int, Range(ge=0)] = 0  # also keep epoch_<n>/ every N epochs (0 = never)
    max_steps_per_epoch: Annotated[int, Range(ge=1)] | None = None  # shorten epochs (quick CPU runs)
    drop_last: bool = False
    shuffle: bool = True
    # class imbalance: draw each epoch's samples with replacement, every class equally likely (needs dataset.targets)
    balanced_sampler: bool = False
    num_workers: Annotated[int, Range(ge=0)] = 0
    seed: Annotated[int, Range(ge=0)] = 0
    deterministic: bool = True
    device: Annotated[str, _DEVICE] = "auto"
    progress: bool = True
    tracker: Literal["none", "tensorboard", "mlflow"] = "none"  # glfuse.tracking: per-iteration loss/lr, epoch metrics
    # glfuse.tune_cpu_allocator(): keep glibc's heap (no page faults on large activations each step). Turn off where the
    # heap fragments badly: MACTFusion training at batch 4, 256² then peaks at ~10 GiB instead of ~3 GiB.
    tune_allocator: bool = True


class Task(Protocol):
    """What a system supplies to the engine (see module docstring)."""

    def training_step(self, model: nn.Module, batch: Any) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch (optionally with named extra terms to log)."""
        ...

    def predict_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Per-sample outputs (leading batch dimension) that :meth:`compute_metrics` reads."""
        ...

    def compute_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scalar validation metrics from all gathered outputs, in dataset order."""
        ...

    def metric_names(self) -> list[str]:
        """The names :meth:`compute_metrics` returns; ``train.monitor`` is checked against them before training."""
        ...


# ----------------------------------------------------------------------------------------------------------- utilities
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _cuda_for(device: str) -> bool:
    """Whether a process with this ``device`` spec computes on CUDA. ``auto`` under torchrun: only when every process
    of the node gets a GPU of its own (the same answer on every rank)."""
    if not torch.cuda.is_available():
        return False
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return device.startswith("cuda") or (device == "auto" and local_world <= torch.cuda.device_count())


def setup_distributed(device: str = "auto") -> tuple[int, int, int]:
    """Initialise torch.distributed from torchrun's environment; returns (rank, world_size, local_rank).

    The backend follows the device the run computes on: nccl for CUDA, gloo for CPU (also on a CUDA machine when
    ``device="cpu"``, or when there are more processes per node than GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if _cuda_for(device) else "gloo"
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
    """``auto`` → this process's CUDA device when available, else CPU. A CUDA/MPS device this torch cannot use fails
    here, naming the value, instead of deep inside the first forward pass."""
    if spec == "auto":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local_rank) if _cuda_for("auto") else torch.device("cpu")
    _DEVICE.check(spec, "device")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: this PyTorch build has no usable CUDA (torch {torch.__version__}); "
                             "use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {spec!r}: MPS is not available here; use --device cpu or auto")
    return dev


class ShardSampler(Sampler[int]):
    """Evaluation sampler for DDP: rank r takes indices r, r+W, r+2W, … — no padding, so nothing is counted twice."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _TrainSampler(Sampler[int]):
    """Seeded per-epoch permutation, split across ranks (padded like DistributedSampler; training only).

    With ``weights`` (``train.balanced_sampler``): each epoch draws ``n`` indices with replacement, index ``i`` with
    probability proportional to ``weights[i]`` (inverse class frequency: every class equally often on average)."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int, world: int,
                 weights: torch.Tensor | None = None) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.weights = weights
        self.epoch = 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 1000003 * self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world
        order = (order * math.ceil(total / max(self.n, 1)))[:total]
        return iter(order[self.rank : total : self.world])

    def __len__(self) -> int:
        return self.per_rank


def balanced_weights(dataset: Dataset) -> torch.Tensor:
    """Per-sample weights 1 / (count of the sample's class) from ``dataset.targets`` (labels < 0 get weight 0)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError("config key 'train.balanced_sampler': this training set has no per-sample class labels "
                         "(dataset.targets); use it for classification data")
    t = torch.as_tensor(list(targets), dtype=torch.long)
    counts = torch.bincount(t.clamp(min=0))
    w = torch.where(t >= 0, 1.0 / counts[t.clamp(min=0)].double(), torch.zeros((), dtype=torch.float64))
    if not (w > 0).any():
        raise ValueError("config key 'train.balanced_sampler': the training set has no labelled sample")
    return w


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


def progress_bar(enabled: bool = True, interval_s: float | None = None):
    """The progress display every long glfuse job uses (task field ``info`` shows running figures).

    On a terminal: a rich progress bar. When output is not a terminal (a log file, a batch job), rich draws nothing
    until the end, so a plain line ``epoch 3/10  120/400 (30%)  2m05s  loss 0.41 ...`` is printed every ``interval_s``
    seconds instead (default ``GLFUSE_LOG_INTERVAL`` or 30 s) and when a task finishes.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(quiet=not enabled)  # disabled: silent (older rich versions still printed a newline at exit)
    plain = enabled and not console.is_terminal

    class _Progress(Progress):
        def __init__(self, *columns: Any, **kw: Any) -> None:
            super().__init__(*columns, **kw)
            self._plain = plain
            self._every = interval_s if interval_s is not None else float(os.environ.get("GLFUSE_LOG_INTERVAL", 30))
            self._last: dict[Any, float] = {}

        def update(self, task_id: Any, **kw: Any) -> None:
            super().update(task_id, **kw)
            self._plain_line(task_id)

        def advance(self, task_id: Any, advance: float = 1) -> None:
            super().advance(task_id, advance)
            self._plain_line(task_id)

        def _plain_line(self, task_id: Any) -> None:
            if not self._plain:
                return
            task = self._tasks[task_id]
            now = time.monotonic()
            done = task.total is not None and task.completed >= task.total
            if not done and now - self._last.get(task_id, task.start_time or now) < self._every:
                return
            self._last[task_id] = now
            total = int(task.total) if task.total is not None else "?"
            pct = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
            el = int(task.elapsed or 0)
            print(f"{task.description.strip()}  {int(task.completed)}/{total}{pct}  {el // 60}m{el % 60:02d}s  "
                  f"{task.fields.get('info', '')}".rstrip(), flush=True)

    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled or plain,  # plain lines replace the bar where it cannot be drawn
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


def check_train_config(cfg: TrainConfig) -> TrainConfig:
    """Everything about ``cfg`` that can be checked before any work: declared types, choices and ranges, and that the
    requested device exists in this torch build. Systems call it first thing in ``train``."""
    validate_config(cfg, "train.")
    try:
        get_device(cfg.device)
    except ValueError as e:
        raise ValueError(f"config key 'train.device': {e}") from None
    return cfg


def check_monitor(task: Any, cfg: TrainConfig, has_val: bool) -> None:
    """Fail before training when ``cfg.monitor`` is not a metric the task reports (tasks declare ``metric_names()``)."""
    if not has_val or not hasattr(task, "metric_names"):
        return
    names = list(task.metric_names())
    if cfg.monitor not in names:
        raise ValueError(f"config key 'train.monitor': {cfg.monitor!r} is not a validation metric of this task; "
                         f"allowed: {', '.join(names)}")


@dataclass
class _Fit:
    """Everything one ``fit`` call works with, built by :func:`_start`."""

    cfg: TrainConfig
    task: Any
    run_dir: Path
    base: nn.Module
    ddp_model: nn.Module
    device: torch.device
    rank: int
    world: int
    sampler: _TrainSampler
    loader: DataLoader
    iters_per_epoch: int
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    use_amp: bool
    amp_dtype: torch.dtype
    start_epoch: int = 0
    best: float | None = None
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    tracker: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def _start(model: nn.Module, task: Any, train_ds: Dataset, cfg: TrainConfig, run_dir: Path, resume: bool,
           collate_fn: Callable | None) -> _Fit:
    """Start or resume: distributed set-up, device, seeds, DDP wrapper, loader, optimiser, schedule, AMP, saved state."""
    if cfg.tune_allocator:
        tune_cpu_allocator()
    rank, world, _ = setup_distributed(cfg.device)
    device = get_device(cfg.device)
    seed_everything(cfg.seed + rank, cfg.deterministic)
    last_dir = run_dir / "last"
    if resume and not last_dir.exists() and (run_dir / "last.old").exists():
        os.replace(run_dir / "last.old", last_dir)  # crashed between the two renames of publish_dir
    if not resume and (last_dir.exists() or (run_dir / "last.old").exists()):
        raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume or choose another --output")
    if resume and not (last_dir / "training_state.pt").exists():
        raise FileNotFoundError(f"{last_dir / 'training_state.pt'}: nothing to resume (no completed epoch saved in "
                                f"{run_dir})")
    base = unwrap_model(model)
    model.to(device)
    if device.type == "cuda" and getattr(base, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = _TrainSampler(len(train_ds), cfg.seed, cfg.shuffle, rank, world,
                            balanced_weights(train_ds) if cfg.balanced_sampler else None)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_fn, drop_last=cfg.drop_last, worker_init_fn=_worker_init,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    iters = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    if iters == 0:
        raise ValueError(f"training set too small for batch_size={cfg.batch_size} with drop_last={cfg.drop_last}")
    opt = build_optimizer(base, cfg)
    sched = build_scheduler(opt, cfg, math.ceil(iters / cfg.accum_steps))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    f = _Fit(cfg, task, run_dir, base, ddp_model, device, rank, world, sampler, loader, iters, opt, sched, scaler,
             use_amp, amp_dtype)
    if resume:
        _load_state(f, last_dir)
    from glfuse.tracking import make_tracker

    f.tracker = make_tracker(cfg.tracker, run_dir, start_step=f.start_epoch * iters, enabled=rank == 0)
    return f


def _load_state(f: _Fit, last_dir: Path) -> None:
    """Weights, optimiser, schedule, scaler, counters and RNG of the last completed epoch."""
    from safetensors.torch import load_file

    st = load_training_state(last_dir / "training_state.pt")
    f.base.load_state_dict(load_file(str(last_dir / WEIGHTS_NAME), device=str(f.device)))
    f.opt.load_state_dict(st["optimizer"])
    f.sched.load_state_dict(st["scheduler"])
    if st.get("scaler"):
        f.scaler.load_state_dict(st["scaler"])
    f.start_epoch, f.best, f.bad_evals, f.history = st["epoch"] + 1, st["best"], st["bad_evals"], list(st["history"])
    _set_rng_state(st["rng"][f.rank] if f.rank < len(st["rng"]) else st["rng"][0])


def _train_epoch(f: _Fit, epoch: int, bar: Any) -> dict[str, Any]:
    """One epoch of optimisation; returns its log row (mean loss, the mean lr it trained with, time, throughput)."""
    cfg = f.cfg
    f.sampler.set_epoch(epoch)
    f.ddp_model.train()
    t0 = time.perf_counter()
    n_seen, loss_sum, lr_sum, extra_sum = 0, 0.0, 0.0, {}
    job = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=f.iters_per_epoch, info="")
    f.opt.zero_grad(set_to_none=True)
    for it, batch in enumerate(f.loader):
        if it >= f.iters_per_epoch:
            break
        lr = f.opt.param_groups[0]["lr"]
        lr_sum += lr
        loss, logs = _train_step(f, it, _to_device(batch, f.device), epoch)
        f.tracker.log_scalars({"loss": loss, "lr": lr, **logs}, epoch * f.iters_per_epoch + it, "train/")
        bs = _batch_size(f.task, batch)
        n_seen += bs
        loss_sum += loss * bs
        for k, v in logs.items():
            extra_sum[k] = extra_sum.get(k, 0.0) + float(v) * bs
        dt = time.perf_counter() - t0
        bar.update(job, advance=1, info=f"loss {loss_sum / n_seen:.4f}  lr {f.opt.param_groups[0]['lr']:.2e}  "
                                        f"{n_seen * f.world / max(dt, 1e-9):.1f} img/s")
    bar.remove_task(job)
    train_time = time.perf_counter() - t0
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_seen, 1),
                           "lr": lr_sum / f.iters_per_epoch, "train_time_s": round(train_time, 3),
                           "train_samples_per_s": round(n_seen * f.world / max(train_time, 1e-9), 3)}
    row.update({f"train_{k}": v / max(n_seen, 1) for k, v in extra_sum.items()})
    return row


def _train_step(f: _Fit, it: int, batch: Any, epoch: int) -> tuple[float, dict[str, Any]]:
    """Forward/backward of one iteration; an optimiser step at the end of each accumulation group."""
    cfg = f.cfg
    last_of_group = (it + 1) % cfg.accum_steps == 0 or it + 1 == f.iters_per_epoch
    group = min(cfg.accum_steps, f.iters_per_epoch - (it // cfg.accum_steps) * cfg.accum_steps)
    no_sync = f.world > 1 and not last_of_group
    with f.ddp_model.no_sync() if no_sync else contextlib.nullcontext():
        with torch.autocast(f.device.type, dtype=f.amp_dtype, enabled=f.use_amp):
            res = f.task.training_step(f.ddp_model, batch)
        loss, logs = (res if isinstance(res, tuple) else (res, {}))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, iteration {it + 1} "
                                     "(lower train.lr, or check the data for NaN/Inf)")
        f.scaler.scale(loss / group).backward()
    if last_of_group:
        if cfg.grad_clip:
            f.scaler.unscale_(f.opt)
            torch.nn.utils.clip_grad_norm_(f.base.parameters(), cfg.grad_clip)
        f.scaler.step(f.opt)
        f.scaler.update()
        f.opt.zero_grad(set_to_none=True)
        f.sched.step()
    return loss.item(), logs


def _validate(f: _Fit, epoch: int, val_ds: Dataset | None, row: dict[str, Any], collate_fn: Callable | None) -> bool:
    """Validate when due; adds ``val_*`` to ``row``; returns whether the monitored metric improved."""
    cfg = f.cfg
    if val_ds is None:
        return True
    if (epoch + 1) % cfg.eval_every != 0 and epoch + 1 != cfg.epochs:
        return False
    metrics, _ = evaluate(f.base, f.task, val_ds, batch_size=cfg.eval_batch_size or cfg.batch_size,
                          num_workers=cfg.num_workers, device=f.device, collate_fn=collate_fn, progress=cfg.progress,
                          description="  validate", tune_allocator=cfg.tune_allocator)
    row.update({f"val_{k}": v for k, v in metrics.items()})
    if cfg.monitor not in metrics:
        raise KeyError(f"config key 'train.monitor': {cfg.monitor!r} is not a validation metric; "
                       f"available: {', '.join(metrics)}")
    if _better(metrics[cfg.monitor], f.best, cfg.monitor_mode):
        f.best, f.bad_evals = float(metrics[cfg.monitor]), 0
        return True
    f.bad_evals += 1
    return False


def _checkpoint(f: _Fit, epoch: int, improved: bool, model_extra: dict[str, Any] | None) -> None:
    """Rank 0: ``last/`` (weights + training state) as one unit, then ``best/`` / ``epoch_N/``, then the logs — a log
    is never ahead of the checkpoint it describes."""
    rngs = _gather_rng()  # collective: every rank
    if not f.main:
        return
    cfg = f.cfg
    state = {"optimizer": f.opt.state_dict(), "scheduler": f.sched.state_dict(),
             "scaler": f.scaler.state_dict() if f.scaler.is_enabled() else {},
             "epoch": epoch, "best": f.best, "bad_evals": f.bad_evals, "history": f.history,
             "rng": rngs, "world_size": f.world}
    _save_last(f.base, f.run_dir, {**(model_extra or {}), "epoch": epoch + 1}, state)
    # best/ and epoch_N/ share last/'s weights file by hard link (one 0.5 GB write per epoch, not two)
    if improved:
        _publish(f.run_dir / "last", f.run_dir / "best", {"monitor": cfg.monitor, "best": f.best})
    if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
        _publish(f.run_dir / "last", f.run_dir / f"epoch_{epoch + 1}", {})
    _write_logs(f.run_dir, f.history)


def _header(f: _Fit, train_ds: Dataset, val_ds: Dataset | None, extra: dict[str, Any] | None) -> str:
    """What a run is about to do, printed before the first epoch."""
    arch = getattr(f.base, "glfuse_cfg", {}).get("arch", type(f.base).__name__)
    params = sum(p.numel() for p in f.base.parameters())
    lines = [f"run {f.run_dir}: {'resuming after epoch ' + str(f.start_epoch) if f.start_epoch else 'new run'}",
             f"  model {arch}: {params / 1e6:.2f} M parameters; device {f.device}"
             + (f" x {f.world} processes" if f.world > 1 else ""),
             f"  train {len(train_ds)} samples ({f.iters_per_epoch} iterations of {f.cfg.batch_size} per epoch), "
             f"val {len(val_ds) if val_ds is not None else 0}; epochs {f.cfg.epochs}; best by {f.cfg.monitor} "
             f"({f.cfg.monitor_mode})"]
    counts = (extra or {}).get("train_counts")
    if isinstance(counts, dict):
        lines.append("  classes (train images): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def _print_epoch(f: _Fit, bar: Any, row: dict[str, Any], improved: bool, has_val: bool) -> None:
    if not (f.main and f.cfg.progress):
        return
    shown = {k: v for k, v in row.items() if k.startswith("val_") or k == "train_loss"}
    bar.console.print(f"epoch {row['epoch']}/{f.cfg.epochs}  " + "  ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        + f"  ({row['train_time_s']:.0f} s, {row['train_samples_per_s']:.1f} samples/s)"
        + ("  *best*" if improved and has_val else ""), soft_wrap=True, highlight=False)


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

    The steps: :func:`_start` (start or resume), then per epoch :func:`_train_epoch`, :func:`_validate`,
    :func:`_checkpoint`. Deciding *whether* a folder may be started, resumed or replaced is the run lifecycle's job
    (:func:`glfuse.runs.open_run`); ``fit`` only refuses to start over a folder that already holds ``last/``.

    Args:
        model: built with :func:`glfuse.create_model` (its ``glfuse_cfg`` goes into the saved ``config.json``).
        task: see module docstring.
        train_ds / val_ds: map-style datasets; ``val_ds`` may be None (then the last epoch is also "best").
        cfg: :class:`TrainConfig`.
        run_dir: output folder. It must not hold an earlier run unless ``resume=True``.
        resume: continue from ``run_dir/last`` exactly where the earlier run stopped.
        model_extra: extra ``config.json`` entries for saved models (class names, preprocessing, ...).
        callbacks: called as ``cb(epoch, log_row)`` on the main process after each epoch's checkpoint.

    Returns the summary dict (also written to ``summary.json``).
    """
    run_dir = Path(run_dir)
    validate_config(cfg, "train.")
    check_monitor(task, cfg, val_ds is not None)
    f = _start(model, task, train_ds, cfg, run_dir, resume, collate_fn)
    if f.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.progress:
            print(_header(f, train_ds, val_ds, model_extra), flush=True)
    stopped_early = False
    with progress_bar(cfg.progress and f.main) as bar:
        for epoch in range(f.start_epoch, cfg.epochs):
            row = _train_epoch(f, epoch, bar)
            improved = _validate(f, epoch, val_ds, row, collate_fn)
            f.history.append(row)
            _print_epoch(f, bar, row, improved, val_ds is not None)
            fault_point("epoch:trained")
            _checkpoint(f, epoch, improved, model_extra)
            fault_point("epoch:saved")
            f.tracker.log_scalars(row, epoch + 1, "epoch/")
            if f.main:
                for cb in callbacks:
                    cb(epoch, row)
            if f.world > 1:
                dist.barrier()
            if cfg.early_stop_patience is not None and f.bad_evals >= cfg.early_stop_patience:
                stopped_early = True
                break
    f.tracker.close()
    summary = {"epochs_run": len(f.history), "best_" + cfg.monitor: f.best, "monitor": cfg.monitor,
               "stopped_early": stopped_early, "last": f.history[-1] if f.history else {}, "world_size": f.world}
    if f.main:
        save_json(summary, run_dir / "summary.json")
    return summary


def _save_last(model: nn.Module, run_dir: Path, extra: dict[str, Any], state: dict[str, Any]) -> None:
    """Weights + training state into ``last.tmp/``, then swap it in as one unit (:func:`glfuse.checkpoint.publish_dir`)."""
    import shutil

    tmp = run_dir / "last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(model, tmp, extra=extra)
        save_training_state(state, tmp / "training_state.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a full disk: last/ stays the previous complete epoch
        raise
    publish_dir(tmp, run_dir / "last")


def _publish(src: Path, dst: Path, extra: dict[str, Any]) -> None:
    """Expose ``src``'s weights as ``dst/`` with its config plus ``extra``: built complete in ``dst.tmp/`` (weights by
    hard link when possible, else copied), then swapped in as one unit, so ``dst/`` never mixes two epochs."""
    import json
    import shutil

    from glfuse.checkpoint import CONFIG_NAME

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        os.link(src / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
    except OSError:
        shutil.copyfile(src / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
    cfg = json.loads((src / CONFIG_NAME).read_text())
    cfg.update(extra)
    save_json(cfg, tmp / CONFIG_NAME)
    publish_dir(tmp, dst)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (identity without torch.distributed)."""
    if _world() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _gather_rng() -> list[dict[str, Any]]:
    st = _rng_state()
    if _world() > 1:
        out: list[Any] = [None] * _world()
        dist.all_gather_object(out, st)
        return out
    return [st]


def _write_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    from glfuse.files import write_csv

    save_json(history, run_dir / "log.json")
    write_csv(run_dir / "log.csv", history)
