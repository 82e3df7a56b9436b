"""VDPF lesion staging: volumes + lesion boxes + case labels -> slice cache -> case-level staging.

``prepare`` (cache), ``make_split`` (case-level splits), ``StageConfig`` / ``train`` / ``evaluate`` / ``predict`` /
``ablate`` / ``cam`` (see :mod:`glfuse.staging.api`); CLI ``glfuse stage``.
"""

from glfuse.staging.api import StageConfig, ablate, cam, evaluate, predict, train
from glfuse.staging.prepare import make_split, prepare

__all__ = ["StageConfig", "ablate", "cam", "evaluate", "make_split", "predict", "prepare", "train"]
