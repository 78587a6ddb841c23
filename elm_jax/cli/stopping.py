"""How ``elm-train`` and ``elm-finetune`` start a run and take a stop request outside its steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from elm_jax.config import Config
from elm_jax.parallel import distributed
from elm_jax.train.preemption import StopRequested, stop_at_once

T = TypeVar("T")


def run_until_stopped(config: Config, run: Callable[[Config], T]) -> T | None:
    """``run(config)`` after joining the multi-host run, if any; None when SIGTERM or Ctrl-C came
    before or after the training steps (the loop itself saves a stop during the steps)."""
    distributed.initialize(config.distributed)  # before any array
    try:
        with stop_at_once():  # before and after the training steps: nothing unsaved to lose
            return run(config)
    except StopRequested as stop:
        print(f"stopped by {stop} outside the training steps (nothing unsaved was lost); rerun the "
              "same command to resume")
        return None
