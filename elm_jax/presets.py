"""The paper's four model sizes and their training recipes (REFERENCE.md), as config overrides.

Experiment files call ``openelm_config(size)``; keeping the numbers here means the four files
differ only in the size they name.
"""

from __future__ import annotations

import ml_collections

from elm_jax.config import default_config

# size -> (layers, model_dim, head_dim, peak learning rate, activation checkpointing, fsdp)
SIZES = {
    "270m": (16, 1280, 64, 5.3e-3, False, False),
    "450m": (20, 1536, 64, 3.9e-3, True, False),
    "1_1b": (28, 2048, 64, 2.4e-3, True, False),
    "3b": (36, 3072, 128, 1.2e-3, True, True),
}


def openelm_config(size: str) -> ml_collections.ConfigDict:
    """The paper's pretraining setup for one size: model, data pipeline, optimiser, mesh."""
    if size not in SIZES:
        raise ValueError(f"unknown OpenELM size {size!r}; choose one of {', '.join(SIZES)}")
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
    config.train.peak_lr = lr
    config.train.microbatches = "auto"  # 16 sequences per device per microbatch, as in the paper
    config.train.run_dir = f"runs/openelm_{size}"
    if fsdp:
        config.mesh.data = 1
        config.mesh.fsdp = -1
    return config
