"""Open a model for inference from either checkpoint kind, with the tokenizer that goes with it.

``elm_jax.rundir.checkpoint_kind`` tells an HF OpenELM export from a training run directory; the
run directory carries its ``tokenizer.model``, an HF export may (the released checkpoints use
LLaMA-2's, passed separately).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from etils import epath
from flax import nnx

from elm_jax import rundir
from elm_jax.checkpoint import load_model_reporting
from elm_jax.common_types import TOKENIZER_FILE
from elm_jax.config import Config, MeshConfig, ModelConfig
from elm_jax.convert.hf import load_hf
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.errors import UsageError
from elm_jax.model import OpenELM, abstract_params
from elm_jax.parallel.mesh import make_mesh, param_shardings
from elm_jax.storage import as_path


@dataclasses.dataclass
class Loaded:
    model: OpenELM
    path: epath.Path
    config: Config | None  # the experiment config of a run directory; None for HF exports
    report: str | None = None  # run directories: the step loaded and any newer ones skipped

    @property
    def model_config(self) -> ModelConfig:
        return self.model.cfg


def inference_mesh(tensor: int = 1) -> jax.sharding.Mesh:
    """Every device: batch rows over "data", attention heads and FFN over ``tensor`` devices."""
    return make_mesh(MeshConfig(data=-1, fsdp=1, tensor=tensor))


def place(model: OpenELM, mesh: jax.sharding.Mesh) -> OpenELM:
    """The model with its parameters sharded over ``mesh`` by training's rules."""
    graphdef, state = nnx.split(model)
    params = jax.device_put(nnx.to_pure_dict(state), param_shardings(abstract_params(model.cfg), mesh))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def load_checkpoint(path: str | Path, *, dtype: str | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> Loaded:
    """The model of an HF export or of a run directory's newest checkpoint.

    ``dtype`` overrides the compute dtype (e.g. bfloat16 for serving); with a ``mesh`` the
    parameters are sharded over it like training's (tensor-parallel decoding).
    """
    path = as_path(path)
    if rundir.checkpoint_kind(path) == "hf":
        _, model = load_hf(path, dtype=dtype or "float32")
        return Loaded(place(model, mesh) if mesh is not None else model, path, None)
    config, model, report = load_model_reporting(path, mesh=mesh, dtype=dtype)
    return Loaded(model, path, config, report.line())


def load_tokenizer(loaded: Loaded, explicit: str | Path | None = None) -> Tokenizer:
    """``explicit`` if given, else the checkpoint directory's ``tokenizer.model``."""
    path = Path(explicit).expanduser() if explicit else rundir.tokenizer_file(loaded.path)
    if not path.is_file():
        hint = (" (the released apple/OpenELM-* checkpoints use the LLaMA-2 tokenizer.model)"
                if loaded.config is None else "")
        raise UsageError(f"no tokenizer at {path}; pass --tokenizer path/to/"
                                f"{TOKENIZER_FILE}{hint}")
    pad_id = loaded.config.data.pad_id if loaded.config else None
    tokenizer = Tokenizer(path, pad_id=pad_id)
    if tokenizer.vocab_size > loaded.model_config.vocab_size:
        raise UsageError(f"tokenizer {path} has {tokenizer.vocab_size} pieces but the model only "
                         f"{loaded.model_config.vocab_size} embeddings: wrong tokenizer?")
    return tokenizer
