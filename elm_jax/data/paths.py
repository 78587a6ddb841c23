"""Where prepared data lives: ``$ELM_JAX_CACHE``, else ``$XDG_CACHE_HOME/elm_jax`` (``~/.cache``)."""

from __future__ import annotations

import os
from pathlib import Path

SHAKESPEARE = "shakespeare"


def cache_root(cache_dir: str | None = None) -> Path:
    """The cache directory: ``data.cache_dir`` if set, else the environment's choice."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("ELM_JAX_CACHE"):
        return Path(os.environ["ELM_JAX_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "elm_jax"


def shakespeare_dir(cache_dir: str | None = None) -> Path:
    """Root of the prepared Shakespeare corpus (TFDS data dir and tokenizers)."""
    return cache_root(cache_dir) / SHAKESPEARE


def shakespeare_tokenizer(vocab_size: int, cache_dir: str | None = None, model_type: str = "bpe") -> Path:
    """Path of the SentencePiece model trained on Shakespeare's train split for ``vocab_size``."""
    return shakespeare_dir(cache_dir) / f"tokenizer_{model_type}_{vocab_size}.model"
