"""``glfuse`` command line: a thin shell over the Python API.

Sub-commands: ``models``, ``demo``, ``classify`` (HiFuse & baselines), ``fuse`` (MACTFusion & fusion metrics),
``stage`` (VDPF lesion staging). Each system's sub-commands live in ``glfuse/cli/<system>.py`` and expose
``add_parser(subparsers)``; they share one grammar (:mod:`glfuse.cli.common`: ``-c``, ``KEY=VALUE`` anywhere, ``-o``,
``--resume [auto]``, ``--overwrite``, ``--device``, ``--threads``, ``--quiet``, ``--debug``) and one set of exit codes:
0 success, 1 runtime failure (printed as one line naming the cause), 2 usage error, 130 interrupted.

Under ``torchrun`` a failure is also recorded for torch.distributed.elastic (``TORCHELASTIC_ERROR_FILE``), so the
launcher's failure summary shows the child's traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from glfuse.cli.common import EPILOG, EXIT_FAILURE, EXIT_INTERRUPTED, apply_runtime

SYSTEMS = ("classify", "fuse", "stage")
COMMANDS = ("models", "demo", *SYSTEMS, "report", "export")

#: exceptions shown as one line (anything else is a bug: full traceback)
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, KeyError, NotADirectoryError, IsADirectoryError,
               PermissionError, RuntimeError, OSError)


def build_parser() -> argparse.ArgumentParser:
    from glfuse._version import __version__

    p = argparse.ArgumentParser(prog="glfuse", description="Global–local feature fusion for medical imaging.",
                                epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"glfuse {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS:
        importlib.import_module(f"glfuse.cli.{mod}").add_parser(sub)
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, accepting ``key=value`` overrides anywhere on the line for commands that take overrides."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [e for e in extra if e.startswith("-") or "=" not in e]
        if bad or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)  # usage errors: argparse prints them and exits with EXIT_USAGE (2)
    debug = getattr(args, "debug", False) or _env_debug()
    try:
        apply_runtime(args)
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as e:
        _record_for_torchrun(e)
        if debug:
            raise
        print(f"glfuse: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as e:
        _record_for_torchrun(e)
        raise
    return int(rc or 0)


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
        msg = f"{e.filename}: {msg}"
    return " ".join(str(msg).split("\n")[:1]) if isinstance(e, OSError) else str(msg)


def _record_for_torchrun(e: BaseException) -> None:
    """Write the traceback where torchrun's failure summary reads it (only when launched by torchrun)."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        handler = get_error_handler()
        handler.initialize()
        handler.record_exception(e)
    except Exception:  # noqa: BLE001 - recording must never hide the original error
        pass


def _env_debug() -> bool:
    return os.environ.get("GLFUSE_DEBUG", "") not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
