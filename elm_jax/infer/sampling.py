"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

The order follows the convention users know from HF ``generate``: divide by the temperature, keep
the ``top_k`` largest logits, then the smallest set whose probability reaches ``top_p``, then draw.
Each batch row draws with its own key (``fold_in`` of the row index), so a row's sample does not
depend on how many other rows share the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from elm_jax.errors import ConfigError

MASKED = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to pick tokens; hashable, so a jitted decoder compiles once per setting."""

    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
        if self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k} must be >= 0 (0 disables it)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1] (1 disables it)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_mask(logits: jax.Array, k: int) -> jax.Array:
    """``logits`` with everything below the k-th largest value per row set to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, MASKED, logits)


def top_p_mask(logits: jax.Array, p: float) -> jax.Array:
    """Keep the smallest set of most likely tokens whose probability sum reaches ``p``.

    A token survives when the probability of all strictly more likely tokens is below ``p``;
    the most likely token always survives.
    """
    if p >= 1.0:
        return logits
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered.astype(jnp.float32), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum(before < p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    return jnp.where(logits < threshold, MASKED, logits)


def filtered_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """Temperature-scaled, top-k and top-p filtered float32 logits (what is sampled from)."""
    scaled = logits.astype(jnp.float32) / sampling.temperature
    return top_p_mask(top_k_mask(scaled, sampling.top_k), sampling.top_p)


def sample(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """int32 tokens ``[batch]`` from logits ``[batch, vocab]``."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filtered_logits(logits, sampling)
    keys = jax.vmap(lambda row: jax.random.fold_in(key, row))(jnp.arange(logits.shape[0]))
    return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
