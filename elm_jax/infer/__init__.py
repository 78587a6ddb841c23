"""Inference: KV-cache generation with greedy, temperature, top-k and top-p sampling."""

from elm_jax.infer.decode import Step, check_length, generate, stream
from elm_jax.infer.sampling import Sampling

__all__ = ["Sampling", "Step", "check_length", "generate", "stream"]
