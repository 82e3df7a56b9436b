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
pairs; :func:`glfuse.fusion.io.save_image` writes it with the 8-bit rule ``rint(clip(x,0,1)·255)``.
``clamp=False`` returns the raw network output (the fused Y may leave [0, 1]; the official net ends in LeakyReLU).

``model`` may be an ``nn.Module`` taking ``(vis_y, ir)`` as ``[B,1,H,W]``; a saved model folder
(``model.safetensors`` + ``config.json``, e.g. from ``glfuse fuse convert-official`` or training); a registered name
with ``weights=`` (a model folder, a ``.safetensors`` file, or an official ``.pth`` converted on the fly); or a
classical method name (``average``, ``max``, ``laplacian``, ``dwt``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glfuse.fusion.io import (
    pair_folders,
    read_pair,
    resize_to,
    rgb_to_y,
    rgb_to_ycbcr,
    save_image,
    ycbcr_to_rgb,
)

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


def load_fusion_model(model: Any, *, weights: str | Path | None = None, device: str | torch.device = "cpu") -> Fuser:
    """Resolve ``model`` (see module docstring) into a :class:`Fuser`.

    Examples: ``load_fusion_model("runs/mact/best")``, ``load_fusion_model("mactfusion", weights="fusion_model_CTMRI.pth")``,
    ``load_fusion_model("laplacian")``, ``load_fusion_model(my_module)``.
    """
    from glfuse.checkpoint import CONFIG_NAME, load_config, load_model
    from glfuse.registry import create_model, is_model, load_official, read_state_dict

    if isinstance(model, Fuser):
        return model
    if isinstance(model, nn.Module):
        model = model.to(device)
        name = getattr(model, "glfuse_cfg", {}).get("arch", type(model).__name__)
        return Fuser(name, "network", _network_fn(model), model, dict(getattr(model, "glfuse_cfg", {})))
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be an nn.Module, a model folder, a registered name or a method name, got {model!r}")
    spec = str(model)
    if spec in CLASSICAL_METHODS:
        if weights is not None:
            raise ValueError(f"classical method {spec!r} takes no weights")
        return Fuser(spec, "classical", _classical_fn(spec))
    path = Path(spec)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: not a glfuse model folder (no {CONFIG_NAME}; convert an official "
                                    f"checkpoint with `glfuse fuse convert-official`)")
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


def _grey_y(g: np.ndarray) -> np.ndarray:
    # Y of the grey image replicated to 3 channels: what the official code fed the network for a grey "vis" file
    return rgb_to_y(np.repeat(g[..., None], 3, axis=-1))


def fuse_images(
    model: Any,
    a: Any,
    b: Any,
    *,
    a_is: str = "mri",
    weights: str | Path | None = None,
    clamp: bool = True,
    resize: bool = False,
) -> np.ndarray:
    """Fuse one registered pair. ``a`` = MRI, ``b`` = CT/PET/SPECT (see module docstring for the mapping).

    Args:
        model: ``nn.Module``, model folder, registered name (+ ``weights``), classical method name or a :class:`Fuser`.
        a, b: numpy arrays or tensors, ``HxW`` grey or ``HxWx3`` RGB (float in [0, 1], or uint8/uint16).
        a_is: modality of ``a``: ``"mri"`` (default) or ``"ct"``/``"pet"``/``"spect"``/``"other"`` (then ``b`` is the MRI).
        clamp: clip the result to [0, 1] (default); False returns the raw network output.
        resize: resize ``b`` to ``a``'s size if they differ (otherwise an error).

    Returns float32 ``HxW`` (grey pair) or ``HxWx3`` RGB (a colour source).
    """
    fuser = load_fusion_model(model, weights=weights)
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
    fy = fuser.fuse_y(_grey_y(mri), oth)
    return np.clip(fy, 0, 1).astype(np.float32) if clamp else fy.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------- folders
def _pairs_for(a: str | Path, b: str | Path, allow_unmatched: bool) -> list[tuple[str, Path, Path]]:
    from glfuse.fusion.io import image_stem

    a, b = Path(a), Path(b)
    if a.is_file() and b.is_file():
        return [(image_stem(a), a, b)]
    if a.is_dir() and b.is_dir():
        return pair_folders(a, b, allow_unmatched=allow_unmatched)
    for p in (a, b):
        if not p.exists():
            raise FileNotFoundError(f"{p}: not found")
    raise ValueError(f"--a {a} and --b {b} must both be image files or both be folders")


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
    minmax: bool = False,
    ext: str = ".png",
    allow_unmatched: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Fuse every same-named pair of folders ``a`` (MRI) and ``b`` (CT/PET/SPECT) — or two single files — into
    ``out_dir/<name><ext>``. Grey pairs give grey files, colour pairs RGB; 8-bit rule ``rint(clip(x,0,1)·255)``
    (``minmax=True``: the official stretch, for reproducing official files only).

    Existing outputs are never replaced unless ``overwrite=True`` (checked for all pairs before anything runs).
    Returns one record per pair (name, sources, output, colour, seconds). A ``fusion.json`` describing the run (model,
    mapping, saving rule) is written next to the images.
    """
    import time

    from glfuse.checkpoint import save_json
    from glfuse.engine import progress_bar
    from glfuse.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # inference only: no fragmentation cost here (see glfuse.runtime)
    fuser = load_fusion_model(model, weights=weights)
    pairs = _pairs_for(a, b, allow_unmatched)
    out_dir = Path(out_dir)
    if not ext.startswith("."):
        ext = "." + ext
    targets = [out_dir / f"{stem}{ext}" for stem, _, _ in pairs]
    existing = [t.name for t in targets if t.exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" … (+{len(existing) - 5} more)" if len(existing) > 5 else "")
        raise FileExistsError(f"{out_dir}: {len(existing)} output(s) exist already ({shown}); pass --overwrite "
                              f"(overwrite=True) to replace them")
    key = a_is.lower()
    if key not in MRI_NAMES + OTHER_NAMES:
        raise ValueError(f"a_is must be one of {MRI_NAMES + OTHER_NAMES}, got {a_is!r}")
    a_mri = key in MRI_NAMES
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        job = bar.add_task("fuse " + fuser.name, total=len(pairs), info="")
        for (stem, pa, pb), target in zip(pairs, targets):
            (a_arr, a_col), (b_arr, b_col) = read_pair(pa, pb, resize=resize)
            mri, oth = ((a_arr, a_col), (b_arr, b_col)) if a_mri else ((b_arr, b_col), (a_arr, a_col))
            t0 = time.perf_counter()
            fused = _fuse_mapped(fuser, mri[0], mri[1], oth[0], oth[1], clamp=False)
            dt = time.perf_counter() - t0
            save_image(target, fused, minmax=minmax)
            records.append({"name": stem, "a": str(pa), "b": str(pb), "output": str(target),
                            "colour": bool(fused.ndim == 3), "seconds": round(dt, 4)})
            bar.update(job, advance=1, info=f"{stem}  {dt:.2f}s")
    save_json({
        "model": fuser.name, "kind": fuser.kind,
        "model_config": {k: v for k, v in fuser.config.items() if k in ("arch", "model_args", "fusion", "source")},
        "a": str(a), "b": str(b), "a_is": a_is,
        "mapping": "grey pair: vis_y = MRI (as Y of 3 grey channels), ir = other; colour pair: vis_y = BT.601 Y of the "
                   "colour image, ir = MRI, Cb/Cr of the colour image put back (spec decision 3)",
        "saving": "minmax stretch over the image, x255, truncate (official test.py rule)" if minmax
        else "uint8 = rint(clip(x, 0, 1) * 255); grey pairs saved grey, colour pairs RGB",
        "resize": resize, "images": records,
    }, out_dir / "fusion.json")
    if not records:
        warnings.warn(f"no pairs fused into {out_dir}", stacklevel=2)
    return records
