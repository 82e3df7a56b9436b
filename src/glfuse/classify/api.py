"""2-D classification (HiFuse and baselines): the Python API behind ``glfuse classify``.

* :func:`train` — ``ClassifyConfig`` → run directory (``config.yaml``, ``best/``, ``last/``, logs) through the engine;
* :func:`evaluate` — saved model + a data split → ``metrics.json``, ``per_class.csv``, ``confusion_matrix.{csv,png}``,
  ``predictions.csv`` and the paper's table row (Acc, F1, Prec, Recall + params / GFLOPs);
* :func:`predict` — images or folders → CSV of class probabilities;
* :func:`cam` — Grad-CAM figures (HiFuse: local / global / fusion branches; CNNs: their ``cam_layers()`` or last conv).

A model folder is ``RUN_DIR/best`` (or ``last``, ``epoch_N``); passing ``RUN_DIR`` itself means ``RUN_DIR/best``.
Saved models carry ``class_names`` and ``preprocessing`` in ``config.json``, so evaluation and prediction use exactly the
training-time eval transform. Nothing is overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from glfuse.config import Match, Range
from glfuse.engine import TrainConfig

__all__ = [
    "ModelSection",
    "DataSection",
    "LossSection",
    "ClassifyConfig",
    "class_weights",
    "ClassificationTask",
    "build_datasets",
    "load_classifier",
    "train",
    "evaluate",
    "predict",
    "cam",
]


# ------------------------------------------------------------------------------------------------------------- config
@dataclass
class ModelSection:
    """``model:`` — a registered name (or ``timm:<name>``) and extra constructor arguments.

    ``num_classes`` comes from the data and ``in_chans`` from ``data.in_chans``; ``img_size`` is passed as
    ``data.img_size`` to factories that accept it, unless set here.
    """

    name: str = "hifuse_tiny"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """``data:`` — where the images are and how they are preprocessed.

    ``kind``: ``folder`` (``root/<split>/<class>/<image>``; a split may also be a path), ``csv`` (split = a CSV path,
    relative to ``root`` if given) or ``splitfiles`` (COVID-CT: ``root/<class image folders>`` +
    ``split_dir/<class>/<split>*.txt``; split = the split word). Relative ``root`` is resolved against the current
    directory. ``val``/``test`` may be null.
    """

    kind: Literal["folder", "csv", "splitfiles"] = "folder"
    root: str | None = None
    train: str = "train"
    val: str | None = "val"
    test: str | None = "test"
    split_dir: str | None = None  # splitfiles: default <root>/Data-split
    class_dirs: dict[str, str] = field(default_factory=dict)  # splitfiles: {split class: image folder}
    img_size: Annotated[int, Range(ge=8)] = 224
    resize_size: Annotated[int, Range(ge=8)] | None = None  # eval resize of the shorter side; default img_size*256/224
    in_chans: Literal[1, 3] = 3  # 3 = RGB, 1 = grey
    mean: list[float] = field(default_factory=lambda: [0.5])
    std: list[Annotated[float, Range(gt=0)]] = field(default_factory=lambda: [0.5])
    scale: tuple[Annotated[float, Range(gt=0, le=1)], Annotated[float, Range(gt=0, le=1)]] = (0.08, 1.0)  # crop area
    ratio: tuple[Annotated[float, Range(gt=0)], Annotated[float, Range(gt=0)]] = (0.75, 1.3333333333333333)  # aspect
    hflip: Annotated[float, Range(ge=0, le=1)] = 0.5
    skip_bad: bool = False  # leave out unreadable images (with a warning) instead of failing
    # DICOM/NIfTI slices: "auto" = the DICOM's own WindowCenter/Width (else min-max), "C,W" = a CT window, "none"
    window: Annotated[str, Match(r"auto|none|-?\d+(\.\d+)?,\d+(\.\d+)?", "auto | none | C,W (e.g. 40,400)")] = "auto"


@dataclass
class LossSection:
    """``loss:`` — the training loss (cross-entropy).

    ``class_weights``: ``none`` (plain cross-entropy), ``balanced`` (weight of class k = N / (K · N_k) over the training
    images, as scikit-learn's "balanced") or a list of K weights in class order. ``label_smoothing``: as in
    ``torch.nn.functional.cross_entropy``. With imbalanced data also set ``train.monitor=balanced_acc`` (or ``f1``) so
    the best checkpoint is not chosen on plain accuracy.
    """

    class_weights: str | list[float] = "none"
    label_smoothing: float = 0.0


@dataclass
class ClassifyConfig:
    """A classification preset: ``model``, ``data``, ``loss``, ``train`` sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainConfig = field(default_factory=TrainConfig)


def class_weights(spec: str | list[float], counts: list[int]) -> torch.Tensor | None:
    """Cross-entropy class weights from ``loss.class_weights`` and the training images per class (None = unweighted)."""
    k = len(counts)
    if isinstance(spec, str):
        if spec == "none":
            return None
        if spec != "balanced":
            raise ValueError(f"config key 'loss.class_weights': expected none, balanced or a list of {k} weights, "
                             f"got {spec!r}")
        if min(counts) <= 0:
            raise ValueError(f"config key 'loss.class_weights': balanced weights need every class in the training "
                             f"data; counts are {counts}")
        n = sum(counts)
        return torch.tensor([n / (k * c) for c in counts], dtype=torch.float32)
    if len(spec) != k or any(w < 0 for w in spec) or not any(w > 0 for w in spec):
        raise ValueError(f"config key 'loss.class_weights': expected {k} non-negative weights (one per class), got {spec}")
    return torch.tensor([float(w) for w in spec], dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------------- task
class ClassificationTask:
    """Engine task: cross-entropy training (optionally class-weighted: ``class_weights`` [K]); ``predict_step`` →
    ``probs`` [B, K] and ``targets`` [B]; metrics from
    :func:`glfuse.metrics.classification.classification_metrics` (``acc``, ``f1``, ``precision``, ``recall``,
    ``specificity``, ``auc``)."""

    def __init__(self, class_names: list[str] | None = None, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None) -> None:
        self.class_names = class_names
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights

    def training_step(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = model(x).float()
        w = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits, y, weight=w, label_smoothing=self.label_smoothing)

    def predict_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        return {"probs": model(x).float().softmax(1), "targets": y}

    def compute_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        from glfuse.metrics.classification import SCALAR_KEYS, classification_metrics

        m = classification_metrics(outputs["probs"], outputs["targets"], self.class_names)
        return {k: (float("nan") if m[k] is None else float(m[k])) for k in SCALAR_KEYS}

    def metric_names(self) -> list[str]:
        from glfuse.metrics.classification import SCALAR_KEYS

        return list(SCALAR_KEYS)


# --------------------------------------------------------------------------------------------------------------- data
def _preprocessing(d: DataSection) -> dict[str, Any]:
    from glfuse.data.transforms import eval_resize_size

    return {"img_size": d.img_size, "resize_size": d.resize_size or eval_resize_size(d.img_size),
            "in_chans": d.in_chans, "mean": list(d.mean), "std": list(d.std), "interpolation": "bilinear",
            "normalize_input_range": [0, 1], "window": d.window}


def _window(spec: str | None) -> str | None:
    """A config/CLI window spec as :func:`glfuse.data.images.load_image` takes it."""
    return None if spec in (None, "none") else spec


def _eval_transform(pre: dict[str, Any]):
    from glfuse.data.transforms import build_transforms

    return build_transforms(False, pre["img_size"], resize_size=pre["resize_size"], mean=pre["mean"], std=pre["std"])


def _check_data(d: DataSection) -> None:
    if d.kind == "splitfiles" and not d.root:
        raise ValueError("config key 'data.root': required for data.kind=splitfiles")
    if d.kind == "folder" and not d.root and not Path(d.train).is_absolute():
        raise ValueError("config key 'data.root': required for data.kind=folder (or give absolute data.train paths)")
    if len(d.mean) not in (1, d.in_chans) or len(d.std) not in (1, d.in_chans):
        raise ValueError(f"config keys 'data.mean'/'data.std': need 1 or data.in_chans={d.in_chans} values, got "
                         f"{d.mean} / {d.std}")


def _dataset(d: DataSection, split: str, train: bool, class_names: list[str] | None = None):
    from glfuse.data.images import image_csv, image_folder, split_files
    from glfuse.data.transforms import build_transforms

    tf = (build_transforms(True, d.img_size, mean=d.mean, std=d.std, scale=d.scale, ratio=d.ratio, hflip=d.hflip)
          if train else _eval_transform(_preprocessing(d)))
    root = Path(d.root).expanduser() if d.root else None
    kw = {"class_names": class_names, "in_chans": d.in_chans, "skip_bad": d.skip_bad}
    if d.kind == "splitfiles":
        ds = split_files(root, split, tf, split_dir=d.split_dir, class_dirs=d.class_dirs or None, **kw)
    else:
        p = Path(split).expanduser()
        if not p.is_absolute() and root is not None:
            p = root / p
        ds = image_csv(p, tf, **kw) if d.kind == "csv" else image_folder(p, tf, **kw)
    ds.window = _window(d.window)
    return ds


def build_datasets(cfg: ClassifyConfig, splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """``{split name: ImageDataset}`` for the requested config sections (``train`` uses the train transform; the others
    the eval transform and the training classes)."""
    d = cfg.data
    _check_data(d)
    out: dict[str, Any] = {}
    classes = None
    for name in splits:
        spec = getattr(d, name)
        if spec is None:
            continue
        ds = _dataset(d, spec, name == "train", classes)
        classes = classes or ds.class_names
        out[name] = ds
    return out


def _resolve_paths(cfg: ClassifyConfig) -> None:
    """Make ``data.root`` absolute (relative to the current directory) so a saved config works from anywhere."""
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())


# -------------------------------------------------------------------------------------------------------------- model
def _model_args(cfg: ClassifyConfig, num_classes: int) -> dict[str, Any]:
    from glfuse.registry import model_info

    args = dict(cfg.model.args)
    if "num_classes" in args and args["num_classes"] != num_classes:
        raise ValueError(f"config key 'model.args.num_classes': {args['num_classes']} but the data has {num_classes} "
                         "classes (leave it unset)")
    args["num_classes"] = num_classes
    args.setdefault("in_chans", cfg.data.in_chans)
    try:
        info = model_info(cfg.model.name)
    except KeyError as e:
        raise ValueError(f"config key 'model.name': {e.args[0]}") from e
    if info.input != "image":
        raise ValueError(f"config key 'model.name': {cfg.model.name!r} takes {info.input!r} input, not an image "
                         "classifier (see `glfuse models`)")
    if info.size_arg and "img_size" not in args and cfg.data.img_size != info.img_size:
        args["img_size"] = cfg.data.img_size
    return args


def load_classifier(model_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any], Path]:
    """(model in eval mode, its config.json, the model folder) from a model folder or run folder (its ``best/``).
    A model folder of another system fails naming it."""
    from glfuse.checkpoint import load_model
    from glfuse.runs import open_model_dir

    mdir, _ = open_model_dir(model_dir, "classification")
    model, mcfg = load_model(mdir, map_location="cpu")
    if "class_names" not in mcfg or "preprocessing" not in mcfg:
        raise ValueError(f"{mdir / 'config.json'}: no class_names/preprocessing (not a glfuse classifier)")
    return model.to(device), mcfg, mdir


def _device(spec: str) -> torch.device:
    from glfuse.engine import get_device

    return get_device(spec)


# -------------------------------------------------------------------------------------------------------------- train
def train(cfg: ClassifyConfig, run_dir: str | Path, *, resume: bool | str = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` into ``run_dir``; returns the engine summary.

    ``resume``: ``True`` continues the run in ``run_dir`` from its last completed epoch, ``"auto"`` resumes when there
    is one and starts otherwise (see :func:`glfuse.runs.open_run` for the whole policy, the lock and distributed runs).
    An existing run is never replaced unless ``overwrite=True``.
    """
    from glfuse.runs import run_training

    return run_training(run_dir, "classification", cfg.train, lambda run: _train(cfg, run), resume=resume, overwrite=overwrite)


def _train(cfg: ClassifyConfig, run: Any) -> dict[str, Any]:
    from glfuse.config import check_resume_config, save_config
    from glfuse.engine import fit, seed_everything
    from glfuse.registry import create_model

    run_dir = run.dir
    _resolve_paths(cfg)
    if run.resume:
        check_resume_config(cfg, run_dir / "config.yaml")  # only e.g. train.epochs may change
    data = build_datasets(cfg, ("train", "val"))
    train_ds, val_ds = data["train"], data.get("val")
    classes = train_ds.class_names
    if len(classes) < 2:
        raise ValueError(f"training data has {len(classes)} class(es) {classes}; need at least 2")
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # the initial weights too (fit seeds again for training)
    model = create_model(cfg.model.name, **_model_args(cfg, len(classes)))
    if run.main:
        save_config(cfg, run_dir / "config.yaml")
    counts = train_ds.class_counts()
    weights = class_weights(cfg.loss.class_weights, [counts[c] for c in classes])
    extra = {"class_names": classes, "preprocessing": _preprocessing(cfg.data), "task": "classification",
             "train_counts": counts, "class_weights": None if weights is None else weights.tolist()}
    task = ClassificationTask(classes, cfg.loss.label_smoothing, weights)
    return fit(model, task, train_ds, val_ds, cfg.train, run_dir, resume=run.resume,
               model_extra=extra)


# ----------------------------------------------------------------------------------------------------------- evaluate
def _run_config(mdir: Path) -> ClassifyConfig | None:
    from glfuse.config import build_config

    for cand in (mdir / "config.yaml", mdir.parent / "config.yaml"):
        if cand.is_file():
            return build_config(ClassifyConfig, str(cand))
    return None


def _eval_dataset(mcfg: dict[str, Any], mdir: Path, data: str | Path | None, split: str, skip_bad: bool,
                  window: str | None = None):
    ds, where = _eval_dataset_of(mcfg, mdir, data, split, skip_bad)
    ds.window = _window(window or mcfg["preprocessing"].get("window", "auto"))
    return ds, where


def _eval_dataset_of(mcfg: dict[str, Any], mdir: Path, data: str | Path | None, split: str, skip_bad: bool):
    from glfuse.data.images import image_csv, image_folder, split_files

    classes = list(mcfg["class_names"])
    pre = mcfg["preprocessing"]
    tf = _eval_transform(pre)
    kw = {"class_names": classes, "in_chans": pre["in_chans"], "skip_bad": skip_bad}
    if data is not None:
        p = Path(data).expanduser()
        if p.is_file() and p.suffix.lower() == ".csv":
            return image_csv(p, tf, **kw), f"{p}"
        if (p / "Data-split").is_dir():
            return split_files(p, split, tf, **kw), f"{p} [{split}]"
        if p.is_dir():
            return image_folder(p, tf, **kw), f"{p}"
        raise FileNotFoundError(f"{p}: data not found (a folder of class sub-folders, a CSV, or a split-file root)")
    rcfg = _run_config(mdir)
    if rcfg is None:
        raise FileNotFoundError(f"{mdir}: no run config.yaml next to the model; pass --data")
    spec = getattr(rcfg.data, split, None) if split in ("train", "val", "test") else split
    if spec is None:
        raise ValueError(f"the run's config has no data.{split}; pass --data")
    d = rcfg.data
    d.skip_bad = skip_bad or d.skip_bad
    ds = _dataset(d, spec, False, classes)
    ds.transform = tf
    return ds, f"{d.root} [{split}]"


def evaluate(model_dir: str | Path, out_dir: str | Path, *, data: str | Path | None = None, split: str = "test",
             batch_size: int = 32, device: str = "auto", skip_bad: bool = False, overwrite: bool = False,
             flops: bool = True, progress: bool = True, print_row: bool = True, calibrate: bool = False,
             cams: int = 6, n_boot: int = 1000, report: bool = True, positive_class: str | None = None,
             window: str | None = None) -> dict[str, Any]:
    """Evaluate a saved classifier and write the report to ``out_dir``.

    ``window``: CT window for DICOM/NIfTI slices (``"C,W"``, ``"auto"``, ``"none"``); default: the model's own.

    Data: ``data`` (a class-folder tree, a ``path,label`` CSV, or a COVID-CT root with ``Data-split`` + ``split``), or
    by default the run's own ``config.yaml`` section ``data.<split>``. Returns the metrics dict (plus ``params``,
    ``gflops``, ``table``).

    Args:
        calibrate: first fit a temperature on the run's validation split (:func:`fit_temperature_on_val`), store it in
            the model's ``config.json`` and apply it here and in :func:`predict`. A stored temperature is always applied.
        cams: Grad-CAM figures for the ``cams`` most confident mistakes (and, if fewer mistakes, most confident correct
            predictions) into ``out_dir/cam/`` (0 = none).
        n_boot: bootstrap resamples (of images) for the 95 % CIs. report: write ``out_dir/report.html``.
        positive_class: binary tasks: the class whose sensitivity / specificity are reported (default: the second).
    """
    from glfuse.engine import evaluate as run_eval
    from glfuse.files import all_or_nothing, save_json, write_text
    from glfuse.metrics.classification import (
        classification_metrics,
        format_table_row,
        positive_index,
        save_classification_report,
    )

    out_dir = Path(out_dir)
    dev = _device(device)
    if calibrate:
        fit_temperature_on_val(model_dir, batch_size=batch_size, device=device, overwrite=overwrite, progress=progress)
    model, mcfg, mdir = load_classifier(model_dir, str(dev))
    if (out_dir / "metrics.json").exists() and not overwrite:
        raise FileExistsError(f"{out_dir / 'metrics.json'} exists; pass --overwrite to replace it")
    ds, where = _eval_dataset(mcfg, mdir, data, split, skip_bad, window)
    classes = list(mcfg["class_names"])
    _, outputs = run_eval(model, ClassificationTask(classes), ds, batch_size=batch_size, device=dev, progress=progress)
    probs, extra = _calibrated(outputs["probs"], mcfg)
    if extra:
        from glfuse.metrics.calibration import expected_calibration_error

        extra["ece_uncalibrated"] = expected_calibration_error(outputs["probs"], outputs["targets"])
    metrics = classification_metrics(probs, outputs["targets"], classes, positive_class)
    metrics.update(_cis(probs, outputs["targets"], n_boot, positive=positive_index(classes, positive_class)))
    params, gflops, shape = _size_at_input(model, mcfg, dev, flops)
    name = mcfg["arch"]
    table = format_table_row(metrics, name, params, gflops)
    extra.update({"model_dir": str(mdir), "arch": name, "data": where, "split": split, "params": params,
                  "gflops": gflops, "flops_input": shape})
    files = [out_dir / f for f in ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png",
                                   "predictions.csv", "table.json", "table.md")]
    with all_or_nothing(files):  # a failed write (e.g. disk full) leaves no half report
        save_classification_report(metrics, out_dir, classes, title=f"{name} — {where}", extra=extra,
                                   overwrite=overwrite)
        _write_predictions(out_dir / "predictions.csv", ds.paths, probs, classes, outputs["targets"])
        save_json({"table": table}, out_dir / "table.json")
        write_text(out_dir / "table.md", table + "\n")
    if cams:
        _mistake_cams(model, mcfg, ds.paths, probs, outputs["targets"], out_dir / "cam", cams, overwrite)
    if report:
        from glfuse.reports import build_report

        build_report(out_dir)
    if print_row:
        print(table)
    return {**metrics, **extra, "table": table}


def _calibrated(probs: torch.Tensor, mcfg: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Probabilities with the model's stored temperature applied (if any) and the report entries saying so."""
    from glfuse.metrics.calibration import apply_temperature

    t = mcfg.get("temperature")
    if not t:
        return probs, {}
    return apply_temperature(probs, t, is_probs=True), {"temperature": t,
                                                         "temperature_split": mcfg.get("temperature_split", "val")}


def _cis(probs: torch.Tensor, targets: torch.Tensor, n_boot: int, groups: Any = None,
         unit: str = "images", positive: int = 1) -> dict[str, Any]:
    from glfuse.metrics.bootstrap import bootstrap_cis

    if n_boot <= 0:
        return {}
    ci = bootstrap_cis(probs.numpy(), targets.numpy(), groups, n_boot=n_boot, seed=0, positive=positive)
    return {"ci": ci, "ci_info": {"method": "percentile bootstrap", "n_boot": n_boot, "level": 0.95, "unit": unit,
                                  "seed": 0}}


def _size_at_input(model: nn.Module, mcfg: dict[str, Any], dev: torch.device, flops: bool
                   ) -> tuple[int, float | None, str]:
    """Parameters and GFLOPs of one forward pass at the preprocessing's input size (the size actually evaluated)."""
    from glfuse.profile import count_flops, count_params

    pre = mcfg["preprocessing"]
    shape = f"{pre['in_chans']}×{pre['img_size']}×{pre['img_size']}"
    gflops = None
    if flops:
        try:
            x = torch.zeros(1, pre["in_chans"], pre["img_size"], pre["img_size"], device=dev)
            gflops = count_flops(model, (x,)) / 1e9
        except Exception:  # noqa: BLE001 - FLOPs are informative only
            gflops = None
    return count_params(model), gflops, shape


def fit_temperature_on_val(model_dir: str | Path, *, split: str = "val", data: str | Path | None = None,
                           batch_size: int = 32, device: str = "auto", overwrite: bool = False,
                           progress: bool = True) -> float:
    """Fit temperature scaling on ``split`` (default the run's validation split) and store ``temperature`` in the model
    folder's ``config.json`` (refuses to replace a stored one unless ``overwrite``). Returns T."""
    import json

    from glfuse.checkpoint import CONFIG_NAME, save_json
    from glfuse.engine import evaluate as run_eval
    from glfuse.metrics.calibration import fit_temperature

    dev = _device(device)
    model, mcfg, mdir = load_classifier(model_dir, str(dev))
    if mcfg.get("temperature") and not overwrite:
        raise FileExistsError(f"{mdir / CONFIG_NAME} already holds temperature {mcfg['temperature']:.4f}; pass "
                              "--overwrite to fit it again")
    ds, where = _eval_dataset(mcfg, mdir, data, split, False)
    _, out = run_eval(model, ClassificationTask(list(mcfg["class_names"])), ds, batch_size=batch_size, device=dev,
                      progress=progress, description="calibrate")
    t = fit_temperature(out["probs"], out["targets"], is_probs=True)
    cfg = json.loads((mdir / CONFIG_NAME).read_text())
    cfg.update({"temperature": t, "temperature_split": where})
    save_json(cfg, mdir / CONFIG_NAME)
    return t


def _mistake_cams(model: nn.Module, mcfg: dict[str, Any], paths: list[Path], probs: torch.Tensor,
                  targets: torch.Tensor, out: Path, n: int, overwrite: bool) -> list[Path]:
    """Grad-CAMs of the most confident mistakes (then the most confident correct predictions) + ``index.json``."""
    from glfuse.checkpoint import save_json

    conf, pred = probs.max(1)
    wrong = [int(i) for i in torch.argsort(conf, descending=True) if pred[i] != targets[i]]
    right = [int(i) for i in torch.argsort(conf, descending=True) if pred[i] == targets[i]]
    chosen = wrong[: max(n - min(2, len(right)), n // 2)] if wrong else []
    chosen += right[: n - len(chosen)]
    if (out / "index.json").exists() and not overwrite:
        raise FileExistsError(f"{out / 'index.json'} exists; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    index, files = [], []
    for rank, i in enumerate(chosen):
        kind = "mistake" if i in wrong else "correct"
        f = out / f"{rank:02d}_{kind}_{Path(paths[i]).stem}.png"
        caption = _cam_one(model, mcfg, Path(paths[i]), f, int(targets[i]))
        index.append({"file": f.name, "caption": f"{kind}: {caption}", "kind": kind})
        files.append(f)
    save_json(index, out / "index.json")
    return files


def _cam_one(model: nn.Module, mcfg: dict[str, Any], path: Path, out: Path, true_idx: int | None,
             target: int | None = None, layers: dict[str, nn.Module] | None = None, window: str | None = None) -> str:
    """One Grad-CAM figure titled with the true class (when known) and the predicted class; returns the title."""
    from glfuse.cam import default_cam_layers, grad_cam, save_cam_figure
    from glfuse.data.images import load_image

    classes = list(mcfg["class_names"])
    pre = mcfg["preprocessing"]
    dev = next(model.parameters()).device
    x = _eval_transform(pre)(load_image(path, pre["in_chans"], _window(window or pre.get("window", "auto"))))
    maps, logits = grad_cam(model, x[None].to(dev), layers or default_cam_layers(model), target)
    prob, _ = _calibrated(logits.float().softmax(1).cpu(), mcfg)
    prob = prob[0]
    pred = int(prob.argmax())
    k = int(target) if target is not None else pred
    shown = (x * torch.tensor(pre["std"]).view(-1, 1, 1) + torch.tensor(pre["mean"]).view(-1, 1, 1)).clamp(0, 1)
    true = f"true {classes[true_idx]} · " if true_idx is not None and true_idx >= 0 else ""
    from glfuse.files import display_path

    title = (f"{display_path(path.name)}: {true}predicted {classes[pred]} (p={float(prob[pred]):.2f}) · "
             f"CAM for {classes[k]}")
    save_cam_figure(out, shown, {n: m[0] for n, m in maps.items()}, title=title)
    return title


def _write_predictions(path: Path, paths: list[Path], probs: torch.Tensor, classes: list[str],
                       targets: torch.Tensor | None = None) -> None:
    from glfuse.files import write_csv

    pred = probs.argmax(1)
    head = ["path", "pred", "pred_name"] + [f"prob_{c}" for c in classes]
    if targets is not None:
        head[1:1] = ["target"]
    rows = []
    for i, p in enumerate(paths):
        row = [str(p), int(pred[i]), classes[int(pred[i])]] + [f"{float(v):.6f}" for v in probs[i]]
        if targets is not None:
            row[1:1] = [int(targets[i])]
        rows.append(row)
    write_csv(path, rows, header=head)


# ------------------------------------------------------------------------------------------------------------ predict
def _gather_inputs(inputs: list[str | Path] | str | Path) -> list[Path]:
    from glfuse.data.images import IMAGE_EXTENSIONS, list_images

    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    for it in items:
        p = Path(it).expanduser()
        if p.is_dir():
            found = list_images(p, IMAGE_EXTENSIONS, recursive=True)
            if not found:
                raise ValueError(f"{p}: no images found")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise ValueError("no input images")
    return files


def predict(model_dir: str | Path, inputs: list[str | Path] | str | Path, out_csv: str | Path, *, batch_size: int = 32,
            device: str = "auto", skip_bad: bool = False, overwrite: bool = False,
            progress: bool = True, window: str | None = None) -> list[dict[str, Any]]:
    """Class probabilities for images (files and/or folders, searched recursively; PNG/JPEG/TIFF/..., DICOM and NIfTI
    slices windowed by ``window`` or the model's recorded window) → ``out_csv`` (``path, pred, pred_name,
    prob_<class>...``). Returns the rows."""
    from glfuse.data.images import ImageDataset
    from glfuse.engine import evaluate as run_eval

    out_csv = Path(out_csv)
    if out_csv.exists() and not overwrite:
        raise FileExistsError(f"{out_csv} exists; pass --overwrite to replace it")
    dev = _device(device)
    model, mcfg, _ = load_classifier(model_dir, str(dev))
    classes = list(mcfg["class_names"])
    pre = mcfg["preprocessing"]
    files = _gather_inputs(inputs)
    ds = ImageDataset([(p, -1) for p in files], classes, _eval_transform(pre), in_chans=pre["in_chans"],
                      skip_bad=skip_bad, window=_window(window or pre.get("window", "auto")))

    class _NoMetrics(ClassificationTask):
        def compute_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
            return {}

    _, outputs = run_eval(model, _NoMetrics(classes), ds, batch_size=batch_size, device=dev, progress=progress,
                          description="predict")
    probs, _ = _calibrated(outputs["probs"], mcfg)  # the stored temperature scaling, if any
    _write_predictions(out_csv, ds.paths, probs, classes)
    pred = probs.argmax(1)
    return [{"path": str(p), "pred": int(pred[i]), "pred_name": classes[int(pred[i])],
             **{f"prob_{c}": float(probs[i, k]) for k, c in enumerate(classes)}} for i, p in enumerate(ds.paths)]


# ---------------------------------------------------------------------------------------------------------------- cam
def cam(model_dir: str | Path, inputs: list[str | Path] | str | Path, out_dir: str | Path, *,
        layers: list[str] | None = None, target: int | str | None = None, device: str = "auto",
        overwrite: bool = False, window: str | None = None) -> list[Path]:
    """Grad-CAM figures ``out_dir/<image stem>_cam.png`` (input | one overlay per layer) for each image.

    ``layers``: names among the model's ``cam_layers()`` (HiFuse: ``local``, ``global``, ``fusion``); default all (or the
    last Conv2d for models without ``cam_layers``). ``target``: class index or name (default: the predicted class).
    Titles name the predicted class and, when an image sits in a folder named after a class, the true class.
    """
    from glfuse.cam import default_cam_layers

    out_dir = Path(out_dir)
    dev = _device(device)
    model, mcfg, _ = load_classifier(model_dir, str(dev))
    classes = list(mcfg["class_names"])
    available = default_cam_layers(model)
    if layers:
        unknown = [n for n in layers if n not in available]
        if unknown:
            raise ValueError(f"unknown CAM layer(s) {unknown}; this model has: {', '.join(available)}")
        available = {n: available[n] for n in layers}
    if isinstance(target, str):
        if target not in classes:
            raise ValueError(f"--target {target!r} is not a class: {classes}")
        target = classes.index(target)
    files = _gather_inputs(inputs)
    outs = [out_dir / f"{p.stem}_cam.png" for p in files]
    dup = {o for o in outs if outs.count(o) > 1}
    if dup:
        outs = [out_dir / f"{i:04d}_{p.stem}_cam.png" for i, p in enumerate(files)]
    existing = [o for o in outs if o.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
    for p, o in zip(files, outs):
        true = classes.index(p.parent.name) if p.parent.name in classes else None  # class-folder trees: the true class
        _cam_one(model, mcfg, p, o, true, target, available, window)
    return outs
