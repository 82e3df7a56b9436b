"""glfuse.runtime: the glibc allocator tuning really stops large tensors from re-faulting their pages."""

import os
import subprocess
import sys

import pytest

_PROBE = r"""
import resource, torch, glfuse.runtime as rt
print(rt.tune_cpu_allocator(), flush=True)
def step():  # a training step in miniature: activations of 36-64 MiB (all above glibc's 32 MiB mmap limit) kept, then freed
    acts = [torch.empty(n << 18) for n in (40, 48, 64, 36)]
    for a in acts:
        a.fill_(1.0)
    del acts
for _ in range(5):  # warm-up: let the heap settle
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def _probe(tuning: str) -> tuple[str, int]:
    env = {**os.environ, "GLFUSE_ALLOCATOR_TUNING": tuning, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator tuning is Linux-only")
def test_tuning_removes_page_faults_of_large_tensors():
    on, faults_on = _probe("1")
    if on == "False":
        pytest.skip("libc is not glibc")
    off, faults_off = _probe("0")
    assert (on, off) == ("True", "False")
    pages_per_step = (40 + 48 + 64 + 36) << 8  # 4 KiB pages
    assert faults_off > 5 * pages_per_step * 0.9  # default glibc: every block is a fresh mmap, faulted page by page
    assert faults_on < faults_off / 4  # kept heap: ≤ one step re-faults (heap placement varies with ASLR), mostly none


def test_out_of_range_setting_is_an_error(monkeypatch):
    import glfuse.runtime as rt

    monkeypatch.setattr(rt, "_tuned", None)
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux-only")
    with pytest.raises(ValueError, match="out of range"):
        rt.tune_cpu_allocator(mmap_threshold=4 << 30)
