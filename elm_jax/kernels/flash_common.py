"""What the TPU (Mosaic) and GPU (Triton) flash-attention kernels share.

Both backends run the same algorithm (FlashAttention-2): the forward pass streams KV blocks through
an online softmax and saves only the output and the log-sum-exp (LSE) of each query row; the
backward pass recomputes the probabilities from that LSE in two kernels, one that owns a query
block and accumulates dQ, one that owns a KV block and accumulates dK and dV over every query
head of its group (grouped-query attention never repeats K/V: the index maps send query head
``h`` to KV head ``h // groups``). This module holds every piece that does not depend on the
backend:

- ``BlockSizes`` (configurable, validated, fitted to short sequences) and ``FlashConfig``, the
  static description a kernel is specialised on;
- block bookkeeping: which KV blocks a query block must visit, which of them need a mask
  (causal diagonal, padded keys, segment ids) and which are skipped entirely (causal);
- the per-block math (scores, online-softmax update, dQ and dK/dV updates) as plain ``jnp`` on
  2-D tiles, which lowers through both Mosaic and Triton;
- the ``custom_vjp`` wrapper: padding, the LSE residual, ``delta = rowsum(dO * O)``.

Numerics: scores, softmax statistics and accumulators are float32 whatever the input dtype; the
probabilities are cast to the input dtype only as matmul operands (as every flash kernel does).
Scores are kept in base 2 (scaled by ``log2(e)``) so the kernels use ``exp2``, one instruction on
GPUs. Ragged lengths are padded up to a multiple of the largest block and the padded keys are
masked in the blocks that contain them; padded query rows are computed and sliced off, and their
zero output cotangent keeps them out of dK/dV.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LOG2E = math.log2(math.e)
# Finite "minus infinity": exp2(MASK_VALUE - m) underflows to exactly 0 for any real row maximum
# m, and no inf - inf can appear in the online softmax.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
MIN_BLOCK = 16  # Triton matmuls need tiles of at least 16; TPU sublane tiling needs 8


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes along the sequence for each of the three kernels (powers of two, >= 16).

    ``block_q`` / ``block_kv`` tile the forward pass, ``*_dq`` the dQ pass and ``*_dkv`` the
    dK/dV pass. Each backend has its own tuned defaults per head_dim.
    """

    block_q: int = 128
    block_kv: int = 128
    block_q_dq: int = 128
    block_kv_dq: int = 128
    block_q_dkv: int = 128
    block_kv_dkv: int = 128

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or not _is_power_of_two(value) or value < MIN_BLOCK:
                raise ValueError(f"BlockSizes.{field.name}={value!r}: expected a power of two "
                                 f">= {MIN_BLOCK}")

    def fitted(self, seq_len: int) -> BlockSizes:
        """Shrink blocks longer than the (power-of-two rounded) sequence, so short inputs pad little."""
        cap = max(MIN_BLOCK, 1 << max(seq_len - 1, 0).bit_length())
        return BlockSizes(**{f.name: min(getattr(self, f.name), cap)
                             for f in dataclasses.fields(self)})

    @property
    def largest(self) -> int:
        return max(getattr(self, f.name) for f in dataclasses.fields(self))


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Everything a kernel is specialised on (static and hashable)."""

    causal: bool
    sm_scale: float
    seq_len: int  # true length; positions >= seq_len are padding
    padded_len: int  # a multiple of every block size
    groups: int  # query heads per KV head
    has_segments: bool
    blocks: BlockSizes
    interpret: bool

    @property
    def scale2(self) -> float:
        """Softmax scale in base-2 units: exp(x * sm_scale) == exp2(x * scale2)."""
        return self.sm_scale * LOG2E

    @property
    def ragged(self) -> bool:
        return self.padded_len != self.seq_len


# ----------------------------------------------------------------------------- block bookkeeping
# All block indices may be traced int32 scalars (grid indices inside a kernel or an index map);
# only non-negative values occur, so lax.div (truncating) is floor division. Python's // on traced
# scalars lowers to sign-corrected code that Triton and the Mosaic scalar core handle poorly.


def kv_block_bounds(q_block: jax.Array, cfg: FlashConfig, block_q: int,
                    block_kv: int) -> tuple[jax.Array, jax.Array]:
    """``(full_end, end)`` for one query block: KV blocks ``[0, full_end)`` need no mask,
    ``[full_end, end)`` need the mask, blocks from ``end`` on are fully masked (causal) and skipped."""
    n_kv = jnp.int32(cfg.padded_len // block_kv)
    if cfg.causal:
        end = lax.div((q_block + 1) * block_q + block_kv - 1, block_kv)
        full_end = lax.div(q_block * block_q + 1, block_kv)
    else:
        end = full_end = n_kv
    if cfg.ragged:  # blocks that hold padded keys are masked
        full_end = jnp.minimum(full_end, cfg.seq_len // block_kv)
    if cfg.has_segments:
        full_end = jnp.int32(0)
    return jnp.asarray(full_end, jnp.int32), jnp.asarray(end, jnp.int32)


def q_block_bounds(kv_block: jax.Array, cfg: FlashConfig, block_q: int,
                   block_kv: int) -> tuple[jax.Array, jax.Array]:
    """``(start, full_start)`` for one KV block: query blocks before ``start`` never see it
    (causal, skipped), ``[start, full_start)`` need the mask, ``[full_start, n_q)`` need none."""
    n_q = cfg.padded_len // block_q
    if cfg.causal:
        start = lax.div(kv_block * block_kv, block_q)
        last_key = (kv_block + 1) * block_kv - 1
        full_start = jnp.minimum(lax.div(last_key + block_q - 1, block_q), n_q)
    else:
        start = full_start = jnp.int32(0)
    if cfg.ragged:
        full_start = jnp.where((kv_block + 1) * block_kv > cfg.seq_len, n_q, full_start)
    if cfg.has_segments:
        full_start = jnp.int32(n_q)
    return jnp.asarray(start, jnp.int32), jnp.asarray(full_start, jnp.int32)


def score_mask(q_start: jax.Array, kv_start: jax.Array, shape: tuple[int, int], cfg: FlashConfig,
               q_segments: jax.Array | None = None, kv_segments: jax.Array | None = None,
               *, transposed: bool = False) -> jax.Array | None:
    """Boolean tile (True = may attend) for queries from ``q_start`` and keys from ``kv_start``.

    Rows are queries, or keys when ``transposed`` (the dK/dV pass). Segment ids arrive already
    shaped to broadcast against the tile (``[rows, 1]`` and ``[1, cols]``).
    """
    rows = lax.broadcasted_iota(jnp.int32, shape, 0)
    cols = lax.broadcasted_iota(jnp.int32, shape, 1)
    q_pos, kv_pos = (cols + q_start, rows + kv_start) if transposed else (rows + q_start,
                                                                          cols + kv_start)
    conditions = []
    if cfg.causal:
        conditions.append(kv_pos <= q_pos)
    if cfg.ragged:
        conditions.append(kv_pos < cfg.seq_len)
    if q_segments is not None:
        conditions.append(q_segments == kv_segments)
    if not conditions:
        return None
    return functools.reduce(jnp.logical_and, conditions)


def split_segment_refs(refs: tuple, has_segments: bool) -> tuple:
    """``(query-side segment ref, key-side segment ref, remaining refs)`` of a kernel's refs
    (the segment refs come first when present, else are None)."""
    if not has_segments:
        return None, None, refs
    return refs[0], refs[1], refs[2:]


# ----------------------------------------------------------------------------- per-block math


def _dot(a: jax.Array, b: jax.Array, *, transpose_b: bool) -> jax.Array:
    """``a @ b`` (or ``a @ b.T``) with float32 accumulation; f32 inputs get full f32 precision.

    Half-precision operands say DEFAULT explicitly: Mosaic rejects an fp32 contract precision
    on bf16 operands, which a global ``jax_default_matmul_precision`` would otherwise impose.
    """
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else lax.Precision.DEFAULT
    dims = (((1,), (1 if transpose_b else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _scores(a: jax.Array, b: jax.Array, scale2: float, mask: jax.Array | None) -> jax.Array:
    s = _dot(a, b, transpose_b=True) * scale2
    return s if mask is None else jnp.where(mask, s, MASK_VALUE)


class SoftmaxState(NamedTuple):
    """Running row maximum and row sum ``[block_q, 1]`` and unnormalised output ``[block_q, D]``."""

    m: jax.Array
    l: jax.Array  # noqa: E741 (the paper's name)
    acc: jax.Array

    @classmethod
    def initial(cls, block_q: int, head_dim: int) -> SoftmaxState:
        return cls(jnp.full((block_q, 1), MASK_VALUE, jnp.float32),
                   jnp.zeros((block_q, 1), jnp.float32),
                   jnp.zeros((block_q, head_dim), jnp.float32))


def online_softmax_step(state: SoftmaxState, q: jax.Array, k: jax.Array, v: jax.Array,
                        scale2: float, mask: jax.Array | None) -> SoftmaxState:
    """Fold one KV block into the running softmax (FlashAttention-2, base 2)."""
    s = _scores(q, k, scale2, mask)
    m = jnp.maximum(state.m, jnp.max(s, axis=1, keepdims=True))
    p = jnp.exp2(s - m)
    alpha = jnp.exp2(state.m - m)
    l = alpha * state.l + jnp.sum(p, axis=1, keepdims=True)  # noqa: E741
    acc = alpha * state.acc + _dot(p.astype(v.dtype), v, transpose_b=False)
    return SoftmaxState(m, l, acc)


def finish_softmax(state: SoftmaxState) -> tuple[jax.Array, jax.Array]:
    """Normalised output (f32) and base-2 LSE ``[block_q, 1]``.

    A row sees at least one key (itself, when causal), so ``l >= 1`` after the row maximum.
    """
    return state.acc / state.l, state.m + jnp.log2(state.l)


def dq_step(dq: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, do: jax.Array,
            lse: jax.Array, delta: jax.Array, scale2: float, mask: jax.Array | None) -> jax.Array:
    """Add one KV block's share to dQ (``lse``, ``delta``: ``[block_q, 1]``); scale by sm_scale after."""
    p = jnp.exp2(_scores(q, k, scale2, mask) - lse)
    ds = p * (_dot(do, v, transpose_b=True) - delta)
    return dq + _dot(ds.astype(k.dtype), k, transpose_b=False)


def dkv_step(dk: jax.Array, dv: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array,
             do: jax.Array, lse_row: jax.Array, delta_row: jax.Array, scale2: float,
             mask_t: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Add one query block's share to dK and dV, computed transposed (rows are keys) so every
    matmul is A@B or A@B^T; ``lse_row``, ``delta_row``: ``[1, block_q]``. dK is scaled after."""
    p_t = jnp.exp2(_scores(k, q, scale2, mask_t) - lse_row)
    dv = dv + _dot(p_t.astype(do.dtype), do, transpose_b=False)
    ds_t = p_t * (_dot(v, do, transpose_b=True) - delta_row)
    dk = dk + _dot(ds_t.astype(q.dtype), q, transpose_b=False)
    return dk, dv


# ----------------------------------------------------------------------------- custom_vjp


class Kernels(NamedTuple):
    """One backend's three pallas_calls, all on padded ``[batch, seq, heads, head_dim]`` arrays.

    ``forward(q, k, v, seg, cfg) -> (out, lse)`` with the float32 log-sum-exp of each query row
    in the backend's layout (``[batch, q_heads, seq, 1]`` on GPU, ``[batch, q_heads, 1, seq]`` on
    TPU, whose tiling would pad a trailing 1 to 128 lanes); ``dq(q, k, v, seg, do, lse, delta,
    cfg) -> dq``; ``dkv(...same...) -> (dk, dv)``; ``delta`` comes in lse's shape. ``seg`` is
    int32 ``[batch, seq]`` or None.
    """

    forward: Callable
    dq: Callable
    dkv: Callable


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, segment_ids, cfg: FlashConfig, kernels: Kernels):
    return kernels.forward(q, k, v, segment_ids, cfg)[0]


def _flash_fwd(q, k, v, segment_ids, cfg, kernels):
    out, lse = kernels.forward(q, k, v, segment_ids, cfg)
    return out, (q, k, v, segment_ids, out, lse)


def _flash_bwd(cfg, kernels, residuals, d_out):
    q, k, v, segment_ids, out, lse = residuals
    d_out = d_out.astype(q.dtype)
    delta = jnp.einsum("bshd,bshd->bhs", out.astype(jnp.float32), d_out.astype(jnp.float32))
    delta = delta.reshape(lse.shape)  # the backend's layout of per-row statistics
    dq = kernels.dq(q, k, v, segment_ids, d_out, lse, delta, cfg)
    dk, dv = kernels.dkv(q, k, v, segment_ids, d_out, lse, delta, cfg)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def check_inputs(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None) -> None:
    """Clear errors for shapes the kernels do not serve (self-attention, GQA, equal head dims)."""
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ValueError(f"expected q [batch, seq, heads, head_dim] and k, v of one shape "
                         f"[batch, seq, kv_heads, head_dim]; got q {q.shape}, k {k.shape}, "
                         f"v {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"flash attention is self-attention: q {q.shape} and k {k.shape} must "
                         "share batch, sequence length and head_dim (use impl='xla' otherwise)")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} kv heads")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if segment_ids is not None and segment_ids.shape != q.shape[:2]:
        raise ValueError(f"segment_ids must be [batch, seq] = {q.shape[:2]}; got "
                         f"{segment_ids.shape}")


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *,
                    kernels: Kernels, causal: bool, block_sizes: BlockSizes,
                    sm_scale: float | None, interpret: bool) -> jax.Array:
    """Pad to the block grid, run ``kernels`` under the shared custom VJP, slice the padding off."""
    check_inputs(q, k, v, segment_ids)
    seq_len, head_dim = q.shape[1], q.shape[3]
    blocks = block_sizes.fitted(seq_len)
    padded_len = -(-seq_len // blocks.largest) * blocks.largest
    cfg = FlashConfig(
        causal=causal, sm_scale=head_dim ** -0.5 if sm_scale is None else float(sm_scale),
        seq_len=seq_len, padded_len=padded_len, groups=q.shape[2] // k.shape[2],
        has_segments=segment_ids is not None, blocks=blocks, interpret=interpret,
    )
    pad = padded_len - seq_len
    if pad:
        widths = ((0, 0), (0, pad), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
        if segment_ids is not None:
            segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)))
    if segment_ids is not None:
        segment_ids = segment_ids.astype(jnp.int32)
    out = _flash(q, k, v, segment_ids, cfg, kernels)
    return out[:, :seq_len] if pad else out
