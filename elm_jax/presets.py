"""The paper's four model sizes and their training recipes (docs/OPENELM.md), as config overrides.

Experiment files call ``openelm_config(size, arg)``; keeping the numbers here means the four files
differ only in the size they name. ``arg`` (from ``--config=experiments/openelm_270m.py:ARG``) may
set ``data_root=/path/to/corpora``, the directory holding the pretraining mixture
(``elm_jax.pretraining_mixture``); ``--config.data.data_root=/path`` does the same.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from elm_jax.config import default_config
from elm_jax.errors import ConfigError
from elm_jax.pretraining_mixture import openelm_sources


class Preset(NamedTuple):
    """What differs between the OpenELM sizes (CoreNet's pretraining configs)."""

    num_layers: int
    model_dim: int
    head_dim: int
    peak_lr: float
    activation_checkpointing: bool
    fsdp: bool
    # Sequences per device per microbatch ("auto" microbatches). CoreNet puts 16 on each 80 GB
    # A100. The 270M keeps every activation (no checkpointing) and its documented slice is a v5e-8
    # (16 GiB chips): at 8 per chip its compiled step needs 12.84 GiB of temporaries beside 3.04 GiB
    # of state, over the 15.2 GiB elm-plan allows (docs/PLANNING.md): 4, with more gradient
    # accumulation for the same global batch (cheaper than recomputing every layer).
    max_sequences_per_device: int = 16


SIZES = {
    "270m": Preset(num_layers=16, model_dim=1280, head_dim=64, peak_lr=5.3e-3,
                   activation_checkpointing=False, fsdp=False, max_sequences_per_device=4),
    "450m": Preset(num_layers=20, model_dim=1536, head_dim=64, peak_lr=3.9e-3,
                   activation_checkpointing=True, fsdp=False),
    "1_1b": Preset(num_layers=28, model_dim=2048, head_dim=64, peak_lr=2.4e-3,
                   activation_checkpointing=True, fsdp=False),
    "3b": Preset(num_layers=36, model_dim=3072, head_dim=128, peak_lr=1.2e-3,
                 activation_checkpointing=True, fsdp=True),
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
        raise ConfigError(f"unknown OpenELM size {size!r}; choose one of {', '.join(SIZES)}")
    options = parse_arg(arg)
    preset = SIZES[size]
    config = default_config()
    config.name = f"openelm_{size}"
    config.model.num_layers = preset.num_layers
    config.model.model_dim = preset.model_dim
    config.model.head_dim = preset.head_dim
    config.model.vocab_size = 32128
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "full" if preset.activation_checkpointing else "none"
    config.data.tokenizer = "tokenizer.model"  # the LLaMA-2 SentencePiece model
    config.data.pad_id = 32000
    config.data.sources = openelm_sources()
    config.data.data_root = options.get("data_root", "")
    config.data.nfc_normalize = True  # CoreNet's tokenizer: enable_nfc_normalization
    config.train.eval_batches = 0  # CoreNet trains these without a validation set (disable_val)
    config.train.peak_lr = preset.peak_lr
    config.train.microbatches = "auto"  # from the sequences per device, not by hand
    config.train.max_sequences_per_device = preset.max_sequences_per_device
    config.train.run_dir = f"runs/openelm_{size}"
    if preset.fsdp:
        config.mesh.data = 1
        config.mesh.fsdp = -1
    return config
