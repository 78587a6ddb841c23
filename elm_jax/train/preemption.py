"""SIGTERM (preemption on TPU VMs, SLURM's time limit) -> finish the step, save, wait, exit 0.

On one host our own handler sets a flag; with several processes orbax's ``reached_preemption``
(jax's preemption sync, after ``jax.distributed.initialize``) makes every process stop at the same
step.
"""

from __future__ import annotations

import signal

import jax

from elm_jax.checkpoint import Checkpointer


class PreemptionGuard:
    """A context manager whose ``reached(step, checkpointer)`` says: save now and stop."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> PreemptionGuard:
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def reached(self, step: int, checkpointer: Checkpointer) -> bool:
        if jax.process_count() > 1:
            return checkpointer.reached_preemption(step)
        return self.requested
