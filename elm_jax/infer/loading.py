"""Open a model for inference from either checkpoint kind, with the tokenizer that goes with it.

A directory is an HF OpenELM export when its ``config.json`` says ``model_type: openelm``, and a
training run directory (``elm-train``) when it holds our experiment config; the run directory
carries its ``tokenizer.model``, an HF export may (the released checkpoints use LLaMA-2's, passed
separately).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
from flax import nnx

from elm_jax.config import Config, MeshConfig, ModelConfig
from elm_jax.model import OpenELM

if TYPE_CHECKING:
    from elm_jax.data.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.model"


@dataclasses.dataclass
class Loaded:
    model: OpenELM
    path: Path
    config: Config | None  # the experiment config of a run directory; None for HF exports

    @property
    def model_config(self) -> ModelConfig:
        return self.model.cfg


def checkpoint_kind(path: Path) -> str:
    """``"hf"`` or ``"run"``; anything else is refused with what was expected."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: --checkpoint must be an elm-train run directory or an HF "
            "OpenELM directory (config.json + model.safetensors)")
    try:
        raw: dict[str, Any] = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from None
    if raw.get("model_type") == "openelm":
        return "hf"
    if isinstance(raw.get("model"), dict):
        return "run"
    raise ValueError(f"{config_file} is neither an OpenELM HF config (model_type 'openelm') nor "
                     "an elm_jax experiment config (with a 'model' section)")


def inference_mesh(tensor: int = 1) -> jax.sharding.Mesh:
    """Every device: batch rows over "data", attention heads and FFN over ``tensor`` devices."""
    from elm_jax.parallel.mesh import make_mesh

    return make_mesh(MeshConfig(data=-1, fsdp=1, tensor=tensor))


def place(model: OpenELM, mesh: jax.sharding.Mesh) -> OpenELM:
    """The model with its parameters sharded over ``mesh`` by training's rules."""
    from elm_jax.parallel.mesh import param_shardings

    graphdef, state = nnx.split(model)
    params = jax.device_put(nnx.to_pure_dict(state), param_shardings(model.cfg, mesh))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def load_checkpoint(path: str | Path, *, dtype: str | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> Loaded:
    """The model of an HF export or of a run directory's newest checkpoint.

    ``dtype`` overrides the compute dtype (e.g. bfloat16 for serving); with a ``mesh`` the
    parameters are sharded over it like training's (tensor-parallel decoding).
    """
    path = Path(path).expanduser()
    if checkpoint_kind(path) == "hf":
        from elm_jax.convert.hf import load_hf

        _, model = load_hf(path, dtype=dtype or "float32")
        return Loaded(place(model, mesh) if mesh is not None else model, path, None)
    from elm_jax.train.checkpoint import load_model

    config, model = load_model(path, mesh=mesh, dtype=dtype)
    return Loaded(model, path, config)


def load_tokenizer(loaded: Loaded, explicit: str | Path | None = None) -> Tokenizer:
    """``explicit`` if given, else the checkpoint directory's ``tokenizer.model``."""
    from elm_jax.data.tokenizer import Tokenizer

    path = Path(explicit).expanduser() if explicit else loaded.path / TOKENIZER_FILE
    if not path.is_file():
        hint = (" (the released apple/OpenELM-* checkpoints use the LLaMA-2 tokenizer.model)"
                if loaded.config is None else "")
        raise FileNotFoundError(f"no tokenizer at {path}; pass --tokenizer path/to/"
                                f"{TOKENIZER_FILE}{hint}")
    pad_id = loaded.config.data.pad_id if loaded.config else None
    tokenizer = Tokenizer(path, pad_id=pad_id)
    if tokenizer.vocab_size > loaded.model_config.vocab_size:
        raise ValueError(f"tokenizer {path} has {tokenizer.vocab_size} pieces but the model only "
                         f"{loaded.model_config.vocab_size} embeddings: wrong tokenizer?")
    return tokenizer
