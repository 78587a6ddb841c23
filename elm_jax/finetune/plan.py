"""``elm-plan`` for a fine-tuning config: the step with a frozen base and optimizer state only for
what trains, built abstractly (the base need not be on this machine)."""

from __future__ import annotations

from pathlib import Path

import jax

from elm_jax.config import Config
from elm_jax.finetune.base import open_base, resolve
from elm_jax.finetune.objective import finetune_objective
from elm_jax.train.plan import StepBuilder
from elm_jax.train.step import make_train_step


def finetune_step_builder(config: Config) -> tuple[Config, StepBuilder]:
    """(config with the base's shapes when the base is here, the step builder to plan with)."""
    if Path(config.finetune.base).expanduser().exists():
        config = resolve(config, open_base(config.finetune.base))

    def build(config: Config, mesh: jax.sharding.Mesh):
        return make_train_step(config, mesh, objective=finetune_objective())

    return config, build
