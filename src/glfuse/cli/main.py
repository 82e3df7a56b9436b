"""``glfuse`` command line: a thin shell over the Python API.

Sub-commands: ``models``, ``demo``, ``classify`` (HiFuse & baselines), ``fuse`` (MACTFusion & fusion metrics),
``stage`` (VDPF lesion staging). Each system's sub-commands live in ``glfuse/cli/<system>.py`` and expose
``add_parser(subparsers)``; every parser has ``--help``. Errors users can fix are printed as one line (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

SYSTEMS = ("classify", "fuse", "stage")


def build_parser() -> argparse.ArgumentParser:
    from glfuse import __version__

    p = argparse.ArgumentParser(prog="glfuse", description="Global–local feature fusion for medical imaging.")
    p.add_argument("--version", action="version", version=f"glfuse {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in ("models", "demo", *SYSTEMS, "export"):
        importlib.import_module(f"glfuse.cli.{mod}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, NotADirectoryError, RuntimeError) as e:
        if getattr(args, "debug", False) or _env_debug():
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"glfuse: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


def _env_debug() -> bool:
    import os

    return os.environ.get("GLFUSE_DEBUG", "") not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
