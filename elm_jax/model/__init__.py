"""OpenELM in Flax NNX (imports only jax and flax)."""

from elm_jax.model.openelm import OpenELM, abstract_model, build, flops_per_token, param_count
from elm_jax.model.scaling import LayerShape, layer_shapes, make_divisible

__all__ = ["LayerShape", "OpenELM", "abstract_model", "build", "flops_per_token",
           "layer_shapes", "make_divisible", "param_count"]
