"""``elm-train``: train (or resume) an experiment; with no flags, the tiny model on Shakespeare.

    elm-train                                               # experiments/tiny.py, ~5 min on 2 cores
    elm-train --config experiments/openelm_270m.py --config.train.steps=1000

SIGTERM or Ctrl-C saves the step in progress and exits 0 (rerun the same command to resume); a
second Ctrl-C aborts at once.
"""

from __future__ import annotations

from elm_jax.cli import common
from elm_jax.parallel import distributed
from elm_jax.train.loop import train
from elm_jax.train.preemption import StopRequested, stop_at_once

CONFIG = common.define_config_flag(common.default_experiment("tiny"))


def _main(argv: list[str]) -> None:
    del argv
    config = common.load_config(CONFIG)
    distributed.initialize(config.distributed)  # before any array: join a multi-host run, if any
    try:
        with stop_at_once():  # before and after the training steps: nothing unsaved to lose
            result = train(config)
    except StopRequested as stop:
        print(f"stopped by {stop} outside the training steps (nothing unsaved was lost); rerun the "
              "same command to resume")
        return
    if result.preempted:
        return
    summary = f"done: step {result.step}"
    if result.train_loss is not None:
        summary += f", train loss {result.train_loss:.3f}"
    if result.val_loss is not None:
        summary += f", validation loss {result.val_loss:.3f} nats"
    if result.unigram_entropy is not None:
        summary += f" (unigram entropy of the data: {result.unigram_entropy:.3f} nats)"
    print(summary)


main = common.entry(_main)

if __name__ == "__main__":
    main()
