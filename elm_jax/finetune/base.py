"""The model a fine-tuning run starts from: an HF OpenELM directory or an elm-train run directory.

Its shapes replace the experiment's model section (the experiment keeps its numerics: compute and
parameter dtype, attention kernel, remat), its tokenizer is ``data.tokenizer`` when that names an
existing file and otherwise the directory's ``tokenizer.model``, and its parameters are read
straight onto the run's shardings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
from flax import nnx

from elm_jax import rundir
from elm_jax.checkpoint import Checkpointer
from elm_jax.common_types import CONFIG_FILE
from elm_jax.config import Config, ModelConfig
from elm_jax.convert.hf import config_from_hf, load_hf
from elm_jax.data import paths as data_paths
from elm_jax.errors import CheckpointError, ConfigError
from elm_jax.finetune.paths import Tree
from elm_jax.model import abstract_params

# what the experiment decides about the model; everything else comes from the base
NUMERICS = ("param_dtype", "dtype", "attention_impl", "attention_interpret", "remat_policy",
            "remat_layers")


@dataclasses.dataclass(frozen=True)
class Base:
    path: Path
    kind: str  # "hf" or "run"
    model: ModelConfig

    @property
    def tokenizer_file(self) -> Path:
        return rundir.tokenizer_file(self.path)


def open_base(path: str) -> Base:
    """The base named by ``finetune.base`` (shapes only; nothing is loaded yet)."""
    if not path:
        raise ConfigError("finetune.base is empty: set it to an HF OpenELM directory or an "
                          "elm-train run directory, e.g. --config.finetune.base=runs/tiny")
    where = Path(path).expanduser()
    kind = rundir.checkpoint_kind(where)
    if kind == "hf":
        model = config_from_hf(json.loads((where / CONFIG_FILE).read_text()))
    else:
        run = rundir.read_run_config(where)
        if run.finetune.base:
            raise ConfigError(f"{where} is an elm-finetune run (its checkpoints hold what it "
                              "trained, not a whole model); start from its hf-step<N> export")
        model = run.model
    return Base(where, kind, model)


def resolve(config: Config, base: Base) -> Config:
    """``config`` with the base's model shapes (keeping the experiment's numerics)."""
    numerics = {name: getattr(config.model, name) for name in NUMERICS}
    resolved = dataclasses.replace(config, model=dataclasses.replace(base.model, **numerics))
    resolved.validate()
    return resolved


def tokenizer_path(config: Config, base: Base) -> Path:
    """``data.tokenizer`` if that file exists, else the base directory's ``tokenizer.model``."""
    named = Path(config.data.tokenizer).expanduser()
    if config.data.tokenizer != data_paths.SHAKESPEARE and named.is_file():
        return named
    if base.tokenizer_file.is_file():
        return base.tokenizer_file
    raise ConfigError(f"no tokenizer: data.tokenizer={config.data.tokenizer!r} is not a file and "
                      f"{base.path} has no tokenizer.model; set --config.data.tokenizer to the "
                      "base's SentencePiece model (the released OpenELM use LLaMA-2's)")


def load_params(base: Base, model: ModelConfig, shardings: Tree) -> Tree:
    """The base's parameters in ``model.param_dtype``, placed on ``shardings``."""
    if base.kind == "hf":
        _, loaded = load_hf(base.path, param_dtype=model.param_dtype)
        return jax.device_put(nnx.to_pure_dict(nnx.state(loaded, nnx.Param)), shardings)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nnx.to_pure_dict(abstract_params(model)), shardings)
    run_config = rundir.read_run_config(base.path)
    checkpointer = Checkpointer(base.path, run_config, read_only=True)
    try:
        params, _ = checkpointer.restore_params(abstract)
    except CheckpointError as err:
        raise CheckpointError(f"cannot read the base model: {err}") from None
    finally:
        checkpointer.close()
    return params


def loader(base: Base, model: ModelConfig):
    """A ``BaseLoader`` for ``finetune_objective``."""
    return lambda mesh, shardings: load_params(base, model, shardings)
