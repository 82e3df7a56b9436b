"""VDPF lesion staging: config, engine task, and the train / evaluate / predict / ablate / cam API.

Everything works on a slice cache from :func:`glfuse.staging.prepare.prepare` and a case-level split file from
:func:`glfuse.staging.prepare.make_split`.

* **Inputs per model** (declared in the registry, :func:`glfuse.registry.model_info`): ``image+box`` models (VDPF family)
  get ``(image, box_mask)`` — the whole slice and the union of its
  lesion boxes (the model forms I_L = I_G × mask itself). Any other registered classifier (the paper's Table 4 baselines
  ``resnet50``, ``vit_base_patch16_224``, ``efficientnet_b0``) gets the lesion-centred crop (box ± 5 px, resized) as a
  one-channel image (``data.crop: auto`` picks this from the model's declared input).
* **Case level** (paper §2.1): a case's prediction is the mean of the softmax over its lesion slices. ``StagingTask``
  reports ``case_acc``, ``case_f1`` (macro), ``case_precision``, ``case_recall``, ``case_specificity``, ``case_auc`` and the
  same with ``slice_`` for single slices, plus ``n_cases`` / ``n_slices``. The preset monitors ``case_f1``.
* **cam**: Grad-CAM (:func:`glfuse.cam.grad_cam`, not attention rollout) on the per-branch encoder token maps
  (``model.cam_layers()``: F_G and F_L, [B, N, D]) reshaped to the token grid by ``model.tokens_to_map`` (14×14 at 224²):
  weights = gradient of the case's predicted-class logit averaged over tokens, map = ReLU(Σ_d w_d·F_d), upsampled
  bilinearly and min–max scaled. The slice shown is the lesion slice with the highest
  probability for the case's predicted class (the largest contribution to the case mean).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glfuse.checkpoint import CONFIG_NAME, atomic_write, load_model, save_json
from glfuse.config import Range, check_resume_config, config_to_dict, save_config
from glfuse.engine import TrainConfig, fit, get_device, seed_everything
from glfuse.engine import evaluate as engine_evaluate
from glfuse.files import write_csv
from glfuse.staging.data import SliceCache, StagingSliceDataset, lesion_crop, resize_pair
from glfuse.staging.prepare import CaseInput, preprocess_case, read_split

__all__ = [
    "StageConfig",
    "StageDataConfig",
    "StageModelConfig",
    "StagingTask",
    "ablate",
    "aggregate_cases",
    "cam",
    "evaluate",
    "parse_variant",
    "predict",
    "staging_metrics",
    "train",
]


# ----------------------------------------------------------------------------------------------------------------- config
@dataclass
class StageModelConfig:
    """``name``: a registered model; ``args``: extra constructor arguments (``num_classes`` comes from the cache;
    ``img_size`` from ``data.img_size``). For VDPF, ``embed_dim``/``depth``/``num_heads`` shrink it for quick runs."""

    name: str = "vdpf"
    args: dict = field(default_factory=dict)


@dataclass
class StageDataConfig:
    cache: str = ""  # folder written by `glfuse stage prepare`
    split: str = ""  # split JSON from `glfuse stage split`; empty: every cached case is training data (no val/test)
    fold: Annotated[int, Range(ge=0)] | None = None  # which fold of a k-fold split file
    label_column: str | None = None  # if set, must match the column the cache was prepared with
    class_names: list[str] | None = None  # display names, in the cache's class order
    img_size: Annotated[int, Range(ge=8)] | None = None  # model input size (default: the cache's, 224)
    crop: Literal["auto", "yes", "no"] = "auto"  # auto: crop for single-image models
    augment: bool = True
    # training: at most N lesion slices per case (evenly spread); quick runs
    max_slices_per_case: Annotated[int, Range(ge=1)] | None = None
    # validation/test: same (None = all lesion slices, as the paper)
    eval_max_slices_per_case: Annotated[int, Range(ge=1)] | None = None


@dataclass
class StageConfig:
    model: StageModelConfig = field(default_factory=StageModelConfig)
    data: StageDataConfig = field(default_factory=StageDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(monitor="case_f1"))


def _info(name: str) -> Any:
    from glfuse.registry import model_info

    try:
        info = model_info(name)
    except KeyError as e:
        raise ValueError(f"config key 'model.name': {e.args[0]}") from e
    if info.input == "pair":
        raise ValueError(f"config key 'model.name': {name!r} is a fusion network, not a staging model")
    return info


def _is_dual(name: str) -> bool:
    """True when the registered model takes (image, box_mask)."""
    return _info(name).input == "image+box"


def _model_kwargs(name: str, args: dict, num_classes: int, img_size: int) -> dict:
    info = _info(name)
    kw = {"num_classes": num_classes, **args}
    if info.size_arg:
        kw.setdefault("img_size", img_size)
    kw.setdefault("in_chans", 1)  # grey MRI slices (VDPF declares 1 channel itself)
    return kw


# ------------------------------------------------------------------------------------------------------------- metrics
def aggregate_cases(probs: torch.Tensor, targets: torch.Tensor, cases: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean slice softmax per case -> ``(case ids [K] in order of first appearance, case probs [K, C], targets [K])``."""
    probs = torch.as_tensor(probs).float()
    cases = torch.as_tensor(cases).long()
    targets = torch.as_tensor(targets).long()
    uniq, inv = torch.unique(cases, return_inverse=True)
    first = torch.full((len(uniq),), len(cases), dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(len(cases)), reduce="amin")
    sums = torch.zeros(len(uniq), probs.shape[1]).index_add_(0, inv, probs)
    counts = torch.bincount(inv, minlength=len(uniq)).clamp(min=1).float()
    t = targets[first]
    if not torch.equal(targets, t[inv]):
        raise ValueError("slices of one case carry different labels")
    order = torch.argsort(first)
    return uniq[order], (sums / counts[:, None])[order], t[order]


def staging_metrics(outputs: dict[str, torch.Tensor], class_names: list[str] | None = None) -> dict[str, dict]:
    """Full classification metrics (:func:`glfuse.metrics.classification.classification_metrics`) at case and slice
    level: ``{"case": {...}, "slice": {...}}``."""
    from glfuse.metrics.classification import classification_metrics

    _, cp, ct = aggregate_cases(outputs["prob"], outputs["target"], outputs["case"])
    return {"case": classification_metrics(cp, ct, class_names),
            "slice": classification_metrics(outputs["prob"], outputs["target"], class_names)}


class StagingTask:
    """Engine task: cross-entropy on slices; predictions (slice softmax, target, case index) scored at case level."""

    def __init__(self, num_classes: int, dual: bool, class_names: list[str] | None = None) -> None:
        self.num_classes = num_classes
        self.dual = dual
        self.class_names = class_names

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["image"], batch["mask"]) if self.dual else model(batch["image"])

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        logits = self.forward(model, batch)
        loss = F.cross_entropy(logits.float(), batch["label"])
        acc = (logits.argmax(1) == batch["label"]).float().mean()
        return loss, {"acc": float(acc)}

    def predict_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.forward(model, batch)
        return {"prob": logits.float().softmax(1), "target": batch["label"], "case": batch["case"],
                "slice": batch["slice"]}

    def compute_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        from glfuse.metrics.classification import SCALAR_KEYS

        m = staging_metrics(outputs, self.class_names)
        out: dict[str, float] = {}
        for level in ("case", "slice"):
            for k in SCALAR_KEYS:
                v = m[level].get(k)
                out[f"{level}_{k}"] = float("nan") if v is None else float(v)
        out["n_cases"] = float(m["case"]["n"])
        out["n_slices"] = float(m["slice"]["n"])
        return out

    def batch_size(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["label"].shape[0])

    def metric_names(self) -> list[str]:
        from glfuse.metrics.classification import SCALAR_KEYS

        return [f"{level}_{k}" for level in ("case", "slice") for k in SCALAR_KEYS] + ["n_cases", "n_slices"]


# ---------------------------------------------------------------------------------------------------------------- train
def _crop_flag(cfg: StageConfig, dual: bool) -> bool:
    return (not dual) if cfg.data.crop == "auto" else cfg.data.crop == "yes"


def _open_data(cfg: StageConfig) -> tuple[SliceCache, dict[str, list[str]]]:
    if not cfg.data.cache:
        raise ValueError("config key 'data.cache' is empty: give the folder from `glfuse stage prepare`")
    cache = SliceCache(cfg.data.cache)
    if cfg.data.label_column and cfg.data.label_column != cache.index["label_column"]:
        raise ValueError(f"config key 'data.label_column': {cfg.data.label_column!r} but the cache {cache.dir} was "
                         f"prepared with {cache.index['label_column']!r}")
    if cfg.data.class_names and len(cfg.data.class_names) != len(cache.classes):
        raise ValueError(f"config key 'data.class_names': {len(cfg.data.class_names)} names for the cache's "
                         f"{len(cache.classes)} classes {cache.classes}")
    split = read_split(cfg.data.split, cfg.data.fold) if cfg.data.split else \
        {"train": list(cache.case_ids), "val": [], "test": []}
    for part, ids in split.items():
        missing = [c for c in ids if c not in set(cache.case_ids)]
        if missing:
            raise ValueError(f"{cfg.data.split}: {part} case {missing[0]} is not in the cache {cache.dir} "
                             "(was it left out at prepare time?)")
    overlap = (set(split["train"]) & set(split["val"])) | (set(split["train"]) & set(split["test"])) | \
              (set(split["val"]) & set(split["test"]))
    if overlap:
        raise ValueError(f"{cfg.data.split}: case {sorted(overlap)[0]} is in more than one part of the split")
    if not split["train"]:
        raise ValueError(f"{cfg.data.split}: no training cases")
    return cache, split


def build_model(cfg: StageConfig, num_classes: int, img_size: int) -> nn.Module:
    """The model named in ``cfg.model`` for ``num_classes`` classes at ``img_size``."""
    from glfuse.registry import create_model

    return create_model(cfg.model.name, **_model_kwargs(cfg.model.name, dict(cfg.model.args), num_classes, img_size))


def train(cfg: StageConfig, run_dir: str | Path, *, resume: bool | str = False, overwrite: bool = False,
          evaluate_test: bool = True) -> dict[str, Any]:
    """Train on the split's train cases, early-stop / pick the best checkpoint on the val cases (case-level metric
    ``train.monitor``), then evaluate ``best/`` on the test cases into ``run_dir/eval`` (both levels).

    ``resume`` / ``overwrite``: the run lifecycle of :func:`glfuse.runs.open_run` (``resume="auto"``: resume a started
    run, else start). Returns the engine summary plus ``test`` (case- and slice-level scalar metrics) when there is a
    test part."""
    from glfuse.runs import run_training

    return run_training(run_dir, "staging", cfg.train, lambda run: _train(cfg, run, evaluate_test), resume=resume,
                        overwrite=overwrite)


def _train(cfg: StageConfig, run: Any, evaluate_test: bool) -> dict[str, Any]:
    run_dir = run.dir
    if run.resume:
        check_resume_config(cfg, run_dir / "config.yaml")  # only e.g. train.epochs may change
    cache, split = _open_data(cfg)
    size = cfg.data.img_size or int(cache.index["preprocessing"]["size"])
    nc = len(cache.classes)
    seed_everything(cfg.train.seed, cfg.train.deterministic)  # the initial weights too (fit seeds again for training)
    model = build_model(cfg, nc, size)
    dual = _is_dual(cfg.model.name)
    crop = _crop_flag(cfg, dual)
    names = cfg.data.class_names or cache.classes
    train_ds = StagingSliceDataset(cache, split["train"], augment=cfg.data.augment, crop=crop, size=size,
                                   max_slices_per_case=cfg.data.max_slices_per_case)
    val_ds = StagingSliceDataset(cache, split["val"], crop=crop, size=size,
                                 max_slices_per_case=cfg.data.eval_max_slices_per_case) if split["val"] else None
    task = StagingTask(nc, dual, names)
    extra = {"task": "staging", "classes": cache.classes, "class_names": names, "label_column": cache.index["label_column"],
             "input": "dual" if dual else ("crop" if crop else "image"), "img_size": size,
             "preprocessing": cache.index["preprocessing"]}
    if run.main:
        save_config(cfg, run_dir / "config.yaml")
    summary = fit(model, task, train_ds, val_ds, cfg.train, run_dir, resume=run.resume, model_extra=extra)
    summary.update(n_train_slices=len(train_ds), n_val_slices=len(val_ds) if val_ds else 0)
    if evaluate_test and split["test"] and run.main:
        res = evaluate(run_dir, cache, split["test"], run_dir / "eval", overwrite=True,
                       max_slices_per_case=cfg.data.eval_max_slices_per_case, batch_size=cfg.train.eval_batch_size
                       or cfg.train.batch_size, device=cfg.train.device, progress=cfg.train.progress)
        summary["test"] = res["scalars"]
        save_json(summary, run_dir / "summary.json")
    return summary


# ------------------------------------------------------------------------------------------------------------- evaluate
def run_data(model_dir: str | Path) -> tuple[str, str | None]:
    """``(data.cache, data.split or None)`` recorded in the run's ``config.yaml`` (beside or above the model folder), so
    ``evaluate`` needs no ``--cache`` for a run trained here."""
    from glfuse.config import build_config

    p = Path(model_dir)
    for cand in (p / "config.yaml", p.parent / "config.yaml"):
        if cand.is_file():
            cfg = build_config(StageConfig, str(cand))
            if not cfg.data.cache:
                break
            return cfg.data.cache, cfg.data.split or None
    raise FileNotFoundError(f"{p}: no run config.yaml with data.cache beside the model; pass --cache")


def _load(model_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any], Path]:
    from glfuse.runs import open_model_dir

    d, _ = open_model_dir(model_dir, "staging")
    model, mcfg = load_model(d)
    return model.to(get_device(device)), mcfg, d


def evaluate(model_dir: str | Path, cache: SliceCache | str | Path, split: str | Path | list[str] | None,
             out_dir: str | Path | None, *, part: str = "test", fold: int | None = None,
             max_slices_per_case: int | None = None, batch_size: int = 16, device: str = "auto",
             overwrite: bool = False, progress: bool = True, n_boot: int = 1000, report: bool = True) -> dict[str, Any]:
    """Evaluate a trained model on ``part`` of a split file (or a list of case ids, or every cached case when None).

    Writes to ``out_dir`` (when given) ``case/`` and ``slice/`` classification reports (metrics.json, per_class.csv,
    confusion matrix CSV/PNG, with bootstrap 95 % CIs resampling cases at both levels, ``n_boot`` resamples),
    ``case_predictions.csv``, ``slice_predictions.csv`` and ``report.html`` (``report=True``). Returns
    ``{"case": metrics, "slice": metrics, "scalars": {case_acc, ...}}``."""
    from glfuse.metrics.classification import save_classification_report

    if out_dir is not None and (Path(out_dir) / "scalars.json").exists() and not overwrite:
        raise FileExistsError(f"{Path(out_dir)} holds a report already; pass --overwrite to replace it")
    model, mcfg, mdir = _load(model_dir, device)
    cache = cache if isinstance(cache, SliceCache) else SliceCache(cache)
    if list(mcfg["classes"]) != cache.classes:
        raise ValueError(f"{mdir / CONFIG_NAME}: model classes {mcfg['classes']} differ from the cache's {cache.classes}")
    if split is None:
        ids = list(cache.case_ids)
    elif isinstance(split, (list, tuple)):
        ids = list(split)
    else:
        ids = read_split(split, fold)[part]
        if not ids:
            raise ValueError(f"{split}: the {part!r} part is empty")
    dual = mcfg["input"] == "dual"
    ds = StagingSliceDataset(cache, ids, crop=mcfg["input"] == "crop", size=int(mcfg["img_size"]),
                             max_slices_per_case=max_slices_per_case)
    names = list(mcfg.get("class_names") or mcfg["classes"])
    task = StagingTask(len(names), dual, names)
    scalars, outs = engine_evaluate(model, task, ds, batch_size=batch_size, device=next(model.parameters()).device,
                                    progress=progress, description="evaluate")
    full = staging_metrics(outs, names)
    _add_cis(full, outs, n_boot)
    res = {"case": full["case"], "slice": full["slice"], "scalars": scalars}
    if out_dir is not None:
        out = Path(out_dir)
        info = {"model": str(mdir), "arch": mcfg["arch"], "cache": str(cache.dir), "cases": len(set(ids))}
        save_classification_report(full["case"], out / "case", names, title="case level", extra=info,
                                   overwrite=overwrite)
        save_classification_report(full["slice"], out / "slice", names, title="slice level", extra=info,
                                   overwrite=overwrite)
        cid, cp, ct = aggregate_cases(outs["prob"], outs["target"], outs["case"])
        _write_rows(out / "case_predictions.csv", ["case_id", "label", "pred", *[f"prob_{n}" for n in names],
                                                   "n_slices"],
                    [[cache.case_ids[int(c)], names[int(t)], names[int(p.argmax())], *[f"{float(x):.6f}" for x in p],
                      int((outs["case"] == c).sum())] for c, p, t in zip(cid, cp, ct)])
        _write_rows(out / "slice_predictions.csv", ["case_id", "slice", "label", "pred", *[f"prob_{n}" for n in names]],
                    [[cache.case_ids[int(c)], int(s), names[int(t)], names[int(p.argmax())],
                      *[f"{float(x):.6f}" for x in p]]
                     for c, s, t, p in zip(outs["case"], outs["slice"], outs["target"], outs["prob"])])
        save_json(scalars, out / "scalars.json")
        if report:
            from glfuse.reports import build_report

            build_report(out)
    return res


def _add_cis(full: dict[str, dict], outs: dict[str, torch.Tensor], n_boot: int) -> None:
    """Bootstrap 95 % CIs resampling cases (not slices) at both levels: slice metrics use every slice of each drawn case."""
    from glfuse.metrics.bootstrap import bootstrap_cis

    if n_boot <= 0:
        return
    _, cp, ct = aggregate_cases(outs["prob"], outs["target"], outs["case"])
    info = {"method": "percentile bootstrap", "n_boot": n_boot, "level": 0.95, "seed": 0}
    full["case"]["ci"] = bootstrap_cis(cp.numpy(), ct.numpy(), n_boot=n_boot)
    full["case"]["ci_info"] = {**info, "unit": "cases"}
    full["slice"]["ci"] = bootstrap_cis(outs["prob"].float().numpy(), outs["target"].numpy(),
                                        outs["case"].numpy(), n_boot=n_boot)
    full["slice"]["ci_info"] = {**info, "unit": "cases (all slices of each drawn case)"}


def _write_rows(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    write_csv(path, rows, header=header)


# -------------------------------------------------------------------------------------------------------------- predict
def _model_inputs(mcfg: dict[str, Any], image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed [S,H,W] slices and box masks -> the model's [S,1,size,size] inputs (crop or resize)."""
    img = torch.from_numpy(np.asarray(image, dtype=np.float32))[:, None]
    m = torch.from_numpy(np.asarray(mask)).float()[:, None]
    size = int(mcfg["img_size"])
    if mcfg["input"] == "crop":
        pairs = [lesion_crop(i, k, size) for i, k in zip(img, m)]
    else:
        pairs = [resize_pair(i, k, size) for i, k in zip(img, m)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _preprocess_for(mcfg: dict[str, Any], case: CaseInput) -> dict[str, Any]:
    pre = mcfg["preprocessing"]
    # caches made before the orientation option sliced the volume as stored
    return preprocess_case(case, axis=int(pre["axis"]), size=int(pre["size"]), orientation=pre.get("orientation"),
                           resample_mask=bool(pre.get("resample_mask", False)))


def _case_tensors(mcfg: dict[str, Any], volume: str | Path, mask_or_boxes: str | Path,
                  case_id: str | None) -> tuple[str, torch.Tensor, torch.Tensor, np.ndarray]:
    from glfuse.data.volumes import read_boxes_csv

    mb = Path(mask_or_boxes)
    vp = Path(volume)
    cid = case_id or (vp.name if vp.is_dir() else vp.parent.name)  # <case_id>/<image> layout, as prepare
    case = CaseInput(case_id=cid, image=Path(volume))
    if mb.suffix.lower() == ".csv":
        boxes = read_boxes_csv(mb)
        if case_id is None:
            if len(boxes) != 1:
                raise ValueError(f"{mb}: holds {len(boxes)} cases; choose one with --case-id")
            cid = case.case_id = next(iter(boxes))
        if cid not in boxes:
            raise ValueError(f"case {cid} ({mb}): no boxes for this case")
        case.boxes, case.boxes_source = boxes[cid], str(mb)
    else:
        case.mask = mb
    r = _preprocess_for(mcfg, case)
    img, m = _model_inputs(mcfg, r["image"], r["mask"])
    return cid, img, m, r["slice_index"]


def _slice_probs(model: nn.Module, task: StagingTask, img: torch.Tensor, m: torch.Tensor,
                 batch_size: int) -> torch.Tensor:
    dev = next(model.parameters()).device
    return torch.cat([task.predict_step(model, {"image": img[i:i + batch_size].to(dev),
                                                "mask": m[i:i + batch_size].to(dev),
                                                "label": torch.zeros(len(img[i:i + batch_size]), dtype=torch.long),
                                                "case": torch.zeros(1), "slice": torch.zeros(1)})["prob"].cpu()
                      for i in range(0, len(img), batch_size)])


@torch.no_grad()
def predict(model_dir: str | Path, volume: str | Path, mask_or_boxes: str | Path, out_csv: str | Path | None = None,
            *, case_id: str | None = None, batch_size: int = 16, device: str = "auto",
            overwrite: bool = False) -> dict[str, Any]:
    """Stage one case: its lesion slices (from a mask volume or a boxes CSV) are preprocessed as at training time; the
    case id defaults to the volume's folder (``<case_id>/<image>``, as ``prepare``) or the only case of the boxes CSV; the
    case's class probabilities are the mean slice softmax. Writes ``out_csv`` (first row ``level=case``, then one row
    per lesion slice) when given (never over an existing file unless ``overwrite``); returns ``{"case_id", "pred",
    "probs": {class: p}, "slices": [...]}``."""
    if out_csv is not None and Path(out_csv).exists() and not overwrite:
        raise FileExistsError(f"{out_csv} exists; pass --overwrite to replace it")
    model, mcfg, _ = _load(model_dir, device)
    names = list(mcfg.get("class_names") or mcfg["classes"])
    cid, img, m, slices = _case_tensors(mcfg, volume, mask_or_boxes, case_id)
    task = StagingTask(len(names), mcfg["input"] == "dual", names)
    probs = _slice_probs(model, task, img, m, batch_size)
    case_p = probs.mean(0)
    res = {"case_id": cid, "pred": names[int(case_p.argmax())], "probs": dict(zip(names, map(float, case_p))),
           "slices": [{"slice": int(s), "pred": names[int(p.argmax())], "probs": dict(zip(names, map(float, p)))}
                      for s, p in zip(slices, probs)]}
    if out_csv is not None:
        hdr = ["case_id", "level", "slice", "pred", *[f"prob_{n}" for n in names]]
        rows = [[cid, "case", "", res["pred"], *[f"{float(x):.6f}" for x in case_p]]]
        rows += [[cid, "slice", int(s), names[int(p.argmax())], *[f"{float(x):.6f}" for x in p]]
                 for s, p in zip(slices, probs)]
        _write_rows(Path(out_csv), hdr, rows)
    return res


def _folder_cases(mcfg: dict[str, Any], source: Path, image_name: str | None, mask_name: str,
                  boxes_csv: str | Path | None):
    """Yield ``(case_id, image tensors, mask tensors, slice indices)`` for every case of a case folder or a cache."""
    from glfuse.staging.prepare import CASES_JSON, discover_cases

    if (source / CASES_JSON).is_file():
        cache = SliceCache(source)
        pre, want = cache.index["preprocessing"], mcfg["preprocessing"]
        for k in ("axis", "orientation"):
            if pre.get(k) != want.get(k):
                raise ValueError(f"{source / CASES_JSON}: cache {k} {pre.get(k)!r} differs from the model's "
                                 f"{want.get(k)!r} (re-run `glfuse stage prepare` with the model's settings)")
        for cid in cache.case_ids:
            rows = cache.rows(cid)
            img, m = _model_inputs(mcfg, cache.arrays["image"][rows], cache.arrays["mask"][rows])
            yield cid, img, m, cache.arrays["slice_index"][rows]
        return
    for case in discover_cases(source, image_name=image_name, mask_name=mask_name, boxes_csv=boxes_csv):
        r = _preprocess_for(mcfg, case)
        img, m = _model_inputs(mcfg, r["image"], r["mask"])
        yield case.case_id, img, m, r["slice_index"]


@torch.no_grad()
def predict_folder(model_dir: str | Path, images: str | Path, out_dir: str | Path, *, image_name: str | None = None,
                   mask_name: str = "mask", boxes_csv: str | Path | None = None, batch_size: int = 16,
                   device: str = "auto", overwrite: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Stage every case of a folder of case folders (the ``prepare`` layout and name patterns; no labels needed) or of
    a prepared cache (e.g. ``prepare --predict-only``).

    Writes ``out_dir/case_predictions.csv`` (``case_id, pred, prob_<class>..., n_slices``) and
    ``out_dir/slice_predictions.csv`` (``case_id, slice, pred, prob_<class>...``); returns one record per case.
    """
    from glfuse.engine import progress_bar

    out = Path(out_dir)
    targets = [out / "case_predictions.csv", out / "slice_predictions.csv"]
    if any(t.exists() for t in targets) and not overwrite:
        raise FileExistsError(f"{out}: predictions exist already; pass --overwrite to replace them")
    model, mcfg, _ = _load(model_dir, device)
    names = list(mcfg.get("class_names") or mcfg["classes"])
    task = StagingTask(len(names), mcfg["input"] == "dual", names)
    case_rows, slice_rows, recs = [], [], []
    src = Path(images)
    with progress_bar(progress) as bar:
        job = bar.add_task("predict", total=None, info="")
        for cid, img, m, slices in _folder_cases(mcfg, src, image_name, mask_name, boxes_csv):
            probs = _slice_probs(model, task, img, m, batch_size)
            cp = probs.mean(0)
            pred = names[int(cp.argmax())]
            case_rows.append([cid, pred, *[f"{float(x):.6f}" for x in cp], len(slices)])
            slice_rows += [[cid, int(s), names[int(p.argmax())], *[f"{float(x):.6f}" for x in p]]
                           for s, p in zip(slices, probs)]
            recs.append({"case_id": cid, "pred": pred, "probs": dict(zip(names, map(float, cp))),
                         "n_slices": len(slices)})
            bar.update(job, advance=1, info=cid)
    probs_hdr = [f"prob_{n}" for n in names]
    _write_rows(targets[0], ["case_id", "pred", *probs_hdr, "n_slices"], case_rows)
    _write_rows(targets[1], ["case_id", "slice", "pred", *probs_hdr], slice_rows)
    return recs


# --------------------------------------------------------------------------------------------------------------- ablate
def parse_variant(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"vdpf"`` / ``"resnet50"`` / ``"vdpf:features=global+local"`` / ``"vdpf:features=cross,fffn_hidden=8"`` ->
    ``(label, model name, extra model args)``; ``a+b`` values become lists."""
    import yaml

    name, _, rest = spec.partition(":")
    args: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise ValueError(f"variant {spec!r}: {item!r} is not key=value")
        k, v = item.split("=", 1)
        args[k.strip()] = v.split("+") if "+" in v else yaml.safe_load(v)
    return spec, name.strip(), args


def _table_of(name: str, args: dict[str, Any]) -> str:
    if not _is_dual(name):
        return "4"
    return "3" if "features" in args else "2"


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def ablate(variants: list[str], cfg: StageConfig, out_dir: str | Path, *, overwrite: bool = False,
           resume: bool = False) -> list[dict[str, Any]]:
    """Train and evaluate each variant on the same cache/split with the same recipe; write ``ablation.csv`` and
    ``ablation.md`` (the paper's Tables 2–4 shapes: model ablations, feature subsets, comparison models), all at case
    level (plus slice accuracy/F1). An ``image+box`` (VDPF-family) variant gets ``cfg.model.args`` + its own args;
    another model only its own args. A variant whose run finished already is reused when ``resume``."""
    from glfuse.metrics.classification import SCALAR_KEYS

    out = Path(out_dir)
    if (out / "ablation.csv").exists() and not (overwrite or resume):
        raise FileExistsError(f"{out / 'ablation.csv'} exists; pass --overwrite or --resume")
    rows = []
    for spec in variants:
        label, name, vargs = parse_variant(spec)
        c = copy.deepcopy(cfg)
        c.model.name = name
        c.model.args = {**(cfg.model.args if _is_dual(name) else {}), **vargs}
        slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
        run = out / slug
        done = run / "summary.json"
        if resume and done.exists() and (run / "eval" / "scalars.json").exists():
            import json

            test = json.loads((run / "eval" / "scalars.json").read_text())
        else:
            s = train(c, run, overwrite=overwrite, resume="auto" if resume else False)
            if "test" not in s:
                raise ValueError(f"{cfg.data.split}: ablation needs a test part in the split")
            test = s["test"]
        model, _ = load_model(run / "best")
        feats = getattr(model, "features", None)
        rows.append({"table": _table_of(name, vargs), "variant": label, "model": name,
                     "F_GS": "✓" if feats and "global" in feats else "", "F_LS": "✓" if feats and "local" in feats else "",
                     "F_Cross": "✓" if feats and "cross" in feats else "",
                     **{f"case_{k}": test.get(f"case_{k}") for k in SCALAR_KEYS},
                     "slice_acc": test.get("slice_acc"), "slice_f1": test.get("slice_f1"),
                     "n_cases": test.get("n_cases"), "params_M": sum(p.numel() for p in model.parameters()) / 1e6})
    keys = list(rows[0])
    _write_rows(out / "ablation.csv", keys, [[r[k] for k in keys] for r in rows])
    md = _markdown(rows, cfg)
    atomic_write(out / "ablation.md", lambda tmp: Path(tmp).write_text(md))
    save_json({"config": config_to_dict(cfg), "variants": variants}, out / "ablation_config.json")
    from glfuse.reports import build_report

    build_report(out)  # report.html: the tables in the paper's layout + every variant's training curves
    return rows


def _markdown(rows: list[dict[str, Any]], cfg: StageConfig) -> str:
    full = [r for r in rows if r["model"] == "vdpf" and r["table"] == "2"]
    titles = {"2": "Table 2 shape — model ablations", "3": "Table 3 shape — feature subsets",
              "4": "Table 4 shape — comparison with other models"}
    parts = [f"# VDPF ablation (case level, test split `{cfg.data.split}`; mean slice softmax per case)\n"]
    for t in ("2", "3", "4"):
        sel = [r for r in rows if r["table"] == t]
        if not sel:
            continue
        sel = sel + [r for r in full if r not in sel]  # the full model closes every table, as in the paper
        parts.append(f"\n## {titles[t]}\n")
        if t == "3":
            hdr = ["F_GS", "F_LS", "F_Cross", "Acc (%)", "F1 (%)", "Prec (%)", "Recall (%)", "slice Acc (%)"]
            lines = [[r["F_GS"], r["F_LS"], r["F_Cross"], *map(_fmt, (r["case_acc"], r["case_f1"], r["case_precision"],
                                                                        r["case_recall"], r["slice_acc"]))] for r in sel]
        else:
            hdr = ["Method", "Acc (%)", "F1 (%)", "Prec (%)", "Recall (%)", "AUC (%)", "slice Acc (%)", "Params (M)"]
            lines = [[r["variant"], *map(_fmt, (r["case_acc"], r["case_f1"], r["case_precision"], r["case_recall"],
                                                r["case_auc"], r["slice_acc"])), f"{r['params_M']:.2f}"] for r in sel]
        parts.append("| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr) + "\n")
        parts.extend("| " + " | ".join(map(str, ln)) + " |\n" for ln in lines)
    return "".join(parts)


# ------------------------------------------------------------------------------------------------------------------ cam
def _branch_cams(model: nn.Module, task: StagingTask, batch: dict[str, torch.Tensor], cls: int
                 ) -> dict[str, np.ndarray]:
    """Grad-CAM (:func:`glfuse.cam.grad_cam`) on ``model.cam_layers()`` for one sample; token maps [B, N, D] are laid
    out on the encoder's grid with ``model.tokens_to_map``."""
    from glfuse.cam import default_cam_layers, grad_cam

    layers = default_cam_layers(model)
    reshape = {n: model.tokens_to_map for n in layers} if hasattr(model, "tokens_to_map") else None
    mask = batch["mask"]
    maps, _ = grad_cam(model, batch["image"], layers, target=cls, reshape=reshape,
                       forward=(lambda m, x: m(x, mask)) if task.dual else None)
    return {n: v[0].numpy() for n, v in maps.items()}


def _save_overlay(image: np.ndarray, heat: np.ndarray, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    from glfuse.cam import overlay

    fig = Figure(figsize=(3.2, 3.4), dpi=120)
    ax = fig.subplots()
    ax.imshow(overlay(image, heat))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def cam(model_dir: str | Path, case: str, out_dir: str | Path, *, cache: SliceCache | str | Path,
        device: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """Grad-CAM of one cached case (see module docstring): ``out_dir/<case>_slice<k>_{global,local}.png`` (heatmap
    over I_G and over I_L = I_G × box mask) + ``<case>_cam.json``. Baselines with ``cam_layers()`` get one map each.
    Existing figures of the case are not replaced unless ``overwrite``."""
    if (Path(out_dir) / f"{case}_cam.json").exists() and not overwrite:
        raise FileExistsError(f"{Path(out_dir) / f'{case}_cam.json'} exists; pass --overwrite to replace it")
    model, mcfg, _ = _load(model_dir, device)
    cache = cache if isinstance(cache, SliceCache) else SliceCache(cache)
    names = list(mcfg.get("class_names") or mcfg["classes"])
    dual = mcfg["input"] == "dual"
    task = StagingTask(len(names), dual, names)
    ds = StagingSliceDataset(cache, [case], crop=mcfg["input"] == "crop", size=int(mcfg["img_size"]))
    if not len(ds):
        raise ValueError(f"case {case} ({cache.dir}): no lesion slices in the cache")
    items = [ds[i] for i in range(len(ds))]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    dev = next(model.parameters()).device
    with torch.no_grad():
        probs = task.predict_step(model, {k: v.to(dev) for k, v in batch.items()})["prob"].cpu()
    cls = int(probs.mean(0).argmax())
    j = int(probs[:, cls].argmax())
    one = {k: v[j: j + 1].to(dev) for k, v in batch.items()}
    maps = _branch_cams(model, task, one, cls)
    out = Path(out_dir)
    s = int(batch["slice"][j])
    img = batch["image"][j, 0].numpy()
    local = img * batch["mask"][j, 0].numpy()
    files = {}
    for name, heat in maps.items():
        base = local if name == "local" else img
        p = out / f"{case}_slice{s}_{name}.png"
        _save_overlay(base, heat, p, f"{case} slice {s}: {name} branch, class {names[cls]}")
        files[name] = str(p)
    from glfuse.cam import save_cam_figure

    fig = out / f"{case}_slice{s}_cam.png"
    save_cam_figure(fig, img, maps, title=f"{case} slice {s}: class {names[cls]} (p={float(probs[j, cls]):.3f})")
    files["figure"] = str(fig)
    info = {"case_id": case, "slice": s, "pred": names[cls], "case_probs": dict(zip(names, map(float, probs.mean(0)))),
            "slice_prob": float(probs[j, cls]), "method": "Grad-CAM (glfuse.cam.grad_cam) on cam_layers() token maps",
            "files": files}
    save_json(info, out / f"{case}_cam.json")
    return info
