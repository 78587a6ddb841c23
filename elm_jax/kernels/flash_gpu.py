"""Flash attention for NVIDIA GPUs in Pallas, on the Triton backend.

Why Triton and not Mosaic GPU: JAX is moving Pallas GPU to Mosaic GPU and deprecated the Triton
backend in 0.11 (it warns once per kernel lowering), but we must run on jax 0.10.2 (Python 3.11)
and 0.11.x (the GPU machines). The Triton backend lowers and runs the same portable kernel code on
both, can be lowered for CUDA on a CPU-only machine (our CI check), and lets Triton pick Hopper
tensor-core instructions itself. Mosaic GPU kernels are written against a warpgroup/TMA API that
changed between those releases and is Hopper/Blackwell-only. The deprecation warning is filtered
for these kernels only; move to Mosaic GPU when the supported jax floor has a stable API for it.

Layout is the model's own ``[batch, seq, heads, head_dim]`` (no transposes: Triton loads strided
tiles directly). Grids: forward and dQ run one program per (query block, batch, query head) and
loop over KV blocks, stopping at the causal diagonal; dK/dV runs one program per (KV block, batch,
KV head) and loops over the ``groups`` query heads that share that KV head, then over query blocks
from the diagonal on, so K/V are never repeated. The math lives in ``flash_common``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from elm_jax.kernels import flash_common as fc

warnings.filterwarnings("ignore", message="The Pallas Triton backend is deprecated")


@dataclasses.dataclass(frozen=True)
class GpuTuning:
    """Triton launch parameters per kernel: warps per program and software-pipelining depth."""

    warps_fwd: int = 4
    warps_dq: int = 4
    warps_dkv: int = 4
    stages: int = 3


# head_dim -> (BlockSizes, GpuTuning). Forward: large query tile, small KV tile streamed; dQ owns a
# query tile and streams KV; dK/dV owns a KV tile and streams queries (FlashAttention-2 practice).
# Warps chosen so that ptxas (sm_90a, via Triton 3.6 on the lowered kernels) reports no register
# spills: dK/dV keeps two [128, head_dim] f32 accumulators and needs 8 warps even at head_dim 64.
DEFAULTS = {
    64: (fc.BlockSizes(block_q=128, block_kv=64, block_q_dq=128, block_kv_dq=32,
                       block_q_dkv=32, block_kv_dkv=128),
         GpuTuning(warps_fwd=4, warps_dq=4, warps_dkv=8, stages=3)),
    128: (fc.BlockSizes(block_q=128, block_kv=64, block_q_dq=128, block_kv_dq=32,
                        block_q_dkv=32, block_kv_dkv=128),
          GpuTuning(warps_fwd=8, warps_dq=8, warps_dkv=8, stages=2)),
}


def default_tuning(head_dim: int) -> tuple[fc.BlockSizes, GpuTuning]:
    return DEFAULTS.get(head_dim, DEFAULTS[128 if head_dim > 64 else 64])


def _over_kv_blocks(step, carry, *, cfg: fc.FlashConfig, q_block, block_q: int, block_kv: int,
                    q_seg, kv_seg_ref):
    """Fold ``step(carry, kv_slice, mask)`` over the KV blocks query block ``q_block`` sees:
    the fully visible ones without a mask, then those on the diagonal / padding with one."""

    def body(j, carry, masked):
        kv = pl.ds(j * block_kv, block_kv)
        mask = None
        if masked:
            kv_seg = None if kv_seg_ref is None else kv_seg_ref[kv][None, :]
            mask = fc.score_mask(q_block * block_q, j * block_kv, (block_q, block_kv), cfg, q_seg,
                                 kv_seg)
        return step(carry, kv, mask)

    full_end, end = fc.kv_block_bounds(q_block, cfg, block_q, block_kv)
    carry = lax.fori_loop(0, full_end, functools.partial(body, masked=False), carry)
    return lax.fori_loop(full_end, end, functools.partial(body, masked=True), carry)


def _forward_kernel(q_ref, k_ref, v_ref, *refs, cfg: fc.FlashConfig):
    q_seg_ref, kv_seg_ref, (o_ref, lse_ref) = fc.split_segment_refs(refs, cfg.has_segments)
    q = q_ref[...]

    def step(state, kv, mask):
        return fc.online_softmax_step(state, q, k_ref[kv, :], v_ref[kv, :], cfg.scale2, mask)

    state = _over_kv_blocks(
        step, fc.SoftmaxState.initial(*q.shape), cfg=cfg, q_block=pl.program_id(0),
        block_q=cfg.blocks.block_q, block_kv=cfg.blocks.block_kv,
        q_seg=None if q_seg_ref is None else q_seg_ref[...][:, None], kv_seg_ref=kv_seg_ref)
    out, lse = fc.finish_softmax(state)
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: fc.FlashConfig):
    q_seg_ref, kv_seg_ref, (dq_ref,) = fc.split_segment_refs(refs, cfg.has_segments)
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

    def step(dq, kv, mask):
        return fc.dq_step(dq, q, k_ref[kv, :], v_ref[kv, :], do, lse, delta, cfg.scale2, mask)

    dq = _over_kv_blocks(
        step, jnp.zeros(q.shape, jnp.float32), cfg=cfg, q_block=pl.program_id(0),
        block_q=cfg.blocks.block_q_dq, block_kv=cfg.blocks.block_kv_dq,
        q_seg=None if q_seg_ref is None else q_seg_ref[...][:, None], kv_seg_ref=kv_seg_ref)
    dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, cfg: fc.FlashConfig):
    q_seg_ref, kv_seg_ref, (dk_ref, dv_ref) = fc.split_segment_refs(refs, cfg.has_segments)
    bq, bk = cfg.blocks.block_q_dkv, cfg.blocks.block_kv_dkv
    j, kv_head = pl.program_id(0), pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    kv_seg = None if kv_seg_ref is None else kv_seg_ref[...][:, None]
    start, full_start = fc.q_block_bounds(j, cfg, bq, bk)
    n_q = cfg.padded_len // bq

    def head(g, carry):
        h = kv_head * cfg.groups + g

        def body(qi, carry, masked):
            rows = pl.ds(qi * bq, bq)
            mask = None
            if masked:
                q_seg = None if q_seg_ref is None else q_seg_ref[rows][None, :]
                mask = fc.score_mask(qi * bq, j * bk, (bk, bq), cfg, q_seg, kv_seg,
                                     transposed=True)
            return fc.dkv_step(*carry, q_ref[rows, h, :], k, v, do_ref[rows, h, :],
                               lse_ref[h, rows][None, :], delta_ref[h, rows][None, :],
                               cfg.scale2, mask)

        carry = lax.fori_loop(start, full_start, functools.partial(body, masked=True), carry)
        return lax.fori_loop(full_start, n_q, functools.partial(body, masked=False), carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, cfg.groups, head, (zeros, zeros))
    dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _row_spec(block: int, head_dim: int, head_of) -> pl.BlockSpec:
    """A ``[block, head_dim]`` tile of a ``[batch, seq, heads, head_dim]`` array."""
    return pl.BlockSpec((None, block, None, head_dim), lambda s, b, h: (b, s, head_of(h), 0))


def _whole_seq_spec(seq: int, head_dim: int, head_of) -> pl.BlockSpec:
    """One head's whole sequence ``[seq, head_dim]``; the kernel slices it."""
    return pl.BlockSpec((None, seq, None, head_dim), lambda s, b, h: (b, 0, head_of(h), 0))


def _segment_specs(block: int, seq: int) -> list[pl.BlockSpec]:
    """Segment ids for the program's own tile, then for the whole sequence it loops over."""
    return [pl.BlockSpec((None, block), lambda s, b, h: (b, s)),
            pl.BlockSpec((None, seq), lambda s, b, h: (b, 0))]


def _call(kernel, cfg: fc.FlashConfig, grid, in_specs, out_specs, out_shape, warps: int,
          tuning: GpuTuning, name: str):
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg), grid=grid, in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape, interpret=cfg.interpret, name=name,
        compiler_params=plt.CompilerParams(num_warps=warps, num_stages=tuning.stages),
    )


def _lse_spec(block: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, block, 1), lambda s, b, h: (b, h, s, 0))


def _kernels(tuning: GpuTuning) -> fc.Kernels:
    """The three pallas_calls for one tuning, packaged for ``flash_common.flash_attention``."""

    def forward(q, k, v, seg, cfg):
        batch, seq, heads, head_dim = q.shape
        bq, group = cfg.blocks.block_q, cfg.groups
        in_specs = [_row_spec(bq, head_dim, lambda h: h),
                    _whole_seq_spec(seq, head_dim, lambda h: lax.div(h, group)),
                    _whole_seq_spec(seq, head_dim, lambda h: lax.div(h, group))]
        args = [q, k, v]
        if seg is not None:
            in_specs += _segment_specs(bq, seq)
            args += [seg, seg]
        lse_shape = jax.ShapeDtypeStruct((batch, heads, seq, 1), jnp.float32)
        return _call(_forward_kernel, cfg, (seq // bq, batch, heads), in_specs,
                     [_row_spec(bq, head_dim, lambda h: h), _lse_spec(bq)],
                     [jax.ShapeDtypeStruct(q.shape, q.dtype), lse_shape], tuning.warps_fwd,
                     tuning, "flash_fwd")(*args)

    def dq(q, k, v, seg, do, lse, delta, cfg):
        batch, seq, heads, head_dim = q.shape
        bq, group = cfg.blocks.block_q_dq, cfg.groups
        own = _row_spec(bq, head_dim, lambda h: h)
        in_specs = [own, _whole_seq_spec(seq, head_dim, lambda h: lax.div(h, group)),
                    _whole_seq_spec(seq, head_dim, lambda h: lax.div(h, group)), own,
                    _lse_spec(bq), _lse_spec(bq)]
        args = [q, k, v, do, lse, delta]
        if seg is not None:
            in_specs += _segment_specs(bq, seq)
            args += [seg, seg]
        return _call(_dq_kernel, cfg, (seq // bq, batch, heads), in_specs, own,
                     jax.ShapeDtypeStruct(q.shape, q.dtype), tuning.warps_dq, tuning,
                     "flash_dq")(*args)

    def dkv(q, k, v, seg, do, lse, delta, cfg):
        batch, seq, heads, head_dim = q.shape
        kv_heads, bk = k.shape[2], cfg.blocks.block_kv_dkv
        all_heads = pl.BlockSpec((None, seq, heads, head_dim), lambda s, b, h: (b, 0, 0, 0))
        all_stats = pl.BlockSpec((None, heads, seq), lambda s, b, h: (b, 0, 0))
        own = _row_spec(bk, head_dim, lambda h: h)
        in_specs = [all_heads, own, own, all_heads, all_stats, all_stats]
        args = [q, k, v, do, lse[..., 0], delta[..., 0]]
        if seg is not None:
            in_specs += _segment_specs(bk, seq)[::-1]  # query side: whole sequence; key side: tile
            args += [seg, seg]
        shape = jax.ShapeDtypeStruct(k.shape, k.dtype)
        return _call(_dkv_kernel, cfg, (seq // bk, batch, kv_heads), in_specs, [own, own],
                     [shape, shape], tuning.warps_dkv, tuning, "flash_dkv")(*args)

    return fc.Kernels(forward, dq, dkv)


@functools.cache
def _kernels_for(tuning: GpuTuning) -> fc.Kernels:
    # Cached so the custom_vjp sees the same (hashable) Kernels object for equal tunings.
    return _kernels(tuning)


def flash_attention_gpu(q: jax.Array, k: jax.Array, v: jax.Array,
                        segment_ids: jax.Array | None = None, *, causal: bool = True,
                        block_sizes: fc.BlockSizes | None = None, tuning: GpuTuning | None = None,
                        sm_scale: float | None = None, interpret: bool = False) -> jax.Array:
    """Flash attention (Pallas/Triton) on ``[batch, seq, heads, head_dim]``; differentiable.

    ``block_sizes`` and ``tuning`` default to the tuned values for ``head_dim``.
    """
    default_blocks, default_tune = default_tuning(q.shape[-1])
    return fc.flash_attention(
        q, k, v, segment_ids, kernels=_kernels_for(tuning or default_tune), causal=causal,
        block_sizes=block_sizes or default_blocks, sm_scale=sm_scale, interpret=interpret,
    )
