"""Shared test fixtures. Tests that need ../shared (real data, golden files) skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLFUSE_SHARED", REPO.parent / "shared"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test when it is not there (a user's fresh clone)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available (../shared is absent)")
    return p


@pytest.fixture
def shared():
    """Fixture form of :func:`shared_path`."""
    return shared_path


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so results do not depend on test order."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
