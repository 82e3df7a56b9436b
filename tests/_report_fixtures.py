"""Small output folders of every report type, written with the same functions the commands use (no training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from glfuse.checkpoint import save_json


def _probs(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) + 2.0 * torch.nn.functional.one_hot(y, c)
    return logits.softmax(1), y


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def training_run(run: Path, epochs: int = 4) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    hist = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "lr": 1e-4 * (0.5 ** e), "train_time_s": 1.0,
             "val_acc": 0.5 + 0.1 * e, "val_f1": 0.4 + 0.1 * e, "val_ece": 0.2 - 0.02 * e} for e in range(epochs)]
    save_json(hist, run / "log.json")
    save_json({"epochs_run": epochs, "monitor": "acc", "best_acc": 0.8}, run / "summary.json")
    return run


def classification_eval(folder: Path, classes=("neg", "pos"), n: int = 60, with_run: bool = True) -> Path:
    from glfuse.metrics.bootstrap import bootstrap_cis
    from glfuse.metrics.classification import classification_metrics, save_classification_report

    probs, y = _probs(n, len(classes), 1)
    m = classification_metrics(probs, y, list(classes))
    m["ci"] = bootstrap_cis(probs.numpy(), y.numpy(), n_boot=100)
    m["ci_info"] = {"n_boot": 100, "unit": "images", "seed": 0}
    run = training_run(folder.parent / "run") if with_run else None
    extra = {"arch": "hifuse_tiny", "data": "synthetic [test]", "split": "test", "params": 1_000_000, "gflops": 0.5,
             "flops_input": "3×64×64", "model_dir": str(run / "best") if run else None}
    save_classification_report(m, folder, list(classes), title="t", extra=extra)
    _write_csv(folder / "predictions.csv", ["path", "target", "pred", "pred_name", *[f"prob_{c}" for c in classes]],
               [[f"img{i}.png", int(y[i]), int(probs[i].argmax()), classes[int(probs[i].argmax())],
                 *[f"{float(v):.6f}" for v in probs[i]]] for i in range(n)])
    cam = folder / "cam"
    cam.mkdir(exist_ok=True)
    _png(cam / "00_mistake_img3.png")
    save_json([{"file": "00_mistake_img3.png", "caption": "mistake: img3.png: true neg · predicted pos (p=0.91)",
                "kind": "mistake"}], cam / "index.json")
    return folder


def _png(path: Path, size: int = 32) -> Path:
    from PIL import Image

    arr = (np.linspace(0, 255, size * size).reshape(size, size)).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def staging_eval(folder: Path, n_cases: int = 12, slices: int = 5) -> Path:
    from glfuse.metrics.bootstrap import bootstrap_cis
    from glfuse.metrics.classification import classification_metrics, save_classification_report

    names = ["low", "high"]
    probs, y = _probs(n_cases * slices, 2, 2)
    case = torch.arange(n_cases).repeat_interleave(slices)
    y = y.view(n_cases, slices)[:, :1].expand(-1, slices).reshape(-1)  # one label per case
    cp = probs.view(n_cases, slices, 2).mean(1)
    ct = y.view(n_cases, slices)[:, 0]
    for level, (p, t, g) in {"case": (cp, ct, None), "slice": (probs, y, case.numpy())}.items():
        m = classification_metrics(p, t, names)
        m["ci"] = bootstrap_cis(p.numpy(), t.numpy(), g, n_boot=100)
        m["ci_info"] = {"n_boot": 100, "unit": "cases", "seed": 0}
        save_classification_report(m, folder / level, names, title=level, extra={"arch": "vdpf"})
    _write_csv(folder / "case_predictions.csv", ["case_id", "label", "pred", "prob_low", "prob_high", "n_slices"],
               [[f"case{i}", names[int(ct[i])], names[int(cp[i].argmax())], f"{cp[i, 0]:.4f}", f"{cp[i, 1]:.4f}", slices]
                for i in range(n_cases)])
    _write_csv(folder / "slice_predictions.csv", ["case_id", "slice", "label", "pred", "prob_low", "prob_high"],
               [[f"case{int(case[i])}", i % slices, names[int(y[i])], names[int(probs[i].argmax())],
                 f"{probs[i, 0]:.4f}", f"{probs[i, 1]:.4f}"] for i in range(len(y))])
    return folder


def fusion_compare(folder: Path) -> Path:
    """A ``fuse compare`` folder; method "max" has the best EN and "average" the lowest MSE by construction."""
    folder.mkdir(parents=True, exist_ok=True)
    per = {"average": {"EN": [5.0, 5.2], "MSE": [10.0, 12.0]}, "max": {"EN": [6.0, 6.4], "MSE": [30.0, 34.0]}}
    rows = []
    for label, d in per.items():
        _write_csv(folder / "per_image" / f"{label}.csv", ["image", "EN", "MSE"],
                   [[f"p{i}", d["EN"][i], d["MSE"][i]] for i in range(2)])
        rows.append([label, 2, np.mean(d["EN"]), np.std(d["EN"]), np.mean(d["MSE"]), np.std(d["MSE"])])
        (folder / "fused" / label).mkdir(parents=True, exist_ok=True)
        save_json({"images": [{"name": "p0", "seconds": 0.5}, {"name": "p1", "seconds": 0.7}]},
                  folder / "fused" / label / "fusion.json")
    _write_csv(folder / "compare.csv", ["method", "n", "EN", "EN_std", "MSE", "MSE_std"], rows)
    save_json({"colour": "grey", "conventions": {"en_base": 2.0, "description": {"EN": "entropy"}},
               "methods": {"average": "average", "max": "max"}}, folder / "conventions.json")
    _png(folder / "grid.png", 48)
    return folder


def ablation(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ablation.md").write_text(
        "# VDPF ablation\n\n## Table 2 shape — model ablations\n\n| Method | Acc (%) | F1 (%) |\n|---|---|---|\n"
        "| vdpf-no-cross | 70.00 | 65.00 |\n| vdpf | 80.00 | 75.00 |\n")
    training_run(folder / "vdpf")
    return folder


def classify_compare(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classify_compare.md").write_text(
        "# Model comparison on data [test]\n\nRecipe (all models): 1 epoch(s), input 64².\n\n"
        "| Method | Acc (%) | F1 (%) | Params (M) |\n|---|---|---|---|\n| hifuse_tiny | 70.00 [60.0, 80.0] | 69.00 | 118.1 |\n"
        "| resnet50 | 65.00 [55.0, 75.0] | 64.00 | 23.5 |\n")
    training_run(folder / "hifuse_tiny")
    return folder


def all_reports(root: Path) -> dict[str, Path]:
    """Every report type, built into ``root/<kind>/report.html``; returns the folders."""
    from glfuse.reports import build_report

    folders = {"classification": classification_eval(root / "classification" / "eval"),
               "training": training_run(root / "training"), "staging": staging_eval(root / "staging"),
               "fusion": fusion_compare(root / "fusion"), "ablation": ablation(root / "ablation"),
               "classify_compare": classify_compare(root / "classify_compare")}
    for f in folders.values():
        build_report(f)
    return folders


def read_json(p: Path) -> dict:
    return json.loads(p.read_text())
