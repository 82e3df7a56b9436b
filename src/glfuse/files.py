"""File helpers shared by every system: atomic writes of bytes, text, JSON, CSV and Markdown.

Every writer goes through :func:`atomic_write`: the content is written to a temporary file in the target's folder and
renamed over the target (``os.replace``), so a crash or a full disk never leaves a half-written file — either the old
file or the new one is there, never a mix. A write that fails with an OS error — the disk is full (``ENOSPC``), the quota is
exceeded, the folder is read-only, ... — raises :class:`WriteError` (a ``RuntimeError``) with one line naming the path.

Text outputs are UTF-8. A string that cannot be encoded (a file name that is not valid UTF-8, which Python carries as
lone surrogates, e.g. ``b"scan\\xe9.png"`` → ``"scan\\udce9.png"``) is written with backslash escapes
(``scan\\udce9.png``) and a warning names it, instead of failing after all the work is done.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "WriteError",
    "all_or_nothing",
    "atomic_write",
    "display_path",
    "make_dir",
    "save_json",
    "write_csv",
    "write_markdown",
    "write_text",
]

_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted"}


class WriteError(RuntimeError):
    """An output could not be written (disk full, quota, read-only or permission); nothing partial was left."""


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` then atomically rename the temporary file to ``path``.

    Raises:
        WriteError: the disk is full / read-only / not writable; the message names ``path`` and the temporary file is
            removed (the previous ``path``, if any, is untouched).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        writer(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except OSError as e:
        raise _write_error(path, e) from None
    except Exception:
        # Some writers hide ENOSPC behind their own message (torch.save: "[enforce fail at inline_container.cc:672]
        # ... unexpected pos"): a failure with the file system (next to) full is reported as what it is.
        if _nearly_full(path.parent):
            raise WriteError(f"{display_path(path)}: cannot write: no space left on device (nothing written)") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def make_dir(path: str | Path) -> Path:
    """``mkdir -p``; a full, read-only or forbidden file system raises :class:`WriteError` naming ``path``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e) from None
    return path


@contextlib.contextmanager
def all_or_nothing(paths: Iterable[str | Path]) -> Iterator[None]:
    """Write a set of outputs (a report) whole or not at all: if the block fails, the files among ``paths`` that it
    created are removed again (files that existed before are left as the block left them)."""
    before = {Path(p): Path(p).exists() for p in paths}
    try:
        yield
    except BaseException:
        for p, existed in before.items():
            if not existed:
                with contextlib.suppress(OSError):
                    p.unlink()
        raise


def _nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return False
    return st.f_bavail * st.f_frsize < margin


def _write_error(path: Path, e: OSError) -> WriteError:
    why = _WRITE_ERRNOS.get(e.errno or -1) or (e.strerror or " ".join(str(e).split())).lower()
    return WriteError(f"{display_path(path)}: cannot write: {why} (nothing written)")


def display_path(path: str | Path) -> str:
    """``path`` as printable text: bytes that are not valid UTF-8 shown as backslash escapes."""
    s = os.fspath(path)
    s = os.fsdecode(s) if isinstance(s, bytes) else s
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _clean(value: Any, where: Path, warned: list[str]) -> Any:
    if not isinstance(value, (str, Path)):
        return value
    s = str(value)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        shown = display_path(s)
        if len(warned) < 5:
            warnings.warn(f"{shown}: name is not valid UTF-8; written to {display_path(where)} with backslash escapes",
                          stacklevel=4)
        warned.append(shown)
        return shown


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (characters that cannot be encoded are backslash-escaped)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="backslashreplace"))


def write_markdown(path: str | Path, lines: str | Iterable[str]) -> Path:
    """Write a Markdown document (a string or lines joined by newlines, ending with one newline) atomically."""
    text = lines if isinstance(lines, str) else "\n".join(lines)
    return write_text(path, text if text.endswith("\n") else text + "\n")


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any] | Sequence[Any]],
              header: Sequence[str] | None = None) -> Path:
    """Write rows to a CSV file atomically (UTF-8).

    Args:
        path: output file.
        rows: dicts (columns = ``header``, or the union of their keys in first-seen order; missing cells empty) or
            sequences (then ``header``, if given, is written first).
        header: column names.
    """
    path = Path(path)
    rows = list(rows)
    warned: list[str] = []
    as_dicts = bool(rows) and isinstance(rows[0], Mapping)
    if as_dicts and header is None:
        header = list(dict.fromkeys(k for r in rows for k in r))

    def w(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            wr = csv.writer(f)
            if header is not None:
                wr.writerow([_clean(h, path, warned) for h in header])
            for r in rows:
                cells = [r.get(k, "") for k in header] if as_dicts else list(r)
                wr.writerow([_clean(c, path, warned) for c in cells])

    return atomic_write(path, w)


def save_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (indent 2; paths, tensors and numpy values converted; non-UTF-8 text escaped)."""

    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")

    return atomic_write(path, w)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # torch tensors, numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
