"""``glfuse classify``: 2-D image classification (HiFuse and baselines).

Sub-commands: ``train`` (preset/YAML + key=value overrides → run folder; ``--resume`` continues a run), ``evaluate``
(report + the paper's table row), ``predict`` (CSV of class probabilities), ``cam`` (Grad-CAM figures) and ``split``
(seeded stratified train/val/test or k-fold CSVs of an image-folder tree).

Examples:
  glfuse classify train -c hifuse_covid_ct data.root=/data/covid-ct -o runs/covid_tiny
  glfuse classify train -o runs/covid_tiny --resume
  glfuse classify evaluate runs/covid_tiny --split test --output runs/covid_tiny/test
  glfuse classify predict runs/covid_tiny scans/ --output preds.csv
  glfuse classify cam runs/covid_tiny img.png --layers local global fusion --output cams/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glfuse.cli.common import EPILOG, add_common, add_train_args, done_message, progress, train_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("classify", help="2-D image classification (HiFuse, baselines): train/evaluate/predict/cam",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = p.add_subparsers(dest="classify_command", metavar="SUBCOMMAND", required=True)

    t = csub.add_parser("train", help="train a classifier from a preset or YAML config", epilog=EPILOG,
                        description="Train from a preset (glfuse/configs/<name>.yaml) or a YAML file, with key=value "
                                    "overrides (e.g. train.epochs=5 model.name=resnet50 data.root=DIR). The resolved "
                                    "config is saved as RUN_DIR/config.yaml; the best model is RUN_DIR/best.")
    add_train_args(t, example="hifuse_covid_ct")
    t.set_defaults(func=cmd_train)

    e = csub.add_parser("evaluate", help="evaluate a trained model: metrics, confusion matrix, table row",
                        description="Writes metrics.json, per_class.csv, confusion_matrix.csv/png, predictions.csv and "
                                    "table.md to --output and prints the paper's row (Acc, F1, Prec, Recall, AUC, "
                                    "params, GFLOPs). Data: the run's own config (--split) or --data.")
    e.add_argument("model", help="run folder (uses best/) or model folder (best/, last/, epoch_N/)")
    e.add_argument("--data", default=None,
                   help="class-folder tree, path,label CSV, or split-file root (with Data-split/); default: the run's "
                        "config")
    e.add_argument("--split", default="test", help="split of the run's config or of a split-file root (default test)")
    e.add_argument("-o", "--output", required=True, help="report folder")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (with a warning)")
    e.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count")
    _window_arg(e)
    e.add_argument("--overwrite", action="store_true", help="replace an existing report")
    add_common(e)
    e.set_defaults(func=cmd_evaluate)

    r = csub.add_parser("predict", help="class probabilities of images → CSV",
                        description="Applies the model's saved eval preprocessing; writes path, pred, pred_name, "
                                    "prob_<class> per image.")
    r.add_argument("model", help="run folder or model folder")
    r.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    r.add_argument("-o", "--output", required=True, help="output CSV")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (with a warning)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    _window_arg(r)
    add_common(r)
    r.set_defaults(func=cmd_predict)

    g = csub.add_parser("cam", help="Grad-CAM figures (HiFuse: local/global/fusion branches)",
                        description="One PNG per image: input | Grad-CAM overlay per layer, for the predicted class "
                                    "(or --target).")
    g.add_argument("model", help="run folder or model folder")
    g.add_argument("inputs", nargs="+", help="image files and/or folders")
    g.add_argument("-o", "--output", required=True, help="output folder")
    g.add_argument("--layers", nargs="+", default=None,
                   help="layer names from the model's cam_layers() (HiFuse: local global fusion); default all")
    g.add_argument("--target", default=None, help="class name or index (default: predicted class)")
    g.add_argument("--overwrite", action="store_true", help="replace existing figures")
    _window_arg(g)
    add_common(g)
    g.set_defaults(func=cmd_cam)

    s = csub.add_parser("split", help="seeded stratified train/val/test (or k-fold) CSVs of a class-folder tree",
                        description="Writes OUTPUT/{train,val,test}.csv (or OUTPUT/fold<i>/{train,val}.csv with "
                                    "--kfold), header path,label, paths relative to OUTPUT; train with data.kind=csv "
                                    "data.root=OUTPUT data.train=train.csv data.val=val.csv data.test=test.csv.")
    s.add_argument("folder", help="image folder with one sub-folder per class")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    s.add_argument("--kfold", type=int, default=None, metavar="K", help="write K stratified folds instead")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace existing split files")
    add_common(s, device=False, threads=False)
    s.set_defaults(func=cmd_split)


def _window_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", default=None, metavar="C,W",
                   help="CT window for DICOM/NIfTI slices: C,W (e.g. 40,400), auto (the DICOM's own tags) or none "
                        "(min-max); default: the window the model was trained with")


def cmd_train(args: argparse.Namespace) -> int:
    from glfuse.classify.api import ClassifyConfig, train
    from glfuse.config import build_config, config_source

    config = config_source(args.config, args.output, bool(args.resume), example="hifuse_covid_ct")
    cfg = build_config(ClassifyConfig, config, train_overrides(args))
    summary = train(cfg, args.output, resume=args.resume, overwrite=args.overwrite)
    print(done_message(summary, args.output, f"glfuse classify evaluate {args.output} -o {Path(args.output) / 'test'}"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from glfuse.classify.api import evaluate

    evaluate(args.model, args.output, data=args.data, split=args.split, batch_size=args.batch_size, device=args.device,
             skip_bad=args.skip_bad, overwrite=args.overwrite, flops=not args.no_flops, progress=progress(args),
             window=args.window)
    print(f"report written to {args.output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from glfuse.classify.api import predict

    rows = predict(args.model, args.inputs, args.output, batch_size=args.batch_size, device=args.device,
                   skip_bad=args.skip_bad, overwrite=args.overwrite, progress=progress(args), window=args.window)
    print(f"{len(rows)} prediction(s) written to {args.output}")
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    from glfuse.classify.api import cam

    target = args.target
    if target is not None and target.isdigit():
        target = int(target)
    outs = cam(args.model, args.inputs, args.output, layers=args.layers, target=target, device=args.device,
               overwrite=args.overwrite, window=args.window)
    print(f"{len(outs)} Grad-CAM figure(s) written to {args.output}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from glfuse.data.images import image_folder
    from glfuse.data.splits import make_kfold, make_splits, write_kfold_csvs, write_split_csvs

    ds = image_folder(args.folder)
    items = [str(p.resolve()) for p in ds.paths]
    labels = [ds.class_names[y] for y in ds.targets]
    if args.kfold:
        folds = make_kfold(items, labels, k=args.kfold, seed=args.seed)
        write_kfold_csvs(folds, args.output, overwrite=args.overwrite)
        print(f"{args.kfold} folds of {len(items)} images written to {args.output}/fold*/")
    else:
        splits = make_splits(items, labels, args.ratios, seed=args.seed)
        write_split_csvs(splits, args.output, overwrite=args.overwrite)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        print(f"split written to {args.output}: {sizes}")
    return 0
