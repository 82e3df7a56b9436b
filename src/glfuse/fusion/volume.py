"""3-D fusion: fuse two registered volumes slice by slice and write a NIfTI volume or a DICOM series.

Pipeline (:func:`fuse_volumes`):

1. Both volumes are read with :func:`glfuse.data.volume_io.load_volume` (NIfTI, NRRD or DICOM-series folder) and
   reoriented to RAS. The **MRI** volume (``a`` unless ``a_is`` says otherwise) is the reference grid. Volumes whose
   grids differ are an error naming both files, unless ``resample=True``: the other volume is then resampled onto the
   MRI's grid (MONAI ``ResampleToMatch``, bilinear).
2. Each volume is scaled to [0, 1] with its own normalisation (:func:`glfuse.data.volume_io.normalise`):
   ``percentile:0.5,99.5`` by default for both; e.g. ``window:40,400`` for a CT brain window or ``window:C,W`` in SUV
   for PET. The rule used is recorded.
3. Slices along the RAS ``axis`` (default 2: axial) are taken in the radiological view (the orientation of the 2-D
   training images) and fused in batches of ``batch_size`` with the 2-D fusion core (:mod:`glfuse.fusion.api`: a
   network gets ``vis_y`` = Y of the grey MRI, ``ir`` = the other modality; a classical method runs slice by slice);
   the output is clipped to [0, 1].
4. The fused volume is written on the MRI's grid: NIfTI with the MRI file's own affine (and header when it is NIfTI),
   or a DICOM series (:func:`glfuse.data.volume_write.save_dicom_series_like`). A record ``<output>.fusion.json``
   (sources, geometry, normalisation, model, format, intensity rule) is written next to it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glfuse.data.color import to_y
from glfuse.data.volume_io import (
    DEFAULT_NORM,
    Volume,
    check_same_geometry,
    display_slice,
    from_display_slice,
    geometry_mismatch,
    load_volume,
    normalise,
    resample_to,
)
from glfuse.fusion.api import MRI_NAMES, OTHER_NAMES, Fuser, load_fusion_model

__all__ = ["fuse_volume_arrays", "fuse_volumes", "output_format", "record_path"]


def output_format(output: str | Path, fmt: str | None = None) -> str:
    """``"nifti"`` or ``"dicom"`` from ``fmt`` or the output name (``.nii``/``.nii.gz`` -> nifti, a name without
    extension -> a DICOM-series folder, anything else an error)."""
    if fmt is not None:
        f = fmt.lower()
        if f not in ("nifti", "dicom"):
            raise ValueError(f"output format must be nifti or dicom, got {fmt!r}")
        if f == "nifti" and not str(output).lower().endswith((".nii", ".nii.gz")):
            raise ValueError(f"{output}: a NIfTI output must end in .nii or .nii.gz")
        return f
    if str(output).lower().endswith((".nii", ".nii.gz")):
        return "nifti"
    if Path(output).suffix and not Path(output).is_dir():
        raise ValueError(f"{output}: a fused volume is written as .nii/.nii.gz or as a DICOM series into a folder "
                         f"(a name without extension, or --format dicom)")
    return "dicom"


def record_path(output: str | Path) -> Path:
    """Where the run record goes: ``<output without .nii/.nii.gz>.fusion.json`` beside the output."""
    out = Path(output)
    name = out.name
    for s in (".nii.gz", ".nii"):
        if name.lower().endswith(s):
            name = name[: -len(s)]
    return out.with_name(name + ".fusion.json")


def _fuse_batch(fuser: Fuser, mri: np.ndarray, oth: np.ndarray) -> np.ndarray:
    """[B, H, W] MRI and other-modality slices in [0, 1] -> fused [B, H, W] (network batched; classical per slice).
    The network takes first (vis) the modality it was trained with there (``Fuser.vis_is_mri``)."""
    if not fuser.vis_is_mri:
        mri, oth = oth, mri
    vis = np.stack([to_y(m) for m in mri])
    if fuser.module is None:
        return np.stack([fuser.fuse_y(v, o) for v, o in zip(vis, oth)]).astype(np.float32)
    net = fuser.module
    p = next(net.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    v = torch.from_numpy(vis)[:, None].to(device, dtype)
    i = torch.from_numpy(np.ascontiguousarray(oth, dtype=np.float32))[:, None].to(device, dtype)
    with torch.inference_mode():
        out = net(v, i)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim != 4 or out.shape[1] != 1 or out.shape[0] != len(vis):
        raise ValueError(f"fusion model returned shape {tuple(out.shape)}; expected [{len(vis)}, 1, H, W]")
    return out[:, 0].float().cpu().numpy()


def fuse_volume_arrays(fuser: Fuser, mri: np.ndarray, other: np.ndarray, *, axis: int = 2, batch_size: int = 8,
                       progress: bool = True) -> np.ndarray:
    """Fuse two [0, 1] RAS volumes of one shape slice-wise along ``axis`` -> fused volume (float32, [0, 1])."""
    from glfuse.engine import progress_bar

    if mri.shape != other.shape:
        raise ValueError(f"volume shapes differ: {mri.shape} vs {other.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ax = axis % 3
    n = mri.shape[ax]
    out = np.zeros(mri.shape, np.float32)
    with progress_bar(progress) as bar:
        job = bar.add_task("fuse volume " + fuser.name, total=n, info="")
        for s in range(0, n, batch_size):
            ks = range(s, min(n, s + batch_size))
            a = np.stack([display_slice(np.take(mri, k, axis=ax)) for k in ks])
            b = np.stack([display_slice(np.take(other, k, axis=ax)) for k in ks])
            fused = np.clip(_fuse_batch(fuser, a, b), 0, 1)
            for j, k in enumerate(ks):
                idx = [slice(None)] * 3
                idx[ax] = k
                out[tuple(idx)] = from_display_slice(fused[j])
            bar.update(job, advance=len(ks), info=f"slices {ks.start}-{ks.stop - 1}")
    return out


def _geometry(v: Volume) -> dict[str, Any]:
    return {"file": str(v.source), "kind": v.kind, "shape": list(v.shape), "spacing_mm": [round(x, 6) for x in v.spacing],
            "affine_ras": np.round(v.affine, 6).tolist(), "source_affine": np.round(v.source_affine, 6).tolist()}


def _load_pair(a: str | Path, b: str | Path, a_is: str, resample: bool) -> tuple[Volume, Volume, str | None]:
    key = a_is.lower()
    if key not in MRI_NAMES + OTHER_NAMES:
        raise ValueError(f"a_is must be one of {MRI_NAMES + OTHER_NAMES}, got {a_is!r}")
    va, vb = load_volume(a), load_volume(b)
    mri, oth = (va, vb) if key in MRI_NAMES else (vb, va)
    why = geometry_mismatch(mri, oth)
    if why and not resample:
        check_same_geometry(mri, oth, hint="register the volumes or pass --resample (resample=True) to resample the "
                                           "other volume onto the MRI grid")
    if why:
        oth = resample_to(oth, mri, mode="bilinear")
    return mri, oth, why


def fuse_volumes(model: Any, a: str | Path, b: str | Path, output: str | Path, *, a_is: str = "mri",
                 weights: str | Path | None = None, fmt: str | None = None, axis: int = 2, batch_size: int = 8,
                 resample: bool = False, a_norm: str = DEFAULT_NORM, b_norm: str = DEFAULT_NORM,
                 overwrite: bool = False, progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Fuse the registered volumes ``a`` (MRI) and ``b`` (CT/PET/SPECT) into ``output`` (see module docstring).

    Args:
        model: fusion model folder, registered name (+ ``weights``), classical method name, ``nn.Module`` or Fuser.
        a, b: NIfTI / NRRD files or DICOM-series folders.
        output: ``.nii``/``.nii.gz`` file, or a folder for a DICOM series.
        fmt: ``"nifti"`` / ``"dicom"`` (default: from ``output``).
        axis: RAS axis to slice along (0 sagittal, 1 coronal, 2 axial).
        resample: resample the other volume onto the MRI grid when the grids differ (else an error).
        a_norm, b_norm: intensity normalisation of ``a`` / ``b`` (``percentile:LO,HI``, ``window:C,W``, ``minmax``).

    Returns the record written to ``<output>.fusion.json``.
    """
    from glfuse.checkpoint import save_json
    from glfuse.data.volume_write import DICOM_RESCALE, save_dicom_series_like, save_nifti_like

    out = Path(output)
    kind = output_format(out, fmt)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2 (RAS), got {axis}")
    fuser = load_fusion_model(model, weights=weights, device=device)
    a_mri = a_is.lower() in MRI_NAMES
    mri, oth, why = _load_pair(a, b, a_is, resample)
    norms = (a_norm, b_norm) if a_mri else (b_norm, a_norm)
    t0 = time.perf_counter()
    fused = fuse_volume_arrays(fuser, normalise(mri.array, norms[0], name=str(mri.source)),
                               normalise(oth.array, norms[1], name=str(oth.source)), axis=axis,
                               batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    desc = f"glfuse fusion {fuser.name} (MRI {mri.source.name} + {oth.source.name})"
    if kind == "nifti":
        save_nifti_like(fused, mri, out, overwrite=overwrite)
    else:
        save_dicom_series_like(fused, mri, out, axis=axis, description=desc, overwrite=overwrite)
    rec = {
        "output": str(out), "format": kind, "model": fuser.name, "kind": fuser.kind, "a": str(a), "b": str(b),
        "a_is": a_is, "reference": "MRI grid and affine", "mri": _geometry(mri), "other": _geometry(oth),
        "resampled": bool(why), "geometry_difference": why,
        "normalisation": {"a": a_norm, "b": b_norm, "rule": "percentile:LO,HI clip at the volume's percentiles then "
                          "scale to [0,1]; window:C,W clip((x-(C-W/2))/W, 0, 1); minmax"},
        "slicing": {"axis_ras": axis % 3, "view": "radiological (plane[::-1, ::-1].T)", "batch_size": batch_size},
        "intensity": "fused values clipped to [0, 1]; NIfTI float32" if kind == "nifti" else DICOM_RESCALE,
        "seconds": round(seconds, 3),
    }
    save_json(rec, record_path(out))
    return rec
