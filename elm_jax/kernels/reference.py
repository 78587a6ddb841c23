"""Attention in plain XLA: the reference every kernel is checked against, and the CPU default.

Grouped-query attention is computed by folding query heads into (kv_head, group) so that K and V
are never repeated in memory: query head ``j * g + i`` uses kv head ``j`` (repeat-interleave).
Softmax runs in float32 whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(
    q_len: int,
    kv_len: int,
    *,
    causal: bool,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_offset: int | jax.Array = 0,
) -> jax.Array | None:
    """Boolean ``[batch or 1, 1, q_len, kv_len]`` mask (True = may attend), or None for no mask.

    ``q_offset`` is the absolute position of the first query row, so that decoding one token
    against a longer key cache stays causal.
    """
    mask = None
    if causal:
        q_pos = jnp.arange(q_len)[:, None] + q_offset
        k_pos = jnp.arange(kv_len)[None, :]
        mask = (k_pos <= q_pos)[None, None]
    if q_segment_ids is not None:
        kv_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids
        same = q_segment_ids[:, None, :, None] == kv_ids[:, None, None, :]
        mask = same if mask is None else mask & same
    return mask


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    causal: bool = True,
    kv_segment_ids: jax.Array | None = None,
    q_offset: int | jax.Array = 0,
) -> jax.Array:
    """softmax(q k^T / sqrt(h) + mask) v with q ``[B, S, H, D]``, k/v ``[B, T, K, D]``, H % K == 0."""
    batch, q_len, q_heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if q_heads % kv_heads:
        raise ValueError(f"{q_heads} query heads are not a multiple of {kv_heads} kv heads")
    groups = q_heads // kv_heads
    qg = q.reshape(batch, q_len, kv_heads, groups, head_dim)
    logits = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32)
    logits = logits * (head_dim ** -0.5)
    mask = attention_mask(
        q_len, kv_len, causal=causal, q_segment_ids=segment_ids,
        kv_segment_ids=kv_segment_ids, q_offset=q_offset,
    )
    if mask is not None:
        logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bkgst,btkd->bskgd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.reshape(batch, q_len, q_heads, head_dim).astype(q.dtype)
