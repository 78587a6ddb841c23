"""Files anywhere orbax can write: local folders and object-store URIs (``gs://bucket/...``).

One path type, ``etils.epath.Path`` (what orbax itself uses), for run directories and everything in
them, so ``gs://b/runs/x`` stays a URI end to end and never becomes the local folder ``gs:/b/...``
that ``pathlib.Path`` would make of it. ``gs://`` needs ``gcsfs`` (the ``gcs`` extra); without
TensorFlow installed, epath reaches GCS through fsspec/gcsfs, which honours
``STORAGE_EMULATOR_HOST``; orbax's array files go through TensorStore, which honours
``TENSORSTORE_GCS_HTTP_URL``.

Object stores have no rename and no append: a whole-object upload is already atomic (the object
appears when it is finalised), so ``write_atomic`` writes URIs directly and only local files go
through a temporary name; ``LineLog`` keeps the lines of a URI log in memory and rewrites the
object now and then.
"""

from __future__ import annotations

import os
import time
from typing import IO

from etils import epath


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an epath: URIs unchanged, local paths expanded (``~``) and made absolute."""
    text = os.fspath(path)
    if is_uri(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an object store (``gs://``, ``s3://``...) rather than a local file."""
    return "://" in os.fspath(path)


def write_atomic(path: epath.Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    mode = "w" if isinstance(data, str) else "wb"
    if is_uri(path):  # an object appears whole when its upload is finalised
        with path.open(mode) as f:
            f.write(data)
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(os.fspath(tmp), mode) as f:
        f.write(data)
    os.replace(tmp, path)


def copy_atomic(source: str | os.PathLike, dest: epath.Path) -> None:
    """Copy the file ``source`` (local or URI) to ``dest`` with ``write_atomic``."""
    write_atomic(dest, as_path(source).read_bytes())


class LineLog:
    """A text file that grows by whole lines (``metrics.jsonl``), local or in an object store.

    Local files are opened for appending and flushed after every line. Object stores cannot
    append, so the object's old text is read once and the whole text is uploaded again at most
    every ``flush_seconds`` and at ``close`` (a killed process loses at most that much).
    """

    def __init__(self, path: epath.Path, *, flush_seconds: float = 30.0):
        self.path = path
        self._local: IO[str] | None = None
        self._lines: list[str] = []
        self._flush_seconds = flush_seconds
        self._flushed = time.monotonic()
        self._dirty = False
        if is_uri(path):
            self._lines = [path.read_text()] if path.exists() else []
        else:
            self._local = open(os.fspath(path), "a")  # noqa: SIM115 (closed in close())

    def write_line(self, line: str) -> None:
        if self._local is not None:
            self._local.write(line + "\n")
            self._local.flush()
            return
        self._lines.append(line + "\n")
        self._dirty = True
        if time.monotonic() - self._flushed >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._local is not None:
            self._local.flush()
        elif self._dirty:
            write_atomic(self.path, "".join(self._lines))
            self._dirty, self._flushed = False, time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._local is not None:
            self._local.close()
            self._local = None
