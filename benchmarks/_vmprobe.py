"""A fixed reference workload that shows how fast this (shared, virtual) machine is running right now.

Cloud VMs drift: the same forward pass here has taken anywhere between 0.85 and 1.35 s within an hour with nothing else
running, and CPU time drifts with it (noisy neighbours on the shared caches and cores). ``gemm_gflops`` times a fixed
float32 matrix product with the benchmark's thread count, so results taken at different times can be put side by side:
a run measured while the probe is slow was measured on a slow machine.
"""

from __future__ import annotations

import statistics
import time


def gemm_gflops(threads: int, n: int = 1536, reps: int = 7) -> float:
    """Median GFLOP/s of ``reps`` float32 ``n × n × n`` matrix products with ``threads`` intra-op threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up
        rates = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b, out=out)
            rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
        return statistics.median(rates)
    finally:
        torch.set_num_threads(before)
