"""Fusion API: fuse one registered pair (:func:`fuse_images`) or two folders (:func:`fuse_folder`) with a network or a
classical method.

Modality convention (spec decision 3). The API speaks in friendly names: ``a`` is the **MRI**, ``b`` the other
modality (CT, PET or SPECT) — pass ``a_is="ct"`` (or ``"pet"``/``"spect"``/``"other"``) if your first image is the
other modality instead. Internally the pair is mapped to the official network order ``model(vis_y, ir)``:

* both grey (CT–MRI): ``vis_y`` = MRI, ``ir`` = CT (the order the official CT–MRI checkpoint was trained with);
  output grey.
* one colour (PET/SPECT–MRI): ``vis_y`` = BT.601 Y of the colour image, ``ir`` = MRI; the fused Y replaces Y, the
  colour image's Cb/Cr are put back and the result is converted to RGB (correct R-G-B order); output RGB.
* a colour "MRI" (rare) is treated the same way with the roles of the two images swapped (its Cb/Cr are kept).
  When both are colour, the non-MRI image keeps its colour and the MRI enters as its Y channel.

Grey inputs enter as ``Y(g, g, g)`` (float32), exactly what the official code computed from a grey file read as
3 channels (it differs from ``g`` by at most one float32 step).

The returned image is float32 in [0, 1] (``clamp=True``, default), ``HxW`` for grey pairs and ``HxWx3`` for colour
pairs; :func:`glfuse.data.image_io.save_image` writes it with the 8-bit rule ``rint(clip(x,0,1)·255)``.
``clamp=False`` returns the raw network output (the fused Y may leave [0, 1]; the official net ends in LeakyReLU).

``model`` may be an ``nn.Module`` taking ``(vis_y, ir)`` as ``[B,1,H,W]``; a saved model folder
(``model.safetensors`` + ``config.json``, e.g. from ``glfuse fuse convert-official`` or training); a registered name
with ``weights=`` (a model folder, a ``.safetensors`` file, or an official ``.pth`` converted on the fly); or a
classical method name (``average``, ``max``, ``laplacian``, ``dwt``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glfuse.data.color import rgb_to_y, rgb_to_ycbcr, to_y, ycbcr_to_rgb
from glfuse.data.image_io import image_stem, pair_folders, read_pair, resize_to, save_image

__all__ = ["CLASSICAL_METHODS", "MRI_NAMES", "OTHER_NAMES", "Fuser", "fuse_folder", "fuse_images", "load_fusion_model"]

CLASSICAL_METHODS = ("average", "max", "laplacian", "dwt")
MRI_NAMES = ("mri", "mr", "t1", "t2", "flair")
OTHER_NAMES = ("ct", "pet", "spect", "other")


# --------------------------------------------------------------------------------------------------------- the fuser
@dataclass
class Fuser:
    """A loaded fusion method: ``fuse_y(vis_y, ir)`` on float32 ``HxW`` arrays in [0, 1] → fused Y (float32 ``HxW``)."""

    name: str
    kind: str  # "network" | "classical"
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    module: nn.Module | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def fuse_y(self, vis_y: np.ndarray, ir: np.ndarray) -> np.ndarray:
        return self.fn(vis_y, ir)

    @property
    def vis_is_mri(self) -> bool:
        """Whether the network's first input (``vis``) is the MRI, as recorded when it was trained or converted
        (``config.json`` ``fusion.vis``; MRI when nothing is recorded, as in the official CT/PET/SPECT–MRI models)."""
        vis = str(self.config.get("fusion", {}).get("vis", "MRI")).lower()
        return vis in MRI_NAMES


def _network_fn(model: nn.Module) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from glfuse.models import prepare_inference

    prepare_inference(model, "fast")  # eval mode + the CPU-inference variants (in place; "reference" undoes it)
    channels_last = any(p.is_contiguous(memory_format=torch.channels_last) and p.ndim == 4 and p.shape[-1] > 1
                        for p in model.parameters())

    def run(vis_y: np.ndarray, ir: np.ndarray) -> np.ndarray:
        try:
            p = next(model.parameters())
            device, dtype = p.device, p.dtype
        except StopIteration:
            device, dtype = torch.device("cpu"), torch.float32
        v = torch.from_numpy(np.ascontiguousarray(vis_y, dtype=np.float32))[None, None].to(device, dtype)
        i = torch.from_numpy(np.ascontiguousarray(ir, dtype=np.float32))[None, None].to(device, dtype)
        if channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
            i = i.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = model(v, i)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.float().cpu()
        if out.ndim != 4 or out.shape[:2] != (1, 1):
            raise ValueError(f"fusion model returned shape {tuple(out.shape)}; expected [1, 1, H, W]")
        return out[0, 0].numpy().astype(np.float32)

    return run


def _classical_fn(method: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from glfuse.fusion import classical

    table = getattr(classical, "CLASSICAL", None)
    if isinstance(table, dict) and callable(table.get(method)):
        f = table[method]
        return lambda v, i: np.asarray(f(v, i), dtype=np.float32)
    if hasattr(classical, "fuse"):
        return lambda v, i: np.asarray(classical.fuse(v, i, method=method), dtype=np.float32)
    raise RuntimeError("glfuse.fusion.classical provides neither CLASSICAL[method] nor fuse(a, b, method=)")


def load_fusion_model(model: Any, *, weights: str | Path | None = None,
                      device: str | torch.device | None = None) -> Fuser:
    """Resolve ``model`` (see module docstring) into a :class:`Fuser`.

    ``device``: where a loaded network runs (``None``/``"auto"``: CUDA when available, else CPU). A caller's
    ``nn.Module`` stays where it is unless ``device`` is given explicitly.

    Examples: ``load_fusion_model("runs/mact/best")``, ``load_fusion_model("mactfusion", weights="fusion_model_CTMRI.pth")``,
    ``load_fusion_model("laplacian")``, ``load_fusion_model(my_module)``.
    """
    from glfuse.checkpoint import load_config, load_model
    from glfuse.engine import get_device
    from glfuse.registry import create_model, is_model, load_official, read_state_dict
    from glfuse.runs import open_model_dir

    if isinstance(model, Fuser):
        return model
    if isinstance(model, nn.Module):
        # a caller's module is never changed: inference runs on a prepared copy (same device and dtype unless
        # ``device`` is given), so the caller can go on training it
        import copy

        net = copy.deepcopy(model)
        if device is not None and device != "auto":
            net = net.to(device)
        name = getattr(model, "glfuse_cfg", {}).get("arch", type(model).__name__)
        return Fuser(name, "network", _network_fn(net), net, dict(getattr(model, "glfuse_cfg", {})))
    device = get_device("auto" if device is None else str(device))
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be an nn.Module, a model folder, a registered name or a method name, got {model!r}")
    spec = str(model)
    if spec in CLASSICAL_METHODS:
        if weights is not None:
            raise ValueError(f"classical method {spec!r} takes no weights")
        return Fuser(spec, "classical", _classical_fn(spec))
    path = Path(spec)
    if path.is_dir():
        try:
            path, _ = open_model_dir(path, "fusion")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} (convert an official checkpoint with `glfuse fuse convert-official`)") from e
        net, cfg = load_model(path, map_location="cpu")
        net = net.to(device)
        return Fuser(cfg.get("arch", path.name), "network", _network_fn(net), net, cfg)
    if is_model(spec):
        if weights is None:
            raise ValueError(f"model {spec!r} needs weights: a model folder, a .safetensors file or an official "
                             f".pth checkpoint (e.g. --model DIR from `glfuse fuse convert-official`)")
        w = Path(weights)
        if w.is_dir():
            cfg = load_config(w)
            if cfg["arch"] != spec:
                raise ValueError(f"{w}: holds a {cfg['arch']!r} model, not {spec!r}")
            return load_fusion_model(w, device=device)
        if not w.is_file():
            raise FileNotFoundError(f"{w}: weights not found")
        if w.suffix == ".safetensors":
            net = create_model(spec)
            net.load_state_dict(read_state_dict(w), strict=True)
        else:
            net = load_official(spec, w)
        net = net.to(device).eval()
        return Fuser(spec, "network", _network_fn(net), net, dict(net.glfuse_cfg))
    if path.suffix in (".pth", ".pt", ".safetensors", ".bin"):
        raise ValueError(f"{path}: a checkpoint file needs the architecture name: load_fusion_model('mactfusion', "
                         f"weights='{path}'), or convert it with `glfuse fuse convert-official {path} OUT_DIR`")
    raise ValueError(f"unknown fusion model {spec!r}: not a model folder, a registered model or one of "
                     f"{', '.join(CLASSICAL_METHODS)}")


# ---------------------------------------------------------------------------------------------------- array handling
def _as_image(x: Any, name: str) -> tuple[np.ndarray, bool]:
    """numpy/tensor (HxW, HxWx1, HxWx3; tensors also 1xHxW / 3xHxW) → (float32 [0, 1], is_colour)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(x)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(f"{name}: expected an HxW grey or HxWx3 RGB image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255)
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / np.float32(65535)
    elif arr.dtype == bool:
        arr = arr.astype(np.float32)
    else:
        arr = arr.astype(np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: image contains NaN or inf")
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{name}: float image values must be in [0, 1] (got {lo:.4g}…{hi:.4g}); "
                             f"scale it or pass uint8")
        arr = np.clip(arr, 0, 1)
    colour = arr.ndim == 3
    if colour and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr, colour = np.ascontiguousarray(arr[..., 0]), False
    return arr, colour


def fuse_images(
    model: Any,
    a: Any,
    b: Any,
    *,
    a_is: str = "mri",
    weights: str | Path | None = None,
    clamp: bool = True,
    resize: bool = False,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Fuse one registered pair. ``a`` = MRI, ``b`` = CT/PET/SPECT (see module docstring for the mapping).

    Args:
        model: ``nn.Module``, model folder, registered name (+ ``weights``), classical method name or a :class:`Fuser`.
        a, b: numpy arrays or tensors, ``HxW`` grey or ``HxWx3`` RGB (float in [0, 1], or uint8/uint16).
        a_is: modality of ``a``: ``"mri"`` (default) or ``"ct"``/``"pet"``/``"spect"``/``"other"`` (then ``b`` is the MRI).
        clamp: clip the result to [0, 1] (default); False returns the raw network output.
        resize: resize ``b`` to ``a``'s size if they differ (otherwise an error).
        device: where a loaded network runs (default: CUDA when available); a given ``nn.Module`` is not moved.

    Returns float32 ``HxW`` (grey pair) or ``HxWx3`` RGB (a colour source).
    """
    fuser = load_fusion_model(model, weights=weights, device=device)
    a_arr, a_col = _as_image(a, "a")
    b_arr, b_col = _as_image(b, "b")
    if a_arr.shape[:2] != b_arr.shape[:2]:
        if not resize:
            raise ValueError(f"image sizes differ: a is {a_arr.shape[:2]}, b is {b_arr.shape[:2]} (pass resize=True)")
        b_arr = resize_to(b_arr, a_arr.shape[:2])
    key = a_is.lower()
    if key in MRI_NAMES:
        (mri, mri_col), (oth, oth_col) = (a_arr, a_col), (b_arr, b_col)
    elif key in OTHER_NAMES:
        (mri, mri_col), (oth, oth_col) = (b_arr, b_col), (a_arr, a_col)
    else:
        raise ValueError(f"a_is must be one of {MRI_NAMES + OTHER_NAMES}, got {a_is!r}")
    return _fuse_mapped(fuser, mri, mri_col, oth, oth_col, clamp=clamp)


def _fuse_mapped(fuser: Fuser, mri: np.ndarray, mri_col: bool, oth: np.ndarray, oth_col: bool, *,
                 clamp: bool) -> np.ndarray:
    if oth_col or mri_col:
        colour_src, grey_src = (oth, mri) if oth_col else (mri, oth)
        y, cb, cr = rgb_to_ycbcr(colour_src)
        ir = rgb_to_y(grey_src) if grey_src.ndim == 3 else grey_src
        fy = fuser.fuse_y(y, ir)
        rgb = ycbcr_to_rgb(fy, cb, cr)
        return np.clip(rgb, 0, 1).astype(np.float32) if clamp else rgb
    # grey pair: the modality the network was trained to take as vis goes first (recorded in its config.json);
    # a grey vis enters as Y(g, g, g), as in training
    vis, ir = (mri, oth) if fuser.vis_is_mri else (oth, mri)
    fy = fuser.fuse_y(to_y(vis), ir)
    return np.clip(fy, 0, 1).astype(np.float32) if clamp else fy.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------- folders
def _pairs_for(a: str | Path, b: str | Path, allow_unmatched: bool) -> list[tuple[str, Path, Path]]:
    a, b = Path(a), Path(b)
    if a.is_file() and b.is_file():
        return [(image_stem(a), a, b)]
    if a.is_dir() and b.is_dir():
        return pair_folders(a, b, allow_unmatched=allow_unmatched)
    for p in (a, b):
        if not p.exists():
            raise FileNotFoundError(f"{p}: not found")
    raise ValueError(f"--a {a} and --b {b} must both be image files or both be folders")


def _plan_outputs(pairs: list[tuple[str, Path, Path]], out_dir: Path, ext: str, *, overwrite: bool,
                  resume: bool) -> tuple[list[Path], set[str]]:
    """Output paths of ``pairs`` and the stems to skip (``resume``: outputs that exist and decode completely)."""
    from glfuse.data.image_io import check_image

    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other (resume keeps finished outputs, overwrite "
                         "replaces them)")
    targets = [out_dir / f"{stem}{ext}" for stem, _, _ in pairs]
    existing = [t for t in targets if t.exists()]
    if existing and not (overwrite or resume):
        shown = ", ".join(t.name for t in existing[:5]) + (f" … (+{len(existing) - 5} more)" if len(existing) > 5 else "")
        raise FileExistsError(f"{out_dir}: {len(existing)} output(s) exist already ({shown}); pass --resume to keep "
                              f"them and fuse the rest, or --overwrite (overwrite=True) to replace them")
    done = {t.name[: -len(ext)] for t in existing if resume and check_image(t) is None}
    return targets, done


def _write_record(out_dir: Path, fuser: Fuser, head: dict[str, Any], records: list[dict[str, Any]],
                  error: BaseException | None = None) -> None:
    from glfuse.files import save_json

    doc = {
        "model": fuser.name, "kind": fuser.kind,
        "model_config": {k: v for k, v in fuser.config.items() if k in ("arch", "model_args", "fusion", "source")},
        **head,
        "mapping": "grey pair: vis_y = MRI (as Y of 3 grey channels), ir = other; colour pair: vis_y = BT.601 Y of the "
                   "colour image, ir = MRI, Cb/Cr of the colour image put back (spec decision 3)",
        "saving": "minmax stretch over the image, x255, truncate (official test.py rule)" if head["minmax"]
        else "uint8 = rint(clip(x, 0, 1) * 255); grey pairs saved grey, colour pairs RGB",
        "complete": error is None, "images": records,
    }
    if error is not None:
        doc["error"] = " ".join(str(error).split()) or type(error).__name__
    save_json(doc, out_dir / "fusion.json")


def _fuse_one(fuser: Fuser, pa: Path, pb: Path, target: Path, a_mri: bool, read_kw: dict[str, Any],
              minmax: bool) -> dict[str, Any]:
    import time

    ra, rb = read_pair(pa, pb, **read_kw)
    mri, oth = (ra, rb) if a_mri else (rb, ra)
    t0 = time.perf_counter()
    fused = _fuse_mapped(fuser, mri[0], mri[1], oth[0], oth[1], clamp=False)
    dt = time.perf_counter() - t0
    save_image(target, fused, minmax=minmax)
    rec: dict[str, Any] = {"a": str(pa), "b": str(pb), "output": str(target), "colour": bool(fused.ndim == 3),
                           "seconds": round(dt, 4)}
    notes = {k: [n["what"] for n in r.notes] for k, r in (("a", ra), ("b", rb)) if r.notes}
    if notes:
        rec["input_notes"] = notes  # how the inputs were changed on reading (stretch, NaN repaired, slice taken)
    return rec


def fuse_folder(
    model: Any,
    a: str | Path,
    b: str | Path,
    out_dir: str | Path,
    *,
    a_is: str = "mri",
    weights: str | Path | None = None,
    resize: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    minmax: bool = False,
    ext: str = ".png",
    allow_unmatched: bool = False,
    strict_inputs: bool = False,
    slice_index: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """Fuse every same-named pair of folders ``a`` (MRI) and ``b`` (CT/PET/SPECT) — or two single files — into
    ``out_dir/<name><ext>``. Grey pairs give grey files, colour pairs RGB; 8-bit rule ``rint(clip(x,0,1)·255)``
    (``minmax=True``: the official stretch, for reproducing official files only).

    Existing outputs are never replaced unless ``overwrite=True`` (checked for all pairs before anything runs);
    ``resume=True`` keeps the outputs that exist and decode completely and fuses the rest (a run stopped part-way).
    Inputs changed on reading (NaN/inf set to 0, the middle slice of a 3-D NIfTI, min–max stretch) are warned about
    and recorded per image in ``fusion.json`` (``input_notes``); ``strict_inputs=True`` makes the repairs errors,
    ``slice_index`` picks the NIfTI slice / DICOM frame. ``fusion.json`` (model, mapping, saving rule, one record per
    pair) is written next to the images — also when a pair fails, then with ``"complete": false`` and the error.
    Returns the records of this call's pairs (name, sources, output, colour, seconds; ``skipped`` for kept outputs).
    """
    from glfuse.engine import progress_bar
    from glfuse.files import make_dir
    from glfuse.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # inference only: no fragmentation cost here (see glfuse.runtime)
    key = a_is.lower()
    if key not in MRI_NAMES + OTHER_NAMES:
        raise ValueError(f"a_is must be one of {MRI_NAMES + OTHER_NAMES}, got {a_is!r}")
    fuser = load_fusion_model(model, weights=weights, device=device)
    pairs = _pairs_for(a, b, allow_unmatched)
    out_dir = Path(out_dir)
    ext = ext if ext.startswith(".") else "." + ext
    targets, done = _plan_outputs(pairs, out_dir, ext, overwrite=overwrite, resume=resume)
    read_kw = {"resize": resize, "strict": strict_inputs, "slice_index": slice_index}
    head = {"a": str(a), "b": str(b), "a_is": a_is, "resize": resize, "minmax": minmax, "strict_inputs": strict_inputs,
            "slice_index": slice_index}
    make_dir(out_dir)
    records: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        job = bar.add_task("fuse " + fuser.name, total=len(pairs), info="")
        for (stem, pa, pb), target in zip(pairs, targets):
            if stem in done:
                records.append({"name": stem, "a": str(pa), "b": str(pb), "output": str(target),
                                "skipped": "existing complete output kept (resume)"})
            else:
                try:
                    rec = _fuse_one(fuser, pa, pb, target, key in MRI_NAMES, read_kw, minmax)
                except BaseException as e:
                    with contextlib.suppress(Exception):  # the record must not hide the error (e.g. disk full)
                        _write_record(out_dir, fuser, head, records, error=e)
                    raise
                records.append({"name": stem, **rec})
            bar.update(job, advance=1, info=f"{stem}  {records[-1].get('seconds', 0):.2f}s")
    _write_record(out_dir, fuser, head, records)
    if not records:
        warnings.warn(f"no pairs fused into {out_dir}", stacklevel=2)
    return records
