"""``elm-train``: train (or resume) an experiment; with no flags, the tiny model on Shakespeare.

    elm-train                                               # experiments/tiny.py, ~5 min on 2 cores
    elm-train --config experiments/openelm_270m.py --config.train.steps=1000

SIGTERM or Ctrl-C saves the step in progress and exits 0 (rerun the same command to resume); a
second Ctrl-C aborts at once.
"""

from __future__ import annotations

from elm_jax.cli import common
from elm_jax.cli.stopping import run_until_stopped
from elm_jax.train.loop import train

CONFIG = common.define_config_flag(common.default_experiment("tiny"))


def _main(argv: list[str]) -> None:
    del argv
    config = common.load_config(CONFIG)
    result = run_until_stopped(config, train)
    if result is None or result.preempted:
        return
    summary = f"done: step {result.step}"
    if result.train_loss is not None:
        summary += f", train loss {result.train_loss:.3f}"
    if result.val_loss is not None:
        summary += f", validation loss {result.val_loss:.3f} nats"
    if result.unigram_entropy is not None:
        summary += f" (unigram entropy of the data: {result.unigram_entropy:.3f} nats)"
    print(summary)


main = common.entry(_main, stops_cleanly=True)

if __name__ == "__main__":
    main()
