"""Flash attention for TPUs in Pallas (Mosaic): the KV loop is the last grid axis.

Mosaic tiles the last two dimensions of every block onto (sublane, lane) registers, so the kernels
work on ``[batch, heads, seq, head_dim]`` (q, k, v are transposed on the way in, the outputs on
the way out). The per-row softmax statistics (log-sum-exp, ``delta``) live in HBM as ``[1, seq]``
rows: as ``[seq, 1]`` columns TPU tiling pads each float to 128 lanes, 128x their size, and XLA
keeps them from the forward to the backward. The kernels transpose one block in VMEM, on the way in
or out, where they need a column. Each program owns one output tile and reduces over the last grid
axis ("arbitrary" semantics) into VMEM scratch; Pallas double-buffers the HBM->VMEM copies of
the tiles the index maps select.

Skipped blocks cost neither compute nor memory traffic: a ``pl.when`` guards the compute, and the
index maps clamp the block index to the last (or first) block the tile needs, so the pipeline
sees an unchanged block index and issues no copy. GQA lives in the index maps too: query head
``h`` reads KV head ``h // groups``, and the dK/dV grid's reduction axis runs over the ``groups``
query heads of its KV head times the query blocks. The math lives in ``flash_common``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from elm_jax.kernels import flash_common as fc

# Large tiles amortise the ~0.35 us per grid step; 512 x 512 f32 scores are 1 MiB of VMEM.
# Not yet tuned on hardware (no TPU measurement so far).
DEFAULT_BLOCKS = fc.BlockSizes(block_q=512, block_kv=512, block_q_dq=512, block_kv_dq=256,
                               block_q_dkv=256, block_kv_dkv=512)
LANES = 128
_REDUCE_LAST = pltpu.CompilerParams(
    dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _run_blocks(visit, full: jax.Array, begin: jax.Array, end: jax.Array) -> None:
    """``visit(masked)`` for this grid step: unmasked when below ``full``, masked in [begin, end)."""
    pl.when(full)(lambda: visit(False))
    pl.when(jnp.logical_and(begin, end))(lambda: visit(True))


def _forward_kernel(q_ref, k_ref, v_ref, *refs, cfg: fc.FlashConfig):
    q_seg_ref, kv_seg_ref, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = fc.split_segment_refs(
        refs, cfg.has_segments)
    bq, bk = cfg.blocks.block_q, cfg.blocks.block_kv
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        for ref, value in zip((m_ref, l_ref, acc_ref), fc.SoftmaxState.initial(*acc_ref.shape)):
            ref[...] = value

    def visit(masked):
        mask = None
        if masked:
            segs = (None, None) if q_seg_ref is None else (q_seg_ref[...], kv_seg_ref[...])
            mask = fc.score_mask(i * bq, j * bk, (bq, bk), cfg, *segs)
        state = fc.SoftmaxState(m_ref[...], l_ref[...], acc_ref[...])
        state = fc.online_softmax_step(state, q_ref[...], k_ref[...], v_ref[...], cfg.scale2,
                                       mask)
        m_ref[...], l_ref[...], acc_ref[...] = state

    full_end, end = fc.kv_block_bounds(i, cfg, bq, bk)
    _run_blocks(visit, j < full_end, j >= full_end, j < end)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        out, lse = fc.finish_softmax(fc.SoftmaxState(m_ref[...], l_ref[...], acc_ref[...]))
        o_ref[...] = out.astype(o_ref.dtype)
        lse_ref[...] = lse.T  # the column to its [1, block_q] row


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: fc.FlashConfig):
    q_seg_ref, kv_seg_ref, (dq_ref, acc_ref) = fc.split_segment_refs(refs, cfg.has_segments)
    bq, bk = cfg.blocks.block_q_dq, cfg.blocks.block_kv_dq
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def visit(masked):
        mask = None
        if masked:
            segs = (None, None) if q_seg_ref is None else (q_seg_ref[...], kv_seg_ref[...])
            mask = fc.score_mask(i * bq, j * bk, (bq, bk), cfg, *segs)
        acc_ref[...] = fc.dq_step(acc_ref[...], q_ref[...], k_ref[...], v_ref[...], do_ref[...],
                                  lse_ref[...].T, delta_ref[...].T, cfg.scale2, mask)

    full_end, end = fc.kv_block_bounds(i, cfg, bq, bk)
    _run_blocks(visit, j < full_end, j >= full_end, j < end)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (acc_ref[...] * cfg.sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: fc.FlashConfig):
    q_seg_ref, kv_seg_ref, (dk_ref, dv_ref, dk_acc, dv_acc) = fc.split_segment_refs(
        refs, cfg.has_segments)
    bq, bk = cfg.blocks.block_q_dkv, cfg.blocks.block_kv_dkv
    j, r = pl.program_id(2), pl.program_id(3)
    qi = lax.rem(r, cfg.padded_len // bq)

    @pl.when(r == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    def visit(masked):
        mask = None
        if masked:
            segs = (None, None) if q_seg_ref is None else (q_seg_ref[...], kv_seg_ref[...])
            mask = fc.score_mask(qi * bq, j * bk, (bk, bq), cfg, *segs, transposed=True)
        dk_acc[...], dv_acc[...] = fc.dkv_step(
            dk_acc[...], dv_acc[...], q_ref[...], k_ref[...], v_ref[...], do_ref[...],
            lse_ref[...], delta_ref[...], cfg.scale2, mask)

    start, full_start = fc.q_block_bounds(j, cfg, bq, bk)
    _run_blocks(visit, qi >= full_start, qi >= start, qi < full_start)

    @pl.when(r == pl.num_programs(3) - 1)
    def _finish():
        dk_ref[...] = (dk_acc[...] * cfg.sm_scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _to_heads_major(*xs: jax.Array) -> list[jax.Array]:
    return [x.transpose(0, 2, 1, 3) for x in xs]


def _check_tiles(cfg: fc.FlashConfig) -> None:
    """Mosaic needs lane-dim tiles (statistics rows, key-side segment ids) of 128k or the whole seq."""
    if cfg.interpret:
        return
    lane_blocks = {"block_q": cfg.blocks.block_q, "block_q_dq": cfg.blocks.block_q_dq,
                   "block_q_dkv": cfg.blocks.block_q_dkv}
    if cfg.has_segments:
        lane_blocks |= {"block_kv": cfg.blocks.block_kv, "block_kv_dq": cfg.blocks.block_kv_dq}
    for name, block in lane_blocks.items():
        if block % LANES and block != cfg.padded_len:
            raise ValueError(f"TPU flash attention: BlockSizes.{name}={block} must be a multiple "
                             f"of {LANES} (or cover the whole padded sequence, {cfg.padded_len})")


def _call(kernel, cfg, grid, in_specs, out_specs, out_shape, scratch, name):
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg), out_shape=out_shape,
        grid_spec=pl.GridSpec(grid=grid, in_specs=in_specs, out_specs=out_specs,
                              scratch_shapes=scratch),
        compiler_params=_REDUCE_LAST, interpret=cfg.interpret, name=name,
    )


def _query_side_specs(cfg: fc.FlashConfig, bq: int, bk: int, head_dim: int):
    """Specs for the forward and dQ grids ``(batch, head, q block, kv block)``."""

    def kv_block(i, j):
        return jnp.minimum(j, fc.kv_block_bounds(i, cfg, bq, bk)[1] - 1)

    own = pl.BlockSpec((None, None, bq, head_dim), lambda b, h, i, j: (b, h, i, 0))
    shared_kv = pl.BlockSpec((None, None, bk, head_dim),
                             lambda b, h, i, j: (b, lax.div(h, cfg.groups), kv_block(i, j), 0))
    stats = pl.BlockSpec((None, None, 1, bq), lambda b, h, i, j: (b, h, 0, i))  # rows
    segments = [pl.BlockSpec((None, bq, 1), lambda b, h, i, j: (b, i, 0)),
                pl.BlockSpec((None, 1, bk), lambda b, h, i, j: (b, 0, kv_block(i, j)))]
    return own, shared_kv, stats, segments


def _segment_args(seg: jax.Array | None, query_column: bool) -> list[jax.Array]:
    """Segment ids as a ``[batch, seq, 1]`` column and a ``[batch, 1, seq]`` row, in the order the
    kernel's query side and key side need them."""
    if seg is None:
        return []
    column, row = seg[:, :, None], seg[:, None, :]
    return [column, row] if query_column else [row, column]


def forward(q, k, v, seg, cfg):
    _check_tiles(cfg)
    batch, seq, heads, head_dim = q.shape
    bq, bk = cfg.blocks.block_q, cfg.blocks.block_kv
    own, shared_kv, stats, seg_specs = _query_side_specs(cfg, bq, bk, head_dim)
    in_specs = [own, shared_kv, shared_kv] + (seg_specs if seg is not None else [])
    out, lse = _call(
        _forward_kernel, cfg, (batch, heads, seq // bq, seq // bk), in_specs, [own, stats],
        [jax.ShapeDtypeStruct((batch, heads, seq, head_dim), q.dtype),
         jax.ShapeDtypeStruct((batch, heads, 1, seq), jnp.float32)],
        [pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
         pltpu.VMEM((bq, head_dim), jnp.float32)], "flash_fwd",
    )(*_to_heads_major(q, k, v), *_segment_args(seg, query_column=True))
    return out.transpose(0, 2, 1, 3), lse


def dq(q, k, v, seg, do, lse, delta, cfg):
    _check_tiles(cfg)
    batch, seq, heads, head_dim = q.shape
    bq, bk = cfg.blocks.block_q_dq, cfg.blocks.block_kv_dq
    own, shared_kv, stats, seg_specs = _query_side_specs(cfg, bq, bk, head_dim)
    in_specs = [own, shared_kv, shared_kv, own, stats, stats]
    in_specs += seg_specs if seg is not None else []
    qt, kt, vt, dot = _to_heads_major(q, k, v, do)
    grad = _call(
        _dq_kernel, cfg, (batch, heads, seq // bq, seq // bk), in_specs, own,
        jax.ShapeDtypeStruct(qt.shape, q.dtype), [pltpu.VMEM((bq, head_dim), jnp.float32)],
        "flash_dq",
    )(qt, kt, vt, dot, lse, delta, *_segment_args(seg, query_column=True))
    return grad.transpose(0, 2, 1, 3)


def dkv(q, k, v, seg, do, lse, delta, cfg):
    _check_tiles(cfg)
    batch, seq, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    bq, bk = cfg.blocks.block_q_dkv, cfg.blocks.block_kv_dkv
    n_q = seq // bq

    def q_block(j, r):  # reduction step r walks (group member, query block); skip the causal head
        return jnp.maximum(lax.rem(r, n_q), fc.q_block_bounds(j, cfg, bq, bk)[0])

    def q_head(h, r):
        return h * cfg.groups + lax.div(r, n_q)

    queries = pl.BlockSpec((None, None, bq, head_dim),
                           lambda b, h, j, r: (b, q_head(h, r), q_block(j, r), 0))
    own = pl.BlockSpec((None, None, bk, head_dim), lambda b, h, j, r: (b, h, j, 0))
    rows = pl.BlockSpec((None, None, 1, bq), lambda b, h, j, r: (b, q_head(h, r), 0, q_block(j, r)))
    in_specs = [queries, own, own, queries, rows, rows]
    if seg is not None:
        in_specs += [pl.BlockSpec((None, 1, bq), lambda b, h, j, r: (b, 0, q_block(j, r))),
                     pl.BlockSpec((None, bk, 1), lambda b, h, j, r: (b, j, 0))]
    qt, kt, vt, dot = _to_heads_major(q, k, v, do)
    shape = jax.ShapeDtypeStruct(kt.shape, k.dtype)
    dk, dv = _call(
        _dkv_kernel, cfg, (batch, kv_heads, seq // bk, cfg.groups * n_q), in_specs, [own, own],
        [shape, shape], [pltpu.VMEM((bk, head_dim), jnp.float32)] * 2, "flash_dkv",
    )(qt, kt, vt, dot, lse, delta, *_segment_args(seg, query_column=False))
    return dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)


KERNELS = fc.Kernels(forward, dq, dkv)


def flash_attention_tpu(q: jax.Array, k: jax.Array, v: jax.Array,
                        segment_ids: jax.Array | None = None, *, causal: bool = True,
                        block_sizes: fc.BlockSizes | None = None, sm_scale: float | None = None,
                        interpret: bool = False) -> jax.Array:
    """Flash attention (Pallas/Mosaic) on ``[batch, seq, heads, head_dim]``; differentiable.

    Runs per device: under a sharded ``jit`` call it through ``elm_jax.kernels.attention``, which
    wraps it in ``shard_map``.
    """
    return fc.flash_attention(q, k, v, segment_ids, kernels=KERNELS, causal=causal,
                              block_sizes=block_sizes or DEFAULT_BLOCKS, sm_scale=sm_scale,
                              interpret=interpret)
