"""OpenELM in Flax NNX (imports only jax and flax, and the floors below: config, kernels, rules)."""

from elm_jax.model.openelm import (
    OpenELM,
    abstract_model,
    abstract_params,
    build,
    flops_per_token,
    param_count,
)

__all__ = ["OpenELM", "abstract_model", "abstract_params", "build", "flops_per_token",
           "param_count"]
