"""Experiment tracking for training runs: TensorBoard (optional extra ``glfuse[tensorboard]``) or MLflow (optional,
``pip install mlflow-skinny``), chosen with ``train.tracker`` in any preset.

The engine logs, per optimiser iteration, ``train/loss`` and ``train/lr`` (global step = iterations so far) and, per
epoch, every ``val_*`` metric, the epoch's mean ``train_loss``/``lr`` and its throughput (``epoch/...``, step = epoch).
Systems may add images (``log_image``: CAMs, fused grids). TensorBoard writes event files to ``RUN/tensorboard/``
(``tensorboard --logdir RUN``); MLflow writes to ``RUN/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set. Only rank 0
tracks. A missing package fails when training starts, naming the extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Tracker", "make_tracker", "TRACKERS"]

TRACKERS = ("none", "tensorboard", "mlflow")


class Tracker:
    """No-op tracker (``train.tracker: none``); the base of the real ones."""

    def log_scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        """Log ``{name: value}`` at ``step`` (names get ``prefix``)."""

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Log an ``HxW`` or ``HxWx3`` image in [0, 1]."""

    def close(self) -> None:
        """Flush and close."""


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path, start_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer needs the tensorboard package
            raise RuntimeError("train.tracker=tensorboard needs TensorBoard: pip install 'glfuse[tensorboard]'") from e
        # resuming: drop events a killed run wrote after its last checkpoint (they would be logged twice)
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step or None)

    def log_scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(prefix + k, float(v), step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        img = np.asarray(image, dtype=np.float32)
        self.writer.add_image(tag, img, step, dataformats="HWC" if img.ndim == 3 else "HW")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(self, run_dir: Path, start_step: int) -> None:
        import os

        try:
            import mlflow
        except ImportError as e:
            raise RuntimeError("train.tracker=mlflow needs MLflow: pip install mlflow-skinny") from e
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(run_dir.resolve().name)
        self.run = mlflow.start_run(run_name=run_dir.name)

    def log_scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        clean = {(prefix + k).replace("/", "_"): float(v) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.mlflow.log_metrics(clean, step=step)

    def log_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.mlflow.log_image(np.clip(np.asarray(image), 0, 1), f"{tag.replace('/', '_')}_{step}.png")

    def close(self) -> None:
        self.mlflow.end_run()


def make_tracker(kind: str, run_dir: str | Path, *, start_step: int = 0, enabled: bool = True) -> Tracker:
    """The tracker for ``train.tracker`` (``none`` | ``tensorboard`` | ``mlflow``); a no-op one when not ``enabled``
    (ranks other than 0). ``start_step``: the iteration a resumed run continues from."""
    if kind not in TRACKERS:
        raise ValueError(f"config key 'train.tracker': expected one of {' | '.join(TRACKERS)}, got {kind!r}")
    if not enabled or kind == "none":
        return Tracker()
    cls: Any = TensorBoardTracker if kind == "tensorboard" else MLflowTracker
    return cls(Path(run_dir), start_step)
