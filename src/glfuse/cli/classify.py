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
    for add in (_add_train, _add_evaluate, _add_compare, _add_predict, _add_cam, _add_split):
        add(csub)


def _add_train(csub) -> None:
    t = csub.add_parser("train", help="train a classifier from a preset or YAML config", epilog=EPILOG,
                        description="Train from a preset (glfuse/configs/<name>.yaml) or a YAML file, with key=value "
                                    "overrides (e.g. train.epochs=5 model.name=resnet50 data.root=DIR). The resolved "
                                    "config is saved as RUN_DIR/config.yaml; the best model is RUN_DIR/best.")
    add_train_args(t, example="hifuse_covid_ct")
    t.set_defaults(func=cmd_train)


def _model_inputs(p: argparse.ArgumentParser, output: str, *, images: bool = True) -> None:
    """``MODEL [INPUTS...] -o OUTPUT`` of the commands that apply a trained classifier."""
    p.add_argument("model", help="run folder (uses best/) or model folder (best/, last/, epoch_N/)")
    if images:
        p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help=output)


def _add_evaluate(csub) -> None:
    e = csub.add_parser("evaluate", help="evaluate a trained model: metrics, confusion matrix, table row",
                        description="Writes report.html, metrics.json (with bootstrap 95%% CIs), per_class.csv, "
                                    "confusion_matrix.csv/png, predictions.csv, cam/ and table.md to --output and "
                                    "prints the paper's row (Acc, F1, Prec, Recall, AUC, "
                                    "params, GFLOPs). Data: the run's own config (--split) or --data.")
    _model_inputs(e, "report folder", images=False)
    e.add_argument("--data", default=None,
                   help="class-folder tree, path,label CSV, or split-file root (with Data-split/); default: the run's "
                        "config")
    e.add_argument("--split", default="test", help="split of the run's config or of a split-file root (default test)")
    e.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count")
    e.add_argument("--calibrate", action="store_true",
                   help="fit temperature scaling on the run's val split first; stored in the model's config.json and "
                        "applied by evaluate and predict from then on")
    e.add_argument("--cams", type=int, default=6, help="Grad-CAMs of the most confident mistakes (default 6; 0 = none)")
    e.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (default 1000)")
    e.add_argument("--positive-class", default=None,
                   help="binary tasks: class whose sensitivity/specificity are reported (default: the second class)")
    _apply_args(e, "replace an existing report")
    e.set_defaults(func=cmd_evaluate)


def _add_compare(csub) -> None:
    m = csub.add_parser("compare", help="train + evaluate several models on one dataset: the HiFuse Table 5 shape",
                        description="Trains every --models entry with the same config (preset/YAML + key=value "
                                    "overrides, e.g. train.epochs=2 data.img_size=64 train.max_steps_per_epoch=20 for a "
                                    "short CPU recipe, stated in the table's caption), evaluates each on the test split "
                                    "and writes classify_compare.csv/.md (Acc/F1/Prec/Recall with 95%% CIs, params, "
                                    "FLOPs, train and inference throughput) and report.html.")
    m.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (anywhere on the line)")
    m.add_argument("--models", required=True, help="comma-separated registered models, e.g. "
                                                    "hifuse_tiny,resnet50,vit_base_patch16_224,efficientnet_b0")
    m.add_argument("-c", "--config", default="hifuse_covid_ct", help="preset name or YAML path")
    m.add_argument("-o", "--output", required=True, help="output folder (one run folder per model inside)")
    m.add_argument("--reuse", action="store_true", help="keep models already trained in --output")
    m.add_argument("--overwrite", action="store_true", help="retrain and replace everything in --output")
    add_common(m)
    m.set_defaults(func=cmd_compare)


def _add_predict(csub) -> None:
    r = csub.add_parser("predict", help="class probabilities of images → CSV",
                        description="Applies the model's saved eval preprocessing; writes path, pred, pred_name, "
                                    "prob_<class> per image.")
    _model_inputs(r, "output CSV")
    _apply_args(r, "replace an existing CSV")
    r.set_defaults(func=cmd_predict)


def _add_cam(csub) -> None:
    g = csub.add_parser("cam", help="Grad-CAM figures (HiFuse: local/global/fusion branches)",
                        description="One PNG per image: input | Grad-CAM overlay per layer, for the predicted class "
                                    "(or --target).")
    _model_inputs(g, "output folder")
    g.add_argument("--layers", nargs="+", default=None,
                   help="layer names from the model's cam_layers() (HiFuse: local global fusion); default all")
    g.add_argument("--target", default=None, help="class name or index (default: predicted class)")
    _apply_args(g, "replace existing figures", batch=False)
    g.set_defaults(func=cmd_cam)


def _add_split(csub) -> None:
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


def _apply_args(p: argparse.ArgumentParser, overwrite_help: str, *, batch: bool = True) -> None:
    """Flags of every command that applies a model to images: batch size, bad files, CT window, overwrite, common."""
    if batch:
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (with a warning)")
    _window_arg(p)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    add_common(p)


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
             window=args.window, calibrate=args.calibrate, cams=args.cams, n_boot=args.n_boot,
             positive_class=args.positive_class)
    print(f"report written to {Path(args.output) / 'report.html'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from glfuse.classify.api import ClassifyConfig
    from glfuse.classify.compare import compare_models
    from glfuse.config import build_config

    cfg = build_config(ClassifyConfig, args.config, train_overrides(args))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    compare_models(models, cfg, args.output, overwrite=args.overwrite, reuse=args.reuse)
    print((Path(args.output) / "classify_compare.md").read_text())
    print(f"report: {Path(args.output) / 'report.html'}")
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
