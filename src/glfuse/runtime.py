"""Process-level CPU settings that make PyTorch's CPU work faster without changing any result.

``tune_cpu_allocator()`` tells glibc's ``malloc`` to keep freed large blocks in the heap instead of returning them to the
kernel. PyTorch's CPU allocator is plain ``malloc``/``free``, and glibc by default serves every block above 32 MiB with a
fresh ``mmap`` and gives small heap tops back with ``trim``: each training or inference step then re-faults its large
activation tensors page by page (HiFuse-Tiny fwd+bwd, batch 8, 224²: ~490,000 page faults and 1–2 CPU s per step). With
the heap kept, later steps fault no pages. This is the advice PyTorch's own CPU launcher gives
(``python -m torch.backends.xeon.run_cpu``, which preloads jemalloc/tcmalloc for the same reason); we use the allocator
already in the process. Cost: memory freed inside a step is reused by the next step rather than handed back, so the
resident size stays near the step's peak, and a heap fragments where a plain ``mmap`` would not: peak RSS rises by
~0.3 GiB for HiFuse and VDPF training (``benchmarks/``), but far more for some workloads (below).

:func:`glfuse.engine.fit` and :func:`glfuse.engine.evaluate` call it unless told not to (``TrainConfig.tune_allocator``;
the MACTFusion preset turns it off because its training heap fragments: ~10 GiB instead of ~3 GiB peak at batch 4, 256²),
as do :func:`glfuse.fusion.api.fuse_folder` and the benchmarks. Python API users may call it themselves.
Set ``GLFUSE_ALLOCATOR_TUNING=0`` to leave the allocator alone. A no-op (returns ``False``) where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h> mallopt parameters
_M_MMAP_THRESHOLD = -3

_tuned: bool | None = None  # result of the first call (the settings are process-wide)


def tune_cpu_allocator(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed blocks up to ``mmap_threshold`` bytes in glibc's heap and trim it only above ``trim_threshold`` bytes.

    Args:
        mmap_threshold: blocks at least this large still get their own ``mmap`` (and go back to the kernel when freed).
        trim_threshold: free memory at the heap top beyond this many bytes is returned to the kernel.

    Returns:
        ``True`` when the settings are in force (now or from an earlier call), ``False`` when disabled by
        ``GLFUSE_ALLOCATOR_TUNING=0`` or unsupported (not Linux/glibc).
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    if os.environ.get("GLFUSE_ALLOCATOR_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        _tuned = False
        return False
    _tuned = _mallopt({_M_MMAP_THRESHOLD: mmap_threshold, _M_TRIM_THRESHOLD: trim_threshold})
    return _tuned


def _mallopt(settings: dict[int, int]) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc only; musl has no mallopt
        libc.gnu_get_libc_version  # noqa: B018 — raises AttributeError on non-glibc libcs
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = True
    for param, value in settings.items():
        if not 0 < value < 2**31:  # mallopt takes a C int
            raise ValueError(f"allocator setting {value} is out of range (1 … 2**31-1 bytes)")
        ok &= mallopt(param, value) == 1
    return ok
