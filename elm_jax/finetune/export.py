"""What a fine-tuning run hands on: its adapters alone, and the merged model.

An adapter directory (``run_dir/adapter-step<N>/``, a few MB for LoRA) holds what the run trained
(``trainable/``: the adapters and any unfrozen base parameters, an orbax checkpoint) and the run's
whole config (``adapter_config.json``), which says how to rebuild them. ``apply_adapter`` folds one
into a model loaded from its base (``elm-generate --adapter``, ``elm-eval --adapter``); the merged
model exports as an HF checkpoint like any other (the run writes ``hf-step<N>/`` itself).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from elm_jax.config import Config, from_config_dict
from elm_jax.errors import CheckpointError, UsageError
from elm_jax.finetune.objective import layout, merged, trainable_shapes
from elm_jax.finetune.paths import Tree
from elm_jax.model import OpenELM, abstract_params
from elm_jax.rundir import config_json
from elm_jax.storage import as_path, write_atomic

ADAPTER_CONFIG = "adapter_config.json"
TRAINABLE = "trainable"
ADAPTER_PREFIX = "adapter-step"


def save_adapter(path: str | os.PathLike, config: Config, trainable: Tree) -> epath.Path:
    """Write an adapter directory; every process calls it (orbax's save is collective).

    ``trainable/`` appears whole (orbax finalises it: locally by a rename, in a bucket by a commit
    marker) and ``adapter_config.json``, written last by process 0, is what makes the directory an
    adapter. A directory without it (a save cut off) is written again; a complete one never is.
    """
    path = as_path(path)
    if (path / ADAPTER_CONFIG).exists():
        raise UsageError(f"{path} exists; choose a new adapter directory (nothing was written)")
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path / TRAINABLE, trainable, force=True)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    if jax.process_index() == 0:
        write_atomic(path / ADAPTER_CONFIG, config_json(config))
    return path


def read_adapter_config(path: str | os.PathLike) -> Config:
    config_file = as_path(path) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise UsageError(f"{config_file} not found; --adapter takes a directory written by "
                         f"elm-finetune (run_dir/{ADAPTER_PREFIX}<N>)")
    return from_config_dict(json.loads(config_file.read_text()))


def _shapes(model_config: Any) -> Any:
    return jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(abstract_params(model_config)))


def load_trainable(path: str | os.PathLike, config: Config, shardings: Tree) -> Tree:
    """An adapter directory's trained parameters, placed on ``shardings`` (model-shaped)."""
    abstract = trainable_shapes(config, shardings)
    checkpointer = ocp.StandardCheckpointer()
    try:
        return checkpointer.restore(as_path(path) / TRAINABLE, abstract)
    except Exception as err:  # orbax / tensorstore raise many types for missing or damaged files
        raise CheckpointError(f"cannot read the adapter in {path} ({type(err).__name__}: "
                              f"{str(err)[:200]}); is it complete?") from None
    finally:
        checkpointer.close()


def apply_adapter(model: OpenELM, path: str | os.PathLike) -> OpenELM:
    """``model`` with the adapter directory ``path`` folded into its weights (same placement)."""
    config = read_adapter_config(path)
    if _shapes(model.cfg) != _shapes(config.model):
        raise UsageError(f"the adapter {path} was trained on a model of other shapes than this "
                         f"checkpoint; load its base ({config.finetune.base}) with it")
    layout(config)  # the selections still resolve on this model
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    shardings = jax.tree.map(lambda x: x.sharding, params)
    trainable = load_trainable(path, config, shardings)
    new = jax.jit(lambda p, t: merged(config, p, t))(params, trainable)
    nnx.replace_by_pure_dict(state, new)
    return nnx.merge(graphdef, state)
