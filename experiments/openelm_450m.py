"""OpenELM-450M: the paper's model and pretraining recipe (see elm_jax/presets.py)."""

from elm_jax.presets import openelm_config


def get_config(arg=None):
    """``arg``: optional ``data_root=/path/to/corpora`` (see elm_jax/pretraining_mixture.py)."""
    return openelm_config("450m", arg)
