"""``elm-train``: train (or resume) an experiment; with no flags, the tiny model on Shakespeare.

    elm-train                                               # experiments/tiny.py, ~5 min on 2 cores
    elm-train --config experiments/openelm_270m.py --config.train.steps=1000
"""

from __future__ import annotations

from absl import flags
from absl import logging as absl_logging

from elm_jax.cli import common

CONFIG = common.define_config_flag(common.default_experiment("tiny"))


def _main(argv: list[str]) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; -v 0 brings it back
        absl_logging.set_verbosity(absl_logging.WARNING)
    config = common.load_config(CONFIG)
    from elm_jax.parallel import distributed

    distributed.initialize(config.distributed)  # before any array: join a multi-host run, if any
    from elm_jax.train.checkpoint import CheckpointError
    from elm_jax.train.loop import TrainingError, train

    try:
        result = train(config)
    except (TrainingError, CheckpointError) as err:
        raise common.UserError(str(err)) from None
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


def main() -> None:
    common.run(_main)


if __name__ == "__main__":
    main()
