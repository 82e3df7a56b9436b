"""``glfuse stage``: VDPF lesion staging — prepare, split, train, evaluate, predict, ablate, cam.

Example (LGG stand-in data)::

    glfuse stage prepare --images ../shared/data/lgg-mri --labels ../shared/data/lgg-mri/cases.csv \\
        --label-column grade_code -o cache/lgg
    glfuse stage split cache/lgg -o cache/lgg/split.json --val 0.15 --test 0.2 --seed 0
    glfuse stage train -c vdpf_lgg data.cache=cache/lgg data.split=cache/lgg/split.json -o runs/vdpf
    glfuse stage train -o runs/vdpf --resume                      # continue it (--resume auto: start or continue)
    glfuse stage evaluate runs/vdpf -o runs/vdpf/test               # cache/split: the run's own config
    glfuse stage predict runs/vdpf --volume case/flair.nii.gz --mask case/mask.nii.gz -o case_pred.csv
    glfuse stage predict runs/vdpf --images ../shared/data/lgg-mri --image-name '*flair*' -o runs/vdpf/pred
    glfuse stage prepare --images BRATS --predict-only --image-name FLAIR --mask-name GT_W -o cache/new  # no labels
    glfuse stage ablate -c vdpf_lgg data.cache=... data.split=... --variants vdpf vdpf_cat resnet50 -o runs/ablate
    glfuse stage cam runs/vdpf --cache cache/lgg --case TCGA_CS_4942 -o runs/vdpf/cam
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from glfuse.cli.common import EPILOG, add_common, add_train_args, done_message, progress, train_overrides


def _console():
    from rich.console import Console

    return Console()


def _cfg(args, run_dir: str | None = None):
    from glfuse.config import build_config, config_source
    from glfuse.staging.api import StageConfig

    # resuming (run_dir given): the run's own saved config plus any overrides; otherwise the default preset
    return build_config(StageConfig, config_source(args.config, run_dir, run_dir is not None, "vdpf_lgg"),
                        train_overrides(args))


def _prepare(args) -> int:
    import warnings

    from glfuse.staging.prepare import StagingDataWarning, prepare, summary_table

    con = _console()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StagingDataWarning)
        idx = prepare(args.images, args.labels, args.label_column, args.output, id_column=args.id_column,
                      boxes_csv=args.boxes, image_name=args.image_name, mask_name=args.mask_name, axis=args.axis,
                      size=args.size, dtype=args.dtype, all_slices=args.all_slices,
                      classes=args.classes.split(",") if args.classes else None,
                      cases=args.cases.split(",") if args.cases else None,
                      orientation=None if args.orientation.lower() == "none" else args.orientation.upper(),
                      resample_mask=args.resample_mask, predict_only=args.predict_only, overwrite=args.overwrite,
                      progress=not args.quiet, console=con)
    for w in caught:
        if issubclass(w.category, StagingDataWarning):
            con.print(f"[yellow]warning:[/] {w.message}")
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    con.print(summary_table(idx, title=f"staging cache {args.output}"))
    return 0


def _split(args) -> int:
    from glfuse.staging.prepare import make_split

    doc = make_split(args.cache, args.output, val=args.val, test=args.test, seed=args.seed, k=args.k,
                     overwrite=args.overwrite)
    if doc["kind"] == "kfold":
        sizes = ", ".join(f"fold {i}: {len(f['train'])}/{len(f['val'])}/{len(f['test'])}" for i, f in enumerate(doc["folds"]))
        print(f"{args.output}: {doc['k']}-fold case split (train/val/test cases) {sizes}")
    else:
        print(f"{args.output}: case split train {len(doc['train'])} / val {len(doc['val'])} / test {len(doc['test'])}")
    return 0


def _train(args) -> int:
    from pathlib import Path

    from glfuse.staging.api import train

    cfg = _cfg(args, args.output if args.resume else None)
    s = train(cfg, args.output, resume=args.resume, overwrite=args.overwrite)
    if "test" in s:
        t = s["test"]
        print("test (case level): " + "  ".join(f"{k[5:]} {t[k]:.4f}" for k in ("case_acc", "case_f1", "case_auc")
                                                if isinstance(t.get(k), float)) + f"  -> {Path(args.output) / 'eval'}")
    print(done_message(s, args.output, f"glfuse stage evaluate {args.output} -o {Path(args.output) / 'test'}"))
    return 0


def _evaluate(args) -> int:
    from glfuse.staging.api import evaluate, run_data

    cache, split = args.cache, args.split
    if cache is None:
        cache, split_default = run_data(args.model)
        split = split if split is not None else split_default
    r = evaluate(args.model, cache, split, args.output, part=args.part, fold=args.fold,
                 batch_size=args.batch_size, device=args.device, overwrite=args.overwrite, progress=progress(args))
    print(json.dumps(r["scalars"], indent=2))
    return 0


def _predict_folder(args) -> int:
    from glfuse.staging.api import predict_folder

    if args.volume or args.mask or args.case_id:
        raise ValueError("--images (a folder of cases or a cache) stages every case; do not combine it with --volume, "
                         "--mask or --case-id")
    if not args.output:
        raise ValueError("--images needs -o/--output: the folder for case_predictions.csv and slice_predictions.csv")
    recs = predict_folder(args.model, args.images, args.output, image_name=args.image_name, mask_name=args.mask_name,
                          boxes_csv=args.boxes, batch_size=args.batch_size, device=args.device,
                          overwrite=args.overwrite, progress=not args.quiet)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r["pred"] for r in recs).items()))
    print(f"{len(recs)} case(s) staged ({counts}) -> {args.output}/case_predictions.csv, slice_predictions.csv")
    return 0


def _predict(args) -> int:
    from glfuse.staging.api import predict

    if args.images:
        return _predict_folder(args)
    if args.volume is None:
        raise ValueError("give --volume (one case, with --mask or --boxes) or --images (a folder of cases)")
    if (args.mask is None) == (args.boxes is None):
        raise ValueError("give exactly one of --mask (mask volume) or --boxes (boxes CSV)")
    r = predict(args.model, args.volume, args.mask or args.boxes, args.output, case_id=args.case_id,
                batch_size=args.batch_size, device=args.device, overwrite=args.overwrite)
    probs = ", ".join(f"{k}: {v:.4f}" for k, v in r["probs"].items())
    print(f"case {r['case_id']}: {r['pred']} ({probs}); {len(r['slices'])} lesion slices"
          + (f" -> {args.output}" if args.output else ""))
    return 0


def _ablate(args) -> int:
    from glfuse.staging.api import ablate

    cfg = _cfg(args)
    ablate(args.variants, cfg, args.output, overwrite=args.overwrite, resume=args.resume)
    from pathlib import Path

    print((Path(args.output) / "ablation.md").read_text())
    return 0


def _cam(args) -> int:
    from glfuse.staging.api import cam

    r = cam(args.model, args.case, args.output, cache=args.cache, device=args.device, overwrite=args.overwrite)
    print(f"case {r['case_id']}: slice {r['slice']} (class {r['pred']}, p={r['slice_prob']:.3f}) -> "
          + ", ".join(r["files"].values()))
    return 0




def _geometry_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--orientation", default="RAS",
                   help="reorient volumes before slicing (default RAS; 'none' keeps the stored axes)")
    q.add_argument("--resample-mask", action="store_true",
                   help="resample a mask whose voxel grid differs from its image's (nearest) instead of failing")
    q.add_argument("--predict-only", action="store_true",
                   help="no labels: cache every case for prediction (cannot be split or trained on)")


def _name_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-name", default=None,
                   help="image name in each case folder: exact, without suffix or a glob, e.g. FLAIR, '*flair*' "
                        "(default: the only non-mask volume)")
    p.add_argument("--mask-name", default="mask",
                   help="mask name: exact, without suffix or a glob, e.g. GT_W or GT_W.nii.gz (default mask)")


def add_parser(sub) -> None:
    p = sub.add_parser("stage", help="VDPF lesion staging (prepare, split, train, evaluate, predict, ablate, cam)",
                       description="VDPF lesion staging on 3-D volumes with lesion boxes; case-level predictions.")
    ss = p.add_subparsers(dest="stage_command", metavar="STEP", required=True)
    for add in (_add_prepare, _add_split, _add_train, _add_evaluate, _add_predict, _add_ablate, _add_cam):
        add(ss)


def _add_prepare(ss) -> None:
    q = ss.add_parser("prepare", help="volumes + masks/boxes + labels -> slice cache",
                      description="Preprocess every case folder under --images into a slice cache (lesion slices, "
                                  "224² image + box mask). A case without label is reported and left out; other bad "
                                  "input stops with an error naming the case and file.")
    q.add_argument("--images", required=True, help="folder of case folders (<case_id>/<image> + <mask>)")
    q.add_argument("--labels", default=None, help="CSV with case ids and labels (required unless --predict-only)")
    q.add_argument("--label-column", default=None, help="column of --labels holding the class")
    q.add_argument("--id-column", default="case_id", help="case id column of --labels (default case_id)")
    q.add_argument("--boxes", default=None, help="CSV case_id,slice,x_min,y_min,x_max,y_max instead of mask volumes")
    _name_args(q)
    q.add_argument("--axis", type=int, default=-1,
                   help="axis to slice along after reorientation (RAS: 0 sagittal, 1 coronal, 2 axial; default -1, "
                        "the last)")
    _geometry_args(q)
    q.add_argument("--size", type=int, default=224, help="slice size after resizing (default 224)")
    q.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="cached image dtype")
    q.add_argument("--all-slices", action="store_true", help="also cache slices without lesion")
    q.add_argument("--classes", default=None, help="comma-separated class order (default: sorted label values)")
    q.add_argument("--cases", default=None, help="comma-separated case ids to include (default: all)")
    q.add_argument("-o", "--output", required=True, help="cache folder")
    q.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    add_common(q, device=False)
    q.set_defaults(func=_prepare)


def _add_split(ss) -> None:
    q = ss.add_parser("split", help="seeded stratified case-level split (or k-fold) of a cache",
                      description="Write a split JSON over the cache's cases (never slices), stratified by label.")
    q.add_argument("cache", help="cache folder")
    q.add_argument("-o", "--output", required=True, help="split JSON file")
    q.add_argument("--val", type=float, default=0.15, help="validation fraction (default 0.15)")
    q.add_argument("--test", type=float, default=0.2, help="test fraction (default 0.2; ignored with -k)")
    q.add_argument("-k", type=int, default=None, help="k-fold instead of a hold-out split")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--overwrite", action="store_true", help="replace an existing split file")
    add_common(q, device=False, threads=False)
    q.set_defaults(func=_split)


def _add_train(ss) -> None:
    q = ss.add_parser("train", help="train a staging model (VDPF or a crop baseline)", epilog=EPILOG,
                      description="Train on the split's train cases, keep the best checkpoint by the case-level "
                                  "validation metric, then evaluate it on the test cases (RUN/eval).")
    add_train_args(q, example="vdpf_lgg")
    q.set_defaults(func=_train)


def _add_evaluate(ss) -> None:
    q = ss.add_parser("evaluate", help="case- and slice-level reports of a trained model",
                      description="Evaluate RUN (its best/) or a model folder on a part of a split.")
    q.add_argument("model", help="run folder or model folder")
    q.add_argument("--cache", default=None, help="cache folder (default: the run's data.cache)")
    q.add_argument("--split", default=None,
                   help="split JSON (default: the run's data.split when --cache is not given, else every cached case)")
    q.add_argument("--part", default="test", choices=("train", "val", "test"))
    q.add_argument("--fold", type=int, default=None, help="fold of a k-fold split")
    q.add_argument("-o", "--output", required=True, help="report folder")
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--overwrite", action="store_true", help="replace an existing report")
    add_common(q)
    q.set_defaults(func=_evaluate)


def _add_predict(ss) -> None:
    q = ss.add_parser("predict", help="stage one case (--volume) or a folder of cases (--images)",
                      description="Case class probabilities (mean slice softmax over lesion slices) + per-slice CSV. "
                                  "--images stages every case folder (or a prepared cache) into "
                                  "OUT/case_predictions.csv and OUT/slice_predictions.csv; no labels needed.")
    q.add_argument("model", help="run folder or model folder")
    q.add_argument("--volume", default=None, help="image volume (NIfTI/NRRD file or DICOM folder)")
    q.add_argument("--images", default=None, help="folder of case folders (as for prepare) or a cache folder")
    _name_args(q)
    q.add_argument("--mask", default=None, help="lesion mask volume")
    q.add_argument("--boxes", default=None, help="boxes CSV (case_id,slice,x_min,y_min,x_max,y_max)")
    q.add_argument("--case-id", default=None, help="case id (needed when --boxes holds several cases)")
    q.add_argument("-o", "--output", default=None, help="output CSV (--images: output folder)")
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument("--overwrite", action="store_true", help="replace existing predictions")
    add_common(q)
    q.set_defaults(func=_predict)


def _add_ablate(ss) -> None:
    q = ss.add_parser("ablate", help="train + evaluate several variants on one split; paper-style tables",
                      description="Variants: model names, optionally with args, e.g. vdpf vdpf_cat vdpf_ca vdpf_sc "
                                  "vdpf_resnet 'vdpf:features=global+local' resnet50. Writes ablation.csv/.md.")
    q.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. data.cache=CACHE data.split=SPLIT train.epochs=5")
    q.add_argument("-c", "--config", default=None, help="preset name or YAML path (default vdpf_lgg)")
    q.add_argument("--variants", nargs="+", required=True, help="variant specs")
    q.add_argument("-o", "--output", required=True, help="output folder (one run folder per variant)")
    q.add_argument("--resume", action="store_true", help="reuse finished variants, resume unfinished ones")
    q.add_argument("--overwrite", action="store_true", help="replace existing variant runs")
    add_common(q)
    q.set_defaults(func=_ablate)


def _add_cam(ss) -> None:
    q = ss.add_parser("cam", help="Grad-CAM heatmaps (global and local branch) of a case's top slice",
                      description="Grad-CAM on the per-branch token maps (14x14 at 224²) of the lesion slice with the "
                                  "highest probability for the case's predicted class.")
    q.add_argument("model", help="run folder or model folder")
    q.add_argument("--cache", required=True, help="cache folder holding the case")
    q.add_argument("--case", required=True, help="case id")
    q.add_argument("-o", "--output", required=True, help="output folder")
    q.add_argument("--overwrite", action="store_true", help="replace existing figures")
    add_common(q)
    q.set_defaults(func=_cam)
