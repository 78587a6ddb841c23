"""Every process must read the same documents: compare what each one sees before the first batch.

Each process opens the sources itself and takes its shard of one shuffled order of their
documents. If the processes see different files (a glob over a directory that changes while the
run starts, per-host copies that differ) their shards silently overlap or skip documents. So the
processes compare a digest of their listing (per source: document count, and each file with its
size); on a mismatch process 0's listing is sent to all, every process names what differs on its
side, and all of them stop with a ``DataError`` (none is left waiting in a collective).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from elm_jax.data import files
from elm_jax.data.records import RecordParser
from elm_jax.errors import DataError

SHOWN = 5  # file names listed per kind of difference


def listing(sources: Sequence[RecordParser]) -> dict[str, dict[str, Any]]:
    """Per source: its document count (None for streamed sources, which do not know it) and its
    files (none for TFDS) with their sizes in bytes."""
    found = {}
    for src in sources:
        paths = list(getattr(src, "files", ()))
        sizes = [size for size, _ in files.map_paths(files.stat, paths)]
        found[src.name] = {"documents": getattr(src, "num_records", None),
                           "files": dict(zip(paths, sizes))}
    return found


def differences(reference: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """What ``mine`` lacks, adds or sees differently compared with ``reference``, in words."""
    found = []
    for name in sorted(set(reference) | set(mine)):
        if name not in mine or name not in reference:
            found.append(f"source {name!r} only on {'process 0' if name in reference else 'this one'}")
            continue
        ref, own = reference[name], mine[name]
        ref_files, own_files = ref["files"], own["files"]
        for label, paths in (("files only on process 0", sorted(set(ref_files) - set(own_files))),
                             ("files only here", sorted(set(own_files) - set(ref_files))),
                             ("files of another size here", sorted(
                                 p for p in set(ref_files) & set(own_files)
                                 if ref_files[p] != own_files[p]))):
            if paths:
                more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
                found.append(f"source {name!r}: {label}: {', '.join(paths[:SHOWN])}{more}")
        if ref["documents"] != own["documents"]:
            found.append(f"source {name!r}: {own['documents']} documents here, "
                         f"{ref['documents']} on process 0")
    return found


def _broadcast_text(text: str) -> str:
    """Process 0's ``text``, on every process."""
    data = np.frombuffer(text.encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    padded = np.zeros(size, np.uint8)
    if jax.process_index() == 0:
        padded[:] = data
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).decode()


def check_same_data(sources: Sequence[RecordParser], split: str) -> None:
    """Raise ``DataError`` on every process unless all processes see the same ``split`` data.

    A collective: every process calls it at the same point (a no-op for a single process).
    """
    if jax.process_count() == 1:
        return
    mine = listing(sources)
    text = json.dumps(mine, sort_keys=True)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(digest))
    differing = [p for p in range(len(digests)) if not np.array_equal(digests[p], digests[0])]
    if not differing:
        return
    reference = json.loads(_broadcast_text(text))
    fix = ("every process must read the same files: put the data on shared storage or identical "
           "copies, and use a fixed file list rather than a glob over files that change")
    if jax.process_index() in differing:
        raise DataError(f"process {jax.process_index()} sees different {split!r} data than process "
                        f"0: {'; '.join(differences(reference, mine))}; {fix}")
    raise DataError(f"processes {differing} see different {split!r} data than process 0 (their "
                    f"errors name the files); {fix}")
