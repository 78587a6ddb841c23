"""A few sampled continuations at the end of a run: a glance at what the model learned.

Deliberately simple (the whole fixed-length window is recomputed per token, one compiled function):
fine for the short lines of a training report; ``elm_jax.infer`` is the real, KV-cached decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample_tokens(gdef: nnx.GraphDef, params, prompts: list[np.ndarray], *, length: int,
                  new_tokens: int, temperature: float = 0.8, seed: int = 0,
                  stop_ids: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Continue each prompt by up to ``new_tokens`` tokens in a window of ``length`` tokens."""
    n = len(prompts)
    start = min(len(p) for p in prompts)
    window = np.zeros((n, length), np.int32)
    for i, p in enumerate(prompts):
        window[i, :start] = p[:start]
    end = min(length, start + new_tokens)

    @jax.jit
    def next_token(params, tokens: jax.Array, t: jax.Array, key: jax.Array) -> jax.Array:
        logits = nnx.merge(gdef, params)(tokens)
        last = jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False)
        return jax.random.categorical(key, last / temperature).astype(jnp.int32)

    tokens = jnp.asarray(window)
    key = jax.random.key(seed)
    for t in range(start, end):
        key, sub = jax.random.split(key)
        tokens = tokens.at[:, t].set(next_token(params, tokens, jnp.int32(t), sub))
    out = []
    for row in np.asarray(tokens)[:, :end]:
        cut = next((j for j in range(start, end) if row[j] in stop_ids), end)
        out.append(row[:cut])
    return out
