"""One run lifecycle for every system's ``train``: start, resume, overwrite, lock, distributed, model folders.

A *run folder* holds ``config.yaml``, ``last/`` (weights + training state of the last completed epoch), ``best/``,
optional ``epoch_N/``, logs and system extras (``split.json``, ``eval/``). :func:`open_run` decides, in one place and with
one policy for classification, staging and fusion, what a ``train`` command may do with it:

========================  ==================================  ==========================================
folder holds              ``resume=False``                    ``resume=True``       ``resume="auto"``
========================  ==================================  ==========================================
nothing / no folder       start                               error: nothing to resume   start
an unstarted run [#]_     start (leftovers cleared)           error: nothing to resume   start
a started run             error, unless ``overwrite``         resume                     resume
========================  ==================================  ==========================================

.. [#] a run that wrote its ``config.yaml`` but never completed an epoch (no ``last/training_state.pt``): it is not a
   run, so a plain rerun of the same command starts it, instead of asking for ``--resume`` then ``--overwrite``.

``overwrite=True`` deletes exactly the run's own outputs (:data:`RUN_OUTPUTS`), never other files, and refuses a
non-empty folder that holds no glfuse run. ``resume`` and ``overwrite`` exclude each other. ``resume="auto"`` makes one
command line right both for a first start and for a ``torchrun --max-restarts`` restart.

Distributed runs: :func:`open_run` sets up the process group (``glfuse.engine.setup_distributed``) *before* any file is
looked at; only rank 0 takes the lock, deletes or writes; every rank then agrees on the decision (a barrier plus a
broadcast of rank 0's verdict), so no rank ever acts on a folder another rank is changing.

Concurrency: rank 0 holds an exclusive ``fcntl`` lock on ``RUN/.lock`` for the whole run. A second training into the
same folder fails at once, naming the lock and the holder's pid. The kernel drops the lock when its process dies, so a
SIGKILLed run never leaves a stale lock behind.

Model folders switch as one unit: :func:`glfuse.checkpoint.publish_dir` writes a complete sibling ``X.tmp/`` and
swaps it in with two renames (``X`` → ``X.old``, ``X.tmp`` → ``X``); :func:`recover_run` completes or undoes a swap
that a crash interrupted.

Every saved model's ``config.json`` carries ``task`` (:data:`TASKS`); :func:`open_model_dir` resolves a run or model
folder and fails naming the system a folder belongs to when it is not the one asked for.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glfuse.checkpoint import CONFIG_NAME, WEIGHTS_NAME

__all__ = [
    "TASKS",
    "RUN_OUTPUTS",
    "Run",
    "RunLockedError",
    "open_run",
    "run_training",
    "run_state",
    "recover_run",
    "open_model_dir",
    "model_task",
]

#: the ``task`` recorded in every saved model's config.json, and the CLI command family of each
TASKS = {"classification": "glfuse classify", "staging": "glfuse stage", "fusion": "glfuse fuse"}
#: legacy values written by earlier versions
_TASK_ALIASES = {"stage": "staging", "classify": "classification", "fuse": "fusion"}

#: names (and ``epoch_*`` / ``*.tmp`` / ``*.old`` folders) a run writes; ``overwrite`` removes these and nothing else
RUN_OUTPUTS = ("config.yaml", "log.csv", "log.json", "summary.json", "split.json", "best", "last", "eval", "report.html",
               "tensorboard", "mlruns")
LOCK_NAME = ".lock"

ResumeMode = bool | Literal["auto"]


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


@dataclass
class Run:
    """An opened run folder (see :func:`open_run`). ``resume`` is the decision taken (True: continue ``last/``)."""

    dir: Path
    task: str
    resume: bool
    rank: int = 0
    world: int = 1
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def main(self) -> bool:
        """True on the process that writes (rank 0)."""
        return self.rank == 0

    def finish(self) -> None:
        """Rank 0, after training: ``report.html`` of the run (training curves, and the test evaluation when the run
        made one in ``eval/``) and the model card ``best/README.md``. A report that cannot be built is a warning: the
        trained model is already safe."""
        if not self.main:
            return
        import warnings

        from glfuse.reports import build_report, write_model_card

        eval_dir = self.dir / "eval"
        try:
            build_report(self.dir)
            if (self.dir / "best" / CONFIG_NAME).is_file():
                write_model_card(self.dir / "best", eval_dir=eval_dir if eval_dir.is_dir() else None)
        except Exception as e:  # noqa: BLE001 - reporting must not turn a finished training into a failure
            warnings.warn(f"{self.dir}: training finished, but its report could not be written ({e}); rebuild it "
                          f"with `glfuse report {self.dir}`", RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        """Release the lock (also released by the kernel when the process dies)."""
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------- state
def run_state(run_dir: str | Path) -> Literal["empty", "unstarted", "started", "foreign"]:
    """What ``run_dir`` holds: nothing, an unstarted run (config but no completed epoch), a started run, or files that
    are not a glfuse run (``foreign``)."""
    d = Path(run_dir)
    if not d.exists():
        return "empty"
    if not d.is_dir():
        return "foreign"
    if any((d / n / "training_state.pt").is_file() for n in ("last", "last.old")):
        return "started"
    names = [p.name for p in d.iterdir() if p.name != LOCK_NAME]
    if not names:
        return "empty"
    return "unstarted" if any(_is_output(n) for n in names) else "foreign"


def _is_output(name: str) -> bool:
    return name in RUN_OUTPUTS or name.startswith("epoch_") or name.endswith((".tmp", ".old"))


def _run_outputs(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if _is_output(p.name)]


def _clear_outputs(d: Path) -> None:
    for p in _run_outputs(d):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


# ----------------------------------------------------------------------------------------------------------- lock
def _take_lock(d: Path) -> int:
    import fcntl

    path = d / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunLockedError(f"{d} is in use by another training (lock {path} held by pid {holder}); wait for it to "
                             "end or choose another --output") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# ------------------------------------------------------------------------------------------------------ lifecycle
def _decide(d: Path, resume: ResumeMode, overwrite: bool) -> bool:
    """Apply the policy table of the module docstring on rank 0; returns whether to resume. May clear files."""
    state = run_state(d)
    if state == "foreign":
        if not d.is_dir():
            raise NotADirectoryError(f"{d}: --output must be a folder")
        raise FileExistsError(f"{d} holds files that are not a glfuse run; choose an empty or new --output")
    if resume is True and state != "started":
        raise FileNotFoundError(f"{d}: nothing to resume (no completed epoch saved); start it without --resume, or "
                                "with --resume auto")
    if state == "started" and resume is False:
        if not overwrite:
            raise FileExistsError(f"{d} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                                  "or choose another --output")
        _clear_outputs(d)
        return False
    if state == "started":
        recover_run(d)
        return True
    if state == "unstarted":
        _clear_outputs(d)
    return False


def open_run(run_dir: str | Path, task: str, *, resume: ResumeMode = False, overwrite: bool = False,
             device: str = "auto") -> Run:
    """Open ``run_dir`` for training by system ``task`` (one of :data:`TASKS`) under the policy of the module docstring.

    Sets up torch.distributed first (when launched by torchrun; the backend follows ``device``), then on rank 0 takes
    the run lock, decides, clears (``overwrite`` / unstarted leftovers) and creates the folder; all ranks get the same
    decision. The returned
    :class:`Run` holds the lock until :meth:`Run.close` (use it as a context manager) or process exit.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together, or an unknown ``task``/``resume`` value.
        FileExistsError: a started run without ``resume``/``overwrite``, or a folder of other files.
        FileNotFoundError: ``resume=True`` with nothing to resume (the folder is not created).
        RunLockedError: another process trains into ``run_dir``.
    """
    from glfuse.engine import broadcast_object, setup_distributed

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    if resume is True and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    d = Path(run_dir)
    rank, world, _ = setup_distributed(device)
    verdict: dict[str, Any] = {}
    lock_fd = None
    if rank == 0:
        try:
            if resume is True and run_state(d) in ("empty", "unstarted"):
                _decide(d, resume, overwrite)  # raises before the folder is created
            d.mkdir(parents=True, exist_ok=True)
            lock_fd = _take_lock(d)
            verdict = {"resume": _decide(d, resume, overwrite)}
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            if lock_fd is not None:
                os.close(lock_fd)
            verdict = {"error": e}
    verdict = broadcast_object(verdict)
    if "error" in verdict:
        err = verdict["error"]
        raise err if rank == 0 else type(err)(*err.args)
    return Run(d, task, bool(verdict["resume"]), rank, world, lock_fd)


def run_training(run_dir: str | Path, task: str, train_cfg: Any, body: Any, *, resume: ResumeMode = False,
                 overwrite: bool = False) -> dict[str, Any]:
    """The ``train()`` of every system: check ``train_cfg`` (types, ranges, device) before any file is touched, open
    the run (:func:`open_run`), call ``body(run)`` (the system's training, returning its summary), then on rank 0 write
    the run's report and model card (:meth:`Run.finish`)."""
    from glfuse.engine import check_train_config

    check_train_config(train_cfg)
    with open_run(run_dir, task, resume=resume, overwrite=overwrite, device=train_cfg.device) as run:
        summary = body(run)
        run.finish()
        return summary


# ---------------------------------------------------------------------------------------------------- publication
def recover_run(run_dir: str | Path) -> None:
    """Finish what a crash interrupted: a model folder missing beside its ``.old`` copy is restored from it; half-built
    ``*.tmp`` folders and files are removed."""
    d = Path(run_dir)
    for old in d.glob("*.old"):
        dst = old.with_name(old.name[: -len(".old")])
        if dst.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, dst)
    for tmp in list(d.glob("*.tmp")) + list(d.glob("*/.*.tmp")):
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


# --------------------------------------------------------------------------------------------------- model folders
def model_task(cfg: dict[str, Any]) -> str | None:
    """The system a model folder's ``config.json`` belongs to (older folders: inferred from their keys)."""
    task = cfg.get("task")
    if task:
        return _TASK_ALIASES.get(task, task)
    if "fusion" in cfg:
        return "fusion"
    if "label_column" in cfg:
        return "staging"
    if "class_names" in cfg and "preprocessing" in cfg:
        return "classification"
    from glfuse.registry import model_info

    try:
        kind = model_info(str(cfg.get("arch"))).input
    except KeyError:
        return None
    return {"pair": "fusion", "image+box": "staging"}.get(kind)


def open_model_dir(path: str | Path, task: str | None = None) -> tuple[Path, dict[str, Any]]:
    """``(model folder, its config.json)`` for a model folder or a run folder (meaning its ``best/``).

    With ``task``, a folder of another system fails naming that system and its command, e.g. "runs/vdpf/best is a
    staging model (use `glfuse stage`), not a classification model"."""
    p = Path(path)
    for cand in (p, p / "best"):
        if (cand / CONFIG_NAME).is_file():
            break
    else:
        hint = " (its training has not finished an epoch yet)" if (p / "config.yaml").is_file() else ""
        raise FileNotFoundError(f"{p}: not a model folder (no {CONFIG_NAME}) nor a run folder (no best/{CONFIG_NAME})"
                                + hint)
    try:
        cfg = json.loads((cand / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cand / CONFIG_NAME}: invalid JSON ({e})") from e
    if not isinstance(cfg, dict) or "arch" not in cfg:
        raise ValueError(f"{cand / CONFIG_NAME}: not a glfuse model config (no 'arch')")
    if not (cand / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{cand / WEIGHTS_NAME}: weights file not found")
    found = model_task(cfg)
    if task is not None and found != task:
        what = f"a {found} model (use `{TASKS[found]}`)" if found in TASKS else "not a model of any glfuse system"
        raise ValueError(f"{cand} is {what}, not a {task} model")
    return cand, cfg
