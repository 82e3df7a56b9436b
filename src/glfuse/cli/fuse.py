"""``glfuse fuse``: multimodal image fusion (MACTFusion and classical baselines) and fusion metrics.

Sub-commands: ``run`` (fuse an image pair or two folders; or two registered volumes — NIfTI/NRRD files or DICOM-series
folders — slice-wise into ``out.nii.gz`` or a DICOM series, see :mod:`glfuse.fusion.volume`),
``convert-official`` (official checkpoint → model folder),
``metrics`` (per-image and mean ± std metrics of any fused folder), ``compare`` (several methods → paper-style table
and an image grid), ``train`` (train from a preset).

Modality convention everywhere: ``--a`` is the MRI, ``--b`` the CT / PET / SPECT image (``--a-is ct`` if reversed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glfuse.cli.common import EPILOG as EXIT_CODES_EPILOG
from glfuse.cli.common import add_common, add_train_args, done_message, progress, train_overrides
from glfuse.data.volume_io import DEFAULT_NORM

EPILOG = ("--a is the MRI, --b the CT/PET/SPECT image. Grey pairs (CT-MRI) enter the network as vis = MRI, ir = CT; "
          "a colour PET/SPECT image enters as its BT.601 Y (vis) with the MRI as ir, and its Cb/Cr are put back. "
          "Outputs: grey for grey pairs, RGB for colour pairs, 8-bit = rint(clip(x,0,1)*255).")


def _volume_args(r: argparse.ArgumentParser) -> None:
    v = r.add_argument_group("volumes", "3-D fusion of two registered volumes (NIfTI/NRRD files or DICOM-series folders; "
                                        "chosen automatically for volume inputs or a .nii/.nii.gz output)")
    v.add_argument("--volume", action="store_true", help="treat --a/--b as volumes (e.g. two DICOM-series folders)")
    v.add_argument("--format", choices=("nifti", "dicom"), default=None,
                   help="volume output: nifti (-o out.nii.gz, the MRI's affine/header) or dicom (-o FOLDER, a new "
                        "series); default from -o")
    v.add_argument("--axis", type=int, default=2, help="RAS axis to fuse slices along: 0 sagittal, 1 coronal, "
                                                       "2 axial (default)")
    v.add_argument("--batch-size", type=int, default=8, help="slices per batch (default 8)")
    v.add_argument("--resample", action="store_true",
                   help="resample --b onto the MRI grid when the volume grids differ (else an error)")
    v.add_argument("--a-norm", default=DEFAULT_NORM,
                   help=f"intensity normalisation of --a: percentile:LO,HI | window:C,W | minmax (default {DEFAULT_NORM})")
    v.add_argument("--b-norm", default=DEFAULT_NORM,
                   help="intensity normalisation of --b, e.g. window:40,400 for a CT brain window (default "
                        f"{DEFAULT_NORM})")


def _add_run_parser(fsub) -> None:
    r = fsub.add_parser("run", help="fuse an image pair or two folders of pairs", description=EPILOG)
    r.add_argument("--model", required=True,
                   help="model folder (convert-official / training output), registered name with --weights, or a "
                        "classical method: average, max, laplacian, dwt")
    r.add_argument("--weights", default=None, help="with a registered --model name: model folder, .safetensors or "
                                                   "official .pth")
    r.add_argument("--a", required=True, help="MRI image or folder")
    r.add_argument("--b", required=True, help="CT / PET / SPECT image or folder (same file names as --a)")
    r.add_argument("-o", "--output", required=True,
                   help="output folder (volumes: out.nii.gz, or a folder for --format dicom)")
    r.add_argument("--a-is", default="mri", help="modality of --a: mri (default) or ct/pet/spect (then --b is the MRI)")
    r.add_argument("--resize", action="store_true", help="resize --b to --a's size when they differ (else an error)")
    r.add_argument("--overwrite", action="store_true", help="replace existing output images")
    r.add_argument("--resume", action="store_true",
                   help="continue a run stopped part-way: keep the complete outputs, fuse the missing ones")
    r.add_argument("--strict-inputs", action="store_true",
                   help="fail instead of repairing inputs (NaN/inf set to 0, middle slice of a 3-D NIfTI)")
    r.add_argument("--slice", type=int, default=None, dest="slice_index",
                   help="slice of 3-D NIfTI inputs (last axis; default the middle one, with a warning) or DICOM frame")
    r.add_argument("--minmax", action="store_true",
                   help="official test.py saving (min-max stretch, truncation); only to reproduce official files")
    r.add_argument("--ext", default=".png", help="output extension (default .png)")
    r.add_argument("--allow-unmatched", action="store_true",
                   help="warn about (and skip) names without a partner instead of failing")
    add_common(r)
    _volume_args(r)
    r.set_defaults(func=cmd_run)


def add_parser(sub) -> None:
    p = sub.add_parser("fuse", help="multimodal image fusion (MACTFusion, classical) and fusion metrics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = p.add_subparsers(dest="fuse_command", metavar="SUBCOMMAND", required=True)

    _add_run_parser(fsub)

    c = fsub.add_parser("convert-official", help="convert an official checkpoint into a glfuse model folder",
                        description="load_official + save_model (model.safetensors + config.json with the fusion "
                                    "preprocessing recorded); the folder then fuses with `glfuse fuse run --model DIR`.")
    c.add_argument("path", help="official checkpoint, e.g. fusion_model_CTMRI.pth")
    c.add_argument("out_dir", help="output model folder")
    c.add_argument("--arch", default="mactfusion", help="registered architecture (default mactfusion)")
    c.add_argument("--vis", default="MRI", help="modality the checkpoint takes as vis (default MRI)")
    c.add_argument("--ir", default="CT", help="modality the checkpoint takes as ir (default CT)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    add_common(c, device=False, threads=False)
    c.set_defaults(func=cmd_convert)

    m = fsub.add_parser("metrics", help="fusion metrics of a folder of fused images (any method)",
                        description="Per-image metrics (CSV) and mean ± std (rich table, CSV, Markdown) of fused "
                                    "images against their two sources, matched by file name. Colour images are "
                                    "evaluated on their BT.601 Y channel; the conventions are written to the outputs.")
    m.add_argument("--fused", required=True, help="folder of fused images")
    m.add_argument("--a", required=True, help="first source folder (e.g. MRI)")
    m.add_argument("--b", required=True, help="second source folder (e.g. CT)")
    m.add_argument("-o", "--output", default=None, help="output folder (default: <fused>/metrics)")
    m.add_argument("--metrics", default=None, help="comma-separated subset (default all)")
    m.add_argument("--reference", action="store_true",
                   help="use the CDDFuse reference evaluator's conventions (PSNR peak = max F, SSIM data_range 2)")
    m.add_argument("--allow-unmatched", action="store_true", help="skip (and list) names not in all three folders")
    m.add_argument("--overwrite", action="store_true", help="replace an existing metrics report in the output folder")
    add_common(m, device=False)
    m.set_defaults(func=cmd_metrics)

    k = fsub.add_parser("compare", help="compare fusion methods: table (CSV + Markdown) and image grid",
                        description="Fuse --a/--b with each method, evaluate, and write compare.csv, compare.md "
                                    "(rows = methods, columns = metrics, mean ± std), per-image CSVs and grid.png. "
                                    + EPILOG)
    k.add_argument("--a", required=True, help="MRI folder")
    k.add_argument("--b", required=True, help="CT / PET / SPECT folder")
    k.add_argument("--methods", required=True,
                   help="comma-separated METHOD or LABEL=METHOD; METHOD = average|max|laplacian|dwt, a model folder, "
                        "or fused:DIR (already fused images). E.g. mactfusion=runs/official,average,max,laplacian,dwt")
    k.add_argument("-o", "--output", required=True, help="output folder")
    k.add_argument("--a-is", default="mri", help="modality of --a (default mri)")
    k.add_argument("--metrics", default=None, help="comma-separated subset (default all)")
    k.add_argument("--reference", action="store_true", help="CDDFuse reference conventions (see `metrics --help`)")
    k.add_argument("--grid-pairs", type=int, default=3, help="pairs shown in grid.png (default 3; 0 = none)")
    k.add_argument("--overwrite", action="store_true", help="re-fuse and replace existing fused images")
    k.add_argument("--reuse", action="store_true", help="reuse a method's complete existing fused folder")
    k.add_argument("--resize", action="store_true", help="resize --b to --a's size when they differ")
    add_common(k)
    k.set_defaults(func=cmd_compare)

    t = fsub.add_parser("train", help="train a fusion network from a preset", epilog=EXIT_CODES_EPILOG,
                        description="Train with a preset (e.g. mactfusion_ct_mri) and key=value overrides, e.g. "
                                    "data.crop=128 train.epochs=1 train.max_steps_per_epoch=50.")
    add_train_args(t, example="mactfusion_ct_mri")
    t.set_defaults(func=cmd_train)


def _volume_mode(args: argparse.Namespace) -> bool:
    """Volume fusion when asked (--volume/--format), for a .nii/.nii.gz output, or when an input is a 3-D NIfTI, an NRRD
    or a DICOM-series folder."""
    from glfuse.data.volume_io import is_dicom_series, is_volume_file

    if args.volume or args.format or str(args.output).lower().endswith((".nii", ".nii.gz")):
        return True
    for p in map(Path, (args.a, args.b)):
        if p.is_dir() and is_dicom_series(p):
            return True
        if p.is_file() and is_volume_file(p):
            if p.name.lower().endswith((".nrrd", ".nhdr")):
                return True
            import nibabel as nib

            try:
                shape = nib.load(str(p)).shape
            except Exception:  # noqa: BLE001 - the 2-D reader reports unreadable files
                return False
            if sum(n > 1 for n in shape) >= 3:
                return True
    return False


def _run_volume(args: argparse.Namespace) -> int:
    from rich.console import Console

    from glfuse.fusion.volume import fuse_volumes, record_path

    rec = fuse_volumes(args.model, args.a, args.b, args.output, a_is=args.a_is, weights=args.weights, fmt=args.format,
                       axis=args.axis, batch_size=args.batch_size, resample=args.resample, a_norm=args.a_norm,
                       b_norm=args.b_norm, overwrite=args.overwrite, progress=progress(args), device=args.device)
    Console(stderr=True).print(f"fused volume {tuple(rec['mri']['shape'])} ({rec['format']}"
                               f"{', resampled' if rec['resampled'] else ''}) into {args.output}; record "
                               f"{record_path(args.output)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from glfuse.fusion.api import fuse_folder

    if _volume_mode(args):
        return _run_volume(args)
    recs = fuse_folder(args.model, args.a, args.b, args.output, a_is=args.a_is, weights=args.weights,
                       resize=args.resize, overwrite=args.overwrite, minmax=args.minmax, ext=args.ext,
                       allow_unmatched=args.allow_unmatched, resume=args.resume, strict_inputs=args.strict_inputs,
                       slice_index=args.slice_index, device=args.device, progress=progress(args))
    n_col = sum(r.get("colour", False) for r in recs)
    kept = sum("skipped" in r for r in recs)
    Console(stderr=True).print(f"fused {len(recs) - kept} pair(s) ({n_col} colour) into {args.output}"
                               + (f"; kept {kept} existing" if kept else ""))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import hashlib

    from glfuse.checkpoint import WEIGHTS_NAME, save_model
    from glfuse.registry import load_official

    src = Path(args.path)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: checkpoint file not found")
    out = Path(args.out_dir)
    if (out / WEIGHTS_NAME).exists() and not args.overwrite:
        raise FileExistsError(f"{out / WEIGHTS_NAME} exists; pass --overwrite to replace it")
    model = load_official(args.arch, src)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    n_params = sum(p.numel() for p in model.parameters())
    extra = {
        "task": "fusion",
        "fusion": {
            "vis": args.vis, "ir": args.ir,
            "input": "forward(vis_y, ir), [B,1,H,W] in [0,1]; vis_y = BT.601 Y of the vis image (grey: Y of 3 grey "
                     "channels, as the official loader), ir = grey",
            "colour": "RGB->YCbCr BT.601 (correct RGB order); fused Y replaces Y; the colour source's Cb/Cr are put back",
            "output": "raw fused Y (LeakyReLU output, may leave [0,1]); saved as rint(clip(x,0,1)*255)",
            "any_size": "the model reflect-pads H, W to a multiple of 8 and crops back",
        },
        "source": {"official_checkpoint": src.name, "sha256": sha, "params": n_params},
    }
    save_model(model, out, extra=extra, overwrite=True)
    print(f"converted {src} -> {out} ({args.arch}, {n_params:,} parameters; vis = {args.vis}, ir = {args.ir})")
    return 0


def _conventions(reference: bool) -> dict:
    if not reference:
        return {}
    from glfuse.metrics.fusion import REFERENCE_CONVENTIONS

    return dict(REFERENCE_CONVENTIONS)


def _metric_list(s: str | None) -> list[str] | None:
    return None if not s else [x.strip() for x in s.split(",") if x.strip()]


def cmd_metrics(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from glfuse.fusion.compare import COLOUR_NOTE, _fmt, evaluate_fused_folder, metric_output_paths, write_metric_outputs

    out = Path(args.output) if args.output else Path(args.fused) / "metrics"
    metric_output_paths(out, overwrite=args.overwrite)  # before any work
    rows, summary = evaluate_fused_folder(args.fused, args.a, args.b, metrics=_metric_list(args.metrics),
                                          strict=not args.allow_unmatched, **_conventions(args.reference))
    paths = write_metric_outputs(out, rows, summary, title="Fusion metrics",
                                 sources={"fused": args.fused, "A": args.a, "B": args.b}, overwrite=args.overwrite)
    table = Table(title=f"fusion metrics: {args.fused} ({summary['n']} images)", caption=COLOUR_NOTE)
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("std", justify="right")
    for k in summary["mean"]:
        table.add_row(k, _fmt(summary["mean"][k]), _fmt(summary["std"][k]))
    con = Console()
    con.print(table)
    con.print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from glfuse.fusion.compare import COLOUR_NOTE, _fmt, compare_methods, parse_methods

    res = compare_methods(args.a, args.b, parse_methods(args.methods), args.output, a_is=args.a_is,
                          metrics=_metric_list(args.metrics), overwrite=args.overwrite, reuse=args.reuse,
                          resize=args.resize, grid_pairs=args.grid_pairs, device=args.device, progress=progress(args),
                          **_conventions(args.reference))
    results = res["results"]
    names = list(next(iter(results.values()))["mean"])
    # metrics as rows, methods as columns: ~16 metrics do not fit across an 80-column terminal, a few methods do
    table = Table(title=f"fusion comparison (mean over {next(iter(results.values()))['n']} pairs; * = best)",
                  caption=COLOUR_NOTE)
    table.add_column("metric")
    for label in results:
        table.add_column(label, justify="right", overflow="fold")
    for k in names:
        vals = [results[label]["mean"][k] for label in results]
        best = _best_index(k, vals)
        table.add_row(k, *[_fmt(v, 3) + ("*" if i == best else "") for i, v in enumerate(vals)])
    con = Console()
    con.print(table)
    report = Path(args.output) / "report.html"
    con.print(f"written: {res['table_csv']}, {res['table_md']}" + (f", {res['grid']}" if res["grid"] else "")
              + (f"\nreport: {report}" if report.is_file() else ""))
    return 0


def _best_index(metric: str, values: list[float]) -> int | None:
    """Index of the best finite value (lower is better for the error-like metrics, higher for the rest)."""
    import math

    from glfuse.reports.builders import LOWER_IS_BETTER

    lower = metric in LOWER_IS_BETTER
    finite = [(v, i) for i, v in enumerate(values) if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return None
    return (min(finite) if lower else max(finite))[1]


def cmd_train(args: argparse.Namespace) -> int:
    from glfuse.config import build_config, config_source
    from glfuse.fusion.train import FusionConfig, train

    config = config_source(args.config, args.output, bool(args.resume), example="mactfusion_ct_mri")
    cfg = build_config(FusionConfig, config, train_overrides(args))
    summary = train(cfg, args.output, resume=args.resume, overwrite=args.overwrite)
    a, b = cfg.data.vis, cfg.data.ir
    print(done_message(summary, args.output, f"glfuse fuse run --model {Path(args.output) / 'best'} --a {a}_DIR --b "
                                            f"{b}_DIR -o fused/"))
    return 0
