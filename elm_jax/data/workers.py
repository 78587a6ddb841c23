"""Grain worker processes live no longer than the process that started them.

Grain's workers are daemonic ``spawn`` children that the parent closes when it exits normally. When
the parent is killed (``kill -9``, the out-of-memory killer) nothing closes them: they would keep
their memory (hundreds of MB each) and, through the pipe they inherited, multiprocessing's resource
tracker, piling up with every kill. So each worker watches its parent and exits the moment it is
gone. (``PR_SET_PDEATHSIG`` is no substitute: it fires when the parent *thread* that started the
worker exits, and grain starts workers from short-lived threads.)

Workers also ignore SIGINT and SIGTERM: a Ctrl-C in a terminal, or a scheduler signalling the whole
process group, is for the trainer, which finishes its step and saves; a worker that died of it
would break the batch the trainer is waiting for. The trainer stops its workers itself.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Callable

POLL_SECONDS = 0.2  # how often a worker checks its parent: the longest an orphan can live


def worker_init(parent_pid: int | None = None) -> Callable[[int, int], None]:
    """grain's ``worker_init_fn`` (``mp_prefetch``) binding every worker to ``parent_pid`` (default:
    this process, the one that starts the workers)."""
    return functools.partial(_bind_to_parent, os.getpid() if parent_pid is None else parent_pid)


def _bind_to_parent(parent_pid: int, worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    if os.getppid() != parent_pid:  # the parent died while this worker was starting
        os._exit(1)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True,
                     name="elm-jax-parent-watch").start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os._exit(1)  # no clean-up to run: the parent that would receive our output is gone
