"""How ``elm-train`` and ``elm-finetune`` start a run and take a stop request outside its steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from elm_jax.config import Config
from elm_jax.parallel import distributed
from elm_jax.train.preemption import stop_at_once

T = TypeVar("T")


def run_until_stopped(config: Config, run: Callable[[Config], T]) -> T | None:
    """``run(config)`` after joining the multi-host run, if any; None when SIGTERM or Ctrl-C came
    before or after the training steps (the loop itself saves a stop during the steps)."""
    distributed.initialize(config.distributed)  # before any array
    with stop_at_once() as latch:  # before and after the training steps: nothing unsaved to lose
        try:
            return run(config)
        except BaseException:
            if latch.signal is None:  # not the stop, whatever type it arrived as
                raise
    print(f"stopped by {latch.signal} outside the training steps (nothing unsaved was lost); rerun "
          "the same command to resume")
    return None
