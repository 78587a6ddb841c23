"""A preallocated KV cache and the model's forward pass that reads and writes it.

The cache holds one ``(k, v)`` pair per layer, each ``[batch, length, kv_heads, head_dim]`` with
that layer's own kv-head count (OpenELM scales heads per layer). Rows are left-padded: row ``b``
holds real tokens from slot ``start[b]`` on, so every row's newest token sits in the same slot and
a decode step writes one column for the whole batch. RoPE positions count from each row's start.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from elm_jax.infer.sharding import constrain_kv
from elm_jax.kernels.reference import xla_attention
from elm_jax.model import OpenELM


class KVCache(NamedTuple):
    """Per-layer keys and values plus each row's first real slot."""

    layers: tuple[tuple[jax.Array, jax.Array], ...]
    start: jax.Array  # int32 [batch]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[1]


def init_cache(model: OpenELM, batch: int, length: int, start: jax.Array,
               dtype: jnp.dtype) -> KVCache:
    """Zeros for every layer (inside jit this allocates directly on the devices)."""
    layers = []
    for layer in model.layers:
        q_heads = layer.attn.q_proj[...].shape[1]
        kv_heads, head_dim = layer.attn.k_proj[...].shape[1:]
        zeros = constrain_kv(jnp.zeros((batch, length, kv_heads, head_dim), dtype), q_heads)
        layers.append((zeros, zeros))
    return KVCache(tuple(layers), start.astype(jnp.int32))


def forward_cached(model: OpenELM, tokens: jax.Array, cache: KVCache,
                   index: jax.Array | int) -> tuple[jax.Array, KVCache]:
    """Run ``tokens`` ``[batch, seq]`` occupying slots ``index .. index+seq-1`` of the cache.

    Returns float32 logits of the last slot ``[batch, vocab]`` and the cache with these slots
    written. Each query attends to the cached slots up to its own, from its row's start on.
    """
    seq, length = tokens.shape[1], cache.length
    slots = index + jnp.arange(seq)
    positions = jnp.maximum(slots[None, :] - cache.start[:, None], 0)
    kv_segments = (jnp.arange(length)[None, :] >= cache.start[:, None]).astype(jnp.int32)
    q_segments = jax.lax.dynamic_slice_in_dim(kv_segments, index, seq, axis=1)

    written: list[tuple[jax.Array, jax.Array]] = []
    x = model.embed_tokens(tokens)
    for layer, (k_cache, v_cache) in zip(model.layers, cache.layers):

        def attend(h, attn=layer.attn, k_cache=k_cache, v_cache=v_cache):
            q, k, v = attn.project(h, positions)
            k_all, v_all = (
                jax.lax.dynamic_update_slice_in_dim(
                    cached, constrain_kv(new.astype(cached.dtype), q.shape[2]), index, axis=1)
                for cached, new in ((k_cache, k), (v_cache, v)))
            written.append((k_all, v_all))
            out = xla_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype),
                                segment_ids=q_segments, kv_segment_ids=kv_segments,
                                q_offset=index, causal=True)
            return attn.output(out)

        x = layer.block(x, attend)
    logits = model.logits(x[:, -1:])[:, 0]
    return logits, KVCache(tuple(written), cache.start)
