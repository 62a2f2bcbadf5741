"""Writing a file so that no reader ever sees half of it: the project's one atomic writer.

:func:`atomic_output` opens a temporary file in the destination's folder (same file system,
so the final rename is atomic) and, when the block ends without an exception, flushes it to
disk and ``os.replace``-s it onto the destination. A reader sees either the old file (or
none) or the complete new one. On any exception, ``KeyboardInterrupt`` included, the
temporary file is removed and the exception propagates; only a killed process leaves one
behind (a dot-file named after the destination, never the destination itself).

:func:`write_json_atomic` writes one JSON document that way. Imports only the standard
library: every layer above (``odconv``, ``lightning_modules``, ``sweeps``) may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import IO, Any, Iterator

WRITE_MODES = ("w", "wt", "wb")


def _create_temp(folder: str, name: str, suffix: str) -> tuple[int, str]:
    """A new, empty file ``.<name>.<random><suffix>`` in ``folder``, opened for writing.
    Created with mode 0o666 less the umask, as ``open(path, "w")`` would create ``name``
    (``tempfile.mkstemp`` would make it 0o600)."""
    while True:
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover  (a 48-bit collision)
            continue


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", *, suffix: str = ".tmp", fsync: bool = True,
                  **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Write ``path`` atomically: yields a file object (opened with ``mode``, one of
    ``"w"``, ``"wt"``, ``"wb"``, and ``open_kwargs`` such as ``encoding`` or ``newline``) on a
    temporary file ``.<name>.<random><suffix>`` in ``path``'s folder, which is created if
    missing. A block that ends normally replaces ``path`` by the complete file (after
    ``fsync`` unless ``fsync=False``); one that raises leaves ``path`` as it was and removes
    the temporary file."""
    if mode not in WRITE_MODES:
        raise ValueError(f"atomic_output writes a new file: mode must be one of {', '.join(WRITE_MODES)}, "
                         f"got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_temp(folder, os.path.basename(path), suffix)
    try:
        try:
            f = os.fdopen(fd, mode, **open_kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any, **json_kwargs: Any) -> None:
    """Write ``data`` as one JSON document to ``path`` through :func:`atomic_output` (parent
    folders created; a reader sees the old file or the complete new one, never part of it).
    ``json_kwargs`` go to ``json.dump`` (``indent``, ``sort_keys``, ``default``...). Data that
    cannot be serialised raises and leaves ``path`` untouched."""
    with atomic_output(path, "w", encoding="utf-8") as f:
        json.dump(data, f, **json_kwargs)


__all__ = ["atomic_output", "write_json_atomic", "WRITE_MODES"]
