"""Decisions every process of a multi-host run takes together (no-ops on one process).

A run whose processes decide alone can split: with a damaged file seen by one host only, each
process would restore a different checkpoint step and train a global state made of two. These
helpers turn a per-process observation into one answer for all: ``first_failure`` (the first
process's reason, if any process failed), ``decided_by_process_0`` (process 0 runs a check and
every process raises its error), and ``barrier`` (nobody goes on until everybody got here, e.g.
until process 0 has moved a directory).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from elm_jax.errors import ElmError

MESSAGE_BYTES = 2048  # an error message travels to the other processes in this many bytes


def _encode(text: str) -> np.ndarray:
    data = np.zeros(MESSAGE_BYTES, np.uint8)
    encoded = text.encode()[:MESSAGE_BYTES]
    data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
    return data


def _decode(data: np.ndarray) -> str:
    return bytes(np.asarray(data, np.uint8)).rstrip(b"\0").decode(errors="replace")


def first_failure(reason: str | None) -> str | None:
    """Every process's ``reason`` (None: it succeeded) -> the same answer on every process: None if
    all succeeded, else the reason of the lowest-numbered process that failed, naming it."""
    if jax.process_count() == 1:
        return reason
    from jax.experimental import multihost_utils

    rows = multihost_utils.process_allgather(_encode(reason or ""))
    for index, row in enumerate(np.asarray(rows).reshape(jax.process_count(), MESSAGE_BYTES)):
        if _decode(row):
            return f"{_decode(row)} (process {index})"
    return None


def barrier(name: str) -> None:
    """Wait until every process reached the barrier ``name`` (unique per call site and step)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def decided_by_process_0(check: Callable[[], None], error: type[ElmError]) -> None:
    """Run ``check`` on process 0 only; if it raises an ``ElmError``, every process raises
    ``error`` with its message, so no process goes on alone into a collective that never ends."""
    message = ""
    if jax.process_index() == 0:
        try:
            check()
        except ElmError as err:
            if jax.process_count() == 1:
                raise
            message = str(err)
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    text = _decode(multihost_utils.broadcast_one_to_all(_encode(message)))
    if text:
        raise error(text)

