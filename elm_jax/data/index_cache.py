"""Per-file indexes built once and kept in the cache directory, keyed by path, size and mtime.

Finding where each line of a 1 GB JSONL file starts takes a full read; a corpus of a thousand such
files would pay that at every start of every process. Instead the offsets go to
``<cache>/index/<kind>/<hash of path>-<size>-<mtime ns>.npy`` (a Parquet file's row-group table to a
``.json``), written to a temporary name and renamed, so concurrent builders never see a partial
file. A changed file has another size or mtime, hence another key: the stale entry is deleted and
the index rebuilt. Arrays are opened memory-mapped, so the grain worker processes of one host share
one copy through the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from elm_jax.data import files, paths
from elm_jax.storage import is_uri


def entry(kind: str, path: str, cache_dir: str | None, suffix: str) -> Path:
    """Where the index of ``kind`` for the current version of ``path`` lives."""
    size, mtime = files.stat(path)
    absolute = path if is_uri(path) else os.path.abspath(path)
    key = hashlib.sha256(absolute.encode()).hexdigest()[:24]
    return paths.cache_root(cache_dir) / "index" / kind / f"{key}-{size}-{mtime}{suffix}"


def _write_atomic(target: Path, write: Callable[[Any], None], binary: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    key = target.name.split("-", 1)[0]
    for stale in target.parent.glob(f"{key}-*"):
        if stale != target and not stale.name.startswith("."):
            stale.unlink(missing_ok=True)


def cached_array(kind: str, path: str, cache_dir: str | None, build: Callable[[], np.ndarray]
                 ) -> tuple[np.ndarray, Path]:
    """``build()``'s array for ``path``, from the cache when the file is unchanged (memory-mapped)."""
    target = entry(kind, path, cache_dir, ".npy")
    if target.is_file():
        try:
            return np.load(target, mmap_mode="r"), target
        except (ValueError, OSError):
            pass  # unreadable (e.g. another version's format): rebuild below
    array = build()
    _write_atomic(target, lambda f: np.save(f, array), binary=True)
    return np.load(target, mmap_mode="r"), target


def cached_json(kind: str, path: str, cache_dir: str | None, build: Callable[[], Any]) -> Any:
    """``build()``'s JSON-able value for ``path``, from the cache when the file is unchanged."""
    target = entry(kind, path, cache_dir, ".json")
    if target.is_file():
        try:
            return json.loads(target.read_text())
        except (ValueError, OSError):
            pass
    value = build()
    _write_atomic(target, lambda f: json.dump(value, f), binary=False)
    return value
