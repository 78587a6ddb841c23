"""SIGTERM (preemption on TPU VMs, SLURM's time limit) and Ctrl-C (SIGINT) stop a run cleanly.

During the training steps (``PreemptionGuard``) either signal only sets a flag: the loop finishes
its step, saves it, waits for the save and returns (exit 0); a second signal aborts at once, without
saving, as an unhandled Ctrl-C would. Outside the steps (start-up: data checks, restore, the first
compilation; the export after them) there is nothing unsaved to lose, so ``stop_at_once`` turns
either signal into ``StopRequested``, which ``elm-train`` reports on one line with exit 0.

With several processes, SIGTERM belongs to jax: orbax's ``reached_preemption`` (jax's preemption
sync, after ``jax.distributed.initialize``) makes every process stop at the same step. jax listens
to SIGTERM only, so during the steps a Ctrl-C is passed on to it as a SIGTERM of the same process
(the second Ctrl-C aborts, as with one process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

import jax

from elm_jax.checkpoint import Checkpointer

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(BaseException):  # noqa: N818 (a request, like KeyboardInterrupt, not an error)
    """A stop signal outside the training steps; its message is the signal's name.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on the way
    (a checkpoint that fails to restore, a data error) mistakes it for a failure.
    """


def _install(handler) -> dict[int, object]:
    if jax.process_count() > 1:
        return {}
    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def _restore(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class StopLatch:
    """Which stop signal ``stop_at_once`` raised for, if any (None until one arrives).

    The signal's ``StopRequested`` is raised wherever the main thread is; a library running
    there may turn it into its own error (jax re-raises it as a ``ValueError`` when it lands in a
    pytree's ``__eq__``), so the caller asks the latch, not the exception's type.
    """

    def __init__(self):
        self.signal: str | None = None

    def raise_stop(self, signum: int, frame) -> None:
        del frame
        self.signal = signal.Signals(signum).name
        raise StopRequested(self.signal)


@contextlib.contextmanager
def stop_at_once() -> Iterator[StopLatch]:
    """While active (one process only): SIGTERM or SIGINT raises ``StopRequested``."""
    latch = StopLatch()
    previous = _install(latch.raise_stop)
    try:
        yield latch
    finally:
        _restore(previous)


class PreemptionGuard:
    """A context manager whose ``reached(step, checkpointer)`` says: save now and stop."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionGuard:
        if jax.process_count() > 1:
            self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._handle)}
        else:
            self._previous = _install(self._handle)
        return self

    def __exit__(self, *exc) -> None:
        _restore(self._previous)

    def _handle(self, signum: int, frame) -> None:
        del frame
        if self.requested:  # the second signal: stop now, whatever is in flight
            print(f"{signal.Signals(signum).name} again: aborting without saving", file=sys.stderr,
                  flush=True)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.requested = True
        if jax.process_count() > 1:  # a Ctrl-C: jax's preemption sync stops every process
            os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int, checkpointer: Checkpointer) -> bool:
        if jax.process_count() > 1:
            return checkpointer.reached_preemption(step)
        return self.requested
