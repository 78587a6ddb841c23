"""The one attention entry point: the model calls this and never knows which kernel runs."""

from __future__ import annotations

import jax

from elm_jax.kernels.reference import xla_attention

IMPLS = ("auto", "xla", "pallas", "pallas_tpu", "pallas_gpu", "cudnn")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    causal: bool = True,
    impl: str = "auto",
    interpret: bool = False,
) -> jax.Array:
    """Causal (by default) grouped-query attention.

    q ``[batch, seq, q_heads, head_dim]``, k and v ``[batch, seq, kv_heads, head_dim]``,
    ``segment_ids`` int32 ``[batch, seq]`` (tokens attend only within their segment).
    Returns q's shape and dtype.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {', '.join(IMPLS)}")
    if impl in ("auto", "xla"):
        return xla_attention(q, k, v, segment_ids=segment_ids, causal=causal)
    raise NotImplementedError(
        f"attention impl {impl!r} is not available in this build; use impl='xla'"
    )
