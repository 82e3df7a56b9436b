"""The one CLI grammar every system's sub-commands share.

Flags, with the same meaning everywhere they appear:

===================  =====================================================================================
``-c/--config``      preset name or YAML file (``train``, ``ablate``); with ``--resume`` the run's own config.yaml
``KEY=VALUE``        config overrides, accepted anywhere on the line (also after ``-o``)
``-o/--output``      where results go (run folder, report folder, CSV, ...)
``--resume [auto]``  continue the run in ``--output``; ``auto``: continue it if it was started, else start it (the
                     same command line then works for a first start and for ``torchrun --max-restarts``)
``--overwrite``      replace existing outputs (never done without it)
``--device``         ``auto`` (CUDA when available) | ``cpu`` | ``cuda`` | ``cuda:N``
``--threads N``      torch CPU threads
``--quiet``          no progress bars or progress lines
``--debug``          full tracebacks instead of one-line errors
===================  =====================================================================================

Exit codes (:data:`EXIT_CODES`): 0 success, 1 a runtime failure (bad input, missing file, existing output, ...: one line
naming the cause), 2 a usage error (unknown flag, missing argument: argparse's message), 130 interrupted.
"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = {EXIT_OK: "success", EXIT_FAILURE: "runtime failure (one-line error naming the cause)",
              EXIT_USAGE: "usage error (bad or missing arguments)", EXIT_INTERRUPTED: "interrupted (Ctrl-C)"}
EPILOG = "exit codes: " + ", ".join(f"{k} {v}" for k, v in EXIT_CODES.items())


class ResumeAction(argparse.Action):
    """``--resume`` (True) or ``--resume auto`` ("auto"). A ``key=value`` right after ``--resume`` is an override."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value is None:
            setattr(namespace, self.dest, True)
        elif value == "auto":
            setattr(namespace, self.dest, "auto")
        elif "=" in value:  # kept apart: argparse assigns the positional overrides after the options
            setattr(namespace, self.dest, True)
            namespace.resume_overrides = [*(getattr(namespace, "resume_overrides", None) or []), value]
        else:
            parser.error(f"--resume takes no folder (got {value!r}): name the run with -o/--output, and use "
                         "`--resume` or `--resume auto`")


def add_common(p: argparse.ArgumentParser, *, device: bool = True, threads: bool = True) -> None:
    """``--device``, ``--threads``, ``--quiet``, ``--debug`` (every leaf command that computes)."""
    if device:
        p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    if threads:
        p.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def add_train_args(p: argparse.ArgumentParser, *, example: str) -> None:
    """The ``train`` grammar: ``-c``, overrides, ``-o`` (required), ``--resume [auto]``, ``--overwrite`` + common."""
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.epochs=5 (allowed anywhere on the line)")
    p.add_argument("-c", "--config", default=None,
                   help=f"preset name or YAML path (e.g. {example}; with --resume: the run's config.yaml)")
    p.add_argument("-o", "--output", required=True, help="run folder")
    p.add_argument("--resume", nargs="?", action=ResumeAction, default=False, metavar="auto",
                   help="continue the run in --output; 'auto': continue it if started, else start it")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --output and start again")
    add_common(p)


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of a ``train`` command plus what its flags imply (``--device``, ``--quiet``)."""
    out = [*(getattr(args, "resume_overrides", None) or []), *(getattr(args, "overrides", None) or [])]
    if getattr(args, "device", "auto") != "auto":
        out.append(f"train.device={args.device}")
    if getattr(args, "quiet", False):
        out.append("train.progress=false")
    return out


def apply_runtime(args: argparse.Namespace) -> None:
    """Process-wide effects of the common flags: ``--threads``."""
    n = getattr(args, "threads", None)
    if n:
        import torch

        torch.set_num_threads(n)


def progress(args: Any) -> bool:
    """Whether a command shows progress (not ``--quiet``)."""
    return not getattr(args, "quiet", False)


def done_message(summary: dict[str, Any], run_dir: str, next_cmd: str) -> str:
    """The closing lines of every ``train``: epochs, best monitored value, where the model is, what to run next."""
    from pathlib import Path

    monitor = summary.get("monitor", "")
    best = summary.get(f"best_{monitor}")
    best_s = "-" if best is None else f"{best:.4f}"
    return (f"done: {summary.get('epochs_run', 0)} epoch(s); best val {monitor} = {best_s}; "
            f"model in {Path(run_dir) / 'best'}\nnext: {next_cmd}")
