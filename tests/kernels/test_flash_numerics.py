"""Both flash kernels, in the Pallas interpreter, against a plain-jnp float32 reference.

The reference below is written here on purpose (repeated K/V, an explicit [S, S] mask, a plain
softmax) and shares no code with the kernels or with ``elm_jax.kernels.reference``. Small blocks
(16 to 32) put several blocks on every axis, so causal skipping, diagonal masking, padded ragged
tails and GQA index maps are all exercised at tiny shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elm_jax.kernels.flash_common import BlockSizes
from elm_jax.kernels.flash_gpu import flash_attention_gpu
from elm_jax.kernels.flash_tpu import flash_attention_tpu

KERNELS = {"tpu": flash_attention_tpu, "gpu": flash_attention_gpu}
SMALL = BlockSizes(16, 16, 16, 16, 16, 16)
# Query and key tiles of different sizes in every pass, so block bookkeeping cannot assume equal.
UNEQUAL = BlockSizes(block_q=32, block_kv=16, block_q_dq=16, block_kv_dq=32, block_q_dkv=32,
                     block_kv_dkv=16)
TOLERANCE = {jnp.float32: (1e-5, 1e-4), jnp.bfloat16: (3e-2, 1e-1)}  # (output, gradients)


def reference_attention(q, k, v, segment_ids, causal):
    """softmax(q k^T / sqrt(d) + mask) v in float32, K/V repeated to the query heads."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / np.sqrt(q.shape[-1])
    seq = q.shape[1]
    allowed = np.ones((seq, seq), bool)
    if causal:
        allowed = np.tril(allowed)
    allowed = jnp.asarray(allowed)[None, None]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    scores = jnp.where(allowed, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision="highest")


def _inputs(batch, seq, heads, kv_heads, head_dim, dtype, packed, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (batch, seq, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (batch, seq, kv_heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(keys[2], (batch, seq, kv_heads, head_dim), jnp.float32).astype(dtype)
    d_out = jax.random.normal(keys[3], q.shape, jnp.float32).astype(dtype)
    segment_ids = None
    if packed:  # documents of random lengths starting at 1, as the packing pipeline emits them
        starts = jax.random.bernoulli(keys[4], 0.12, (batch, seq)).astype(jnp.int32)
        segment_ids = 1 + jnp.cumsum(starts.at[:, 0].set(0), axis=1)
        assert int(segment_ids.max()) > 1
    return q, k, v, d_out, segment_ids


CASES = {  # name: (batch, seq, heads, kv_heads, head_dim, causal, packed, dtype, blocks)
    "causal_gqa4_ragged_f32": (1, 40, 4, 1, 64, True, False, jnp.float32, SMALL),
    "full_mha_packed_d128_f32": (1, 32, 3, 3, 128, False, True, jnp.float32, SMALL),
    "causal_gqa4_odd_kv_packed_bf16": (2, 48, 12, 3, 64, True, True, jnp.bfloat16, UNEQUAL),
    "full_gqa4_ragged_unequal_bf16": (1, 72, 4, 1, 128, False, False, jnp.bfloat16, UNEQUAL),
    "causal_mha_ragged_unequal_f32": (1, 72, 1, 1, 64, True, False, jnp.float32, UNEQUAL),
}


@pytest.mark.parametrize("backend", sorted(KERNELS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_reference_forward_and_gradients(backend, case):
    batch, seq, heads, kv_heads, head_dim, causal, packed, dtype, blocks = CASES[case]
    q, k, v, d_out, segment_ids = _inputs(batch, seq, heads, kv_heads, head_dim, dtype, packed)
    kernel = KERNELS[backend]

    def flash(q, k, v):
        return kernel(q, k, v, segment_ids, causal=causal, block_sizes=blocks, interpret=True)

    @jax.jit
    def forward_backward(q, k, v, d_out):
        out, vjp = jax.vjp(flash, q, k, v)
        return out, vjp(d_out)

    out, grads = forward_backward(q, k, v, d_out)
    ref_out, ref_vjp = jax.vjp(lambda *x: reference_attention(*x, segment_ids, causal),
                               *(x.astype(jnp.float32) for x in (q, k, v)))
    ref_grads = ref_vjp(d_out.astype(jnp.float32))

    assert out.shape == q.shape and out.dtype == q.dtype
    out_tol, grad_tol = TOLERANCE[dtype]
    np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=out_tol, rtol=out_tol)
    for name, grad, ref, primal in zip("qkv", grads, ref_grads, (q, k, v)):
        assert grad.shape == primal.shape and grad.dtype == primal.dtype, name
        np.testing.assert_allclose(np.asarray(grad, np.float32), ref, atol=grad_tol,
                                   rtol=grad_tol, err_msg=f"d{name}")
