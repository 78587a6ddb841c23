"""OpenELM-1_1B: the paper's model and pretraining recipe (see elm_jax/presets.py)."""

from elm_jax.presets import openelm_config


def get_config(arg=None):
    del arg
    return openelm_config("1_1b")
