"""The paper's four model sizes and their training recipes, as config overrides.

Experiment files call ``openelm_config(size, arg)``; keeping the numbers here means the four files
differ only in the size they name. ``arg`` (from ``--config=experiments/openelm_270m.py:ARG``) may
set ``data_root=/path/to/corpora``, the directory holding the pretraining mixture
(``elm_jax.pretraining_mixture``); ``--config.data.data_root=/path`` does the same.
"""

from __future__ import annotations

import ml_collections

from elm_jax.config import ConfigError, default_config
from elm_jax.pretraining_mixture import openelm_sources

# size -> (layers, model_dim, head_dim, peak learning rate, activation checkpointing, fsdp)
SIZES = {
    "270m": (16, 1280, 64, 5.3e-3, False, False),
    "450m": (20, 1536, 64, 3.9e-3, True, False),
    "1_1b": (28, 2048, 64, 2.4e-3, True, False),
    "3b": (36, 3072, 128, 1.2e-3, True, True),
}


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"key=value,key=value"`` (the experiment-file argument) as a dict; known key: data_root."""
    values = {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key.strip() != "data_root":
            raise ConfigError(f"experiment argument {item!r} is invalid: expected data_root=PATH")
        values[key.strip()] = value.strip()
    return values


def openelm_config(size: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's pretraining setup for one size: model, data pipeline, optimiser, mesh."""
    if size not in SIZES:
        raise ValueError(f"unknown OpenELM size {size!r}; choose one of {', '.join(SIZES)}")
    options = parse_arg(arg)
    layers, dim, head_dim, lr, remat, fsdp = SIZES[size]
    config = default_config()
    config.name = f"openelm_{size}"
    config.model.num_layers = layers
    config.model.model_dim = dim
    config.model.head_dim = head_dim
    config.model.vocab_size = 32128
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "full" if remat else "none"
    config.data.tokenizer = "tokenizer.model"  # the LLaMA-2 SentencePiece model
    config.data.pad_id = 32000
    config.data.sources = openelm_sources()
    config.data.data_root = options.get("data_root", "")
    config.data.nfc_normalize = True  # CoreNet's tokenizer: enable_nfc_normalization
    config.train.eval_batches = 0  # CoreNet trains these without a validation set (disable_val)
    config.train.peak_lr = lr
    config.train.run_dir = f"runs/openelm_{size}"
    if fsdp:
        config.mesh.data = 1
        config.mesh.fsdp = -1
    return config
