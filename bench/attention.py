"""Attention benchmark: our Pallas flash kernel against cuDNN and XLA, plus on-device checks.

    PYTHONPATH=. python bench/attention.py [--check] [--sweep] [--seqs 2048,4096] ...

Prints (and with ``--json`` writes) a table of milliseconds and TFLOP/s per implementation for
forward and forward+backward at batch 8, bfloat16, OpenELM head counts (query heads = 4 x KV
heads) and head_dim 64 / 128. FLOPs follow FlashAttention's convention: forward 4*B*H*S*S*D
(two matmuls), backward 2.5x forward (five matmuls, recomputation of QK^T counted), and causal
attention counts half. Every impl is timed in the same process on the same inputs, so ratios are
meaningful; absolute figures depend on the card.

``--check`` first compares pallas and cuDNN against XLA attention computed in float32 on the same
device (output and dQ/dK/dV, relative L2 error), including packed segments and ragged lengths.
``--sweep`` times a few block-size / warp settings of the GPU kernel at the headline shape.
``--budget_s`` stops starting new table rows after that many seconds (rows left are listed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from elm_jax.kernels import attention
from elm_jax.kernels.reference import xla_attention


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    seq: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool = True

    def flops(self, mode: str) -> float:
        forward = 4.0 * self.batch * self.heads * self.seq * self.seq * self.head_dim
        forward *= 0.5 if self.causal else 1.0
        return forward * (3.5 if mode == "fwd_bwd" else 1.0)

    def label(self) -> str:
        return (f"S={self.seq} H={self.heads}/{self.kv_heads} D={self.head_dim}"
                f"{' causal' if self.causal else ''}")


def inputs(shape: Shape, dtype, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (shape.batch, shape.seq, shape.heads, shape.head_dim), dtype)
    kv_shape = (shape.batch, shape.seq, shape.kv_heads, shape.head_dim)
    k = jax.random.normal(keys[1], kv_shape, dtype)
    v = jax.random.normal(keys[2], kv_shape, dtype)
    d_out = jax.random.normal(keys[3], q.shape, dtype)
    return q, k, v, d_out


def make_step(fn, mode: str):
    """A jitted forward, or forward+backward returning dQ, dK, dV."""
    if mode == "fwd":
        return jax.jit(lambda q, k, v, d_out: fn(q, k, v))

    def fwd_bwd(q, k, v, d_out):
        _, vjp = jax.vjp(fn, q, k, v)
        return vjp(d_out)

    return jax.jit(fwd_bwd)


def time_ms(step, args, min_total_s: float = 0.2, samples: int = 5) -> float:
    """Median milliseconds per call; calls are queued back to back and synchronised per sample."""
    jax.block_until_ready(step(*args))  # compile + warm up
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    once = time.perf_counter() - start
    n = max(1, min(200, int(min_total_s / samples / max(once, 1e-6))))
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        out = None
        for _ in range(n):
            out = step(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / n)
    return 1e3 * statistics.median(times)


INTERPRET = False  # --interpret: run the Pallas kernels in the interpreter (CPU smoke test)


def impl_fn(impl: str, causal: bool, segment_ids=None):
    return lambda q, k, v: attention(q, k, v, segment_ids=segment_ids, causal=causal, impl=impl,
                                     interpret=INTERPRET and impl.startswith("pallas"))


# ----------------------------------------------------------------------------- checks


def rel_err(x, ref) -> float:
    x, ref = x.astype(jnp.float32), ref.astype(jnp.float32)
    return float(jnp.linalg.norm(x - ref) / jnp.linalg.norm(ref))


def check(impls: list[str], n_cases: int = 4) -> bool:
    """Each impl vs float32 XLA attention on this device (the first ``n_cases`` cases); returns
    whether all passed."""
    cases = [  # (shape, dtype, packed)
        (Shape(2, 1024, 12, 3, 64, True), jnp.bfloat16, False),
        (Shape(2, 1000, 8, 2, 128, True), jnp.bfloat16, True),
        (Shape(2, 777, 4, 4, 64, False), jnp.bfloat16, False),
        (Shape(1, 512, 8, 2, 64, True), jnp.float32, True),
    ]
    cases = cases[:n_cases]
    if INTERPRET:  # smoke-test sizes
        cases = [(dataclasses.replace(shape, batch=1, seq=shape.seq // 16), dtype, packed)
                 for shape, dtype, packed in cases]
    bound = {jnp.bfloat16: 2e-2, jnp.float32: 1e-4}
    ok = True
    print("\n## correctness vs float32 XLA (relative L2 error)\n")
    print("| shape | dtype | packed | impl | out | dq | dk | dv | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape, dtype, packed in cases:
        q, k, v, d_out = inputs(shape, dtype, seed=1)
        ids = None
        if packed:
            starts = jax.random.bernoulli(jax.random.key(2), 8.0 / shape.seq,
                                          (shape.batch, shape.seq))
            ids = 1 + jnp.cumsum(starts.at[:, 0].set(False), axis=1).astype(jnp.int32)
        up = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
        reference = functools.partial(xla_attention, segment_ids=ids, causal=shape.causal)
        with jax.default_matmul_precision("highest"):
            ref = make_step(reference, "fwd_bwd")(*up)
            ref_out = jax.jit(reference)(*up[:3])
        for impl in impls:
            if impl == "xla" or (impl == "cudnn" and dtype == jnp.float32):
                continue
            try:
                fn = impl_fn(impl, shape.causal, ids)
                out = jax.jit(fn)(q, k, v)
                grads = make_step(fn, "fwd_bwd")(q, k, v, d_out)
                errs = [rel_err(out, ref_out)] + [rel_err(g, r) for g, r in zip(grads, ref)]
                passed = all(e < bound[dtype] for e in errs)
                row = " | ".join(f"{e:.1e}" for e in errs) + f" | {'PASS' if passed else 'FAIL'}"
                ok &= passed
            except Exception as err:  # noqa: BLE001 (report every impl)
                row = f"error: {type(err).__name__}: {str(err)[:120]} | | | | FAIL"
                ok &= impl != "pallas"
            print(f"| {shape.label()} B={shape.batch} | {jnp.dtype(dtype).name} | {packed} | "
                  f"{impl} | {row} |", flush=True)
    return ok


# ----------------------------------------------------------------------------- sweep


def sweep(batch: int, seq: int = 2048) -> None:
    """Block sizes / warps of the GPU kernel at the headline shape (S=2048, D=64, GQA 4); each
    setting changes one pass and keeps the defaults elsewhere."""
    from elm_jax.kernels.flash_gpu import default_tuning, flash_attention_gpu

    shape = Shape(batch, seq, 12, 3, 64, True)
    default_blocks, default_tune = default_tuning(shape.head_dim)

    def kernel(blocks, tuning):
        return lambda q, k, v: flash_attention_gpu(q, k, v, block_sizes=blocks, tuning=tuning,
                                                   interpret=INTERPRET)

    args = inputs(shape, jnp.bfloat16)
    forward = [  # (block_q, block_kv, warps, stages); the first is the default
        (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4),
    ]
    backward = [  # (q_dq, kv_dq, q_dkv, kv_dkv, warps_dq, warps_dkv, stages)
        (128, 32, 32, 128, 4, 8, 3), (128, 64, 64, 128, 8, 8, 3), (64, 64, 64, 64, 4, 8, 3),
        (128, 32, 32, 128, 8, 8, 2), (64, 32, 32, 64, 4, 4, 4), (128, 32, 64, 128, 4, 8, 3),
    ]
    print(f"\n## GPU kernel sweep at {shape.label()} B={batch} bf16\n")
    print("| pass | setting | ms | TFLOP/s |")
    print("|---|---|---|---|")
    for bq, bk, warps, stages in forward:
        fn = kernel(dataclasses.replace(default_blocks, block_q=bq, block_kv=bk),
                    dataclasses.replace(default_tune, warps_fwd=warps, stages=stages))
        _sweep_row("fwd", f"q{bq} kv{bk} w{warps} s{stages}", fn, shape, args, "fwd")
    for q_dq, kv_dq, q_dkv, kv_dkv, warps_dq, warps_dkv, stages in backward:
        fn = kernel(dataclasses.replace(default_blocks, block_q_dq=q_dq, block_kv_dq=kv_dq,
                                        block_q_dkv=q_dkv, block_kv_dkv=kv_dkv),
                    dataclasses.replace(default_tune, warps_dq=warps_dq, warps_dkv=warps_dkv,
                                        stages=stages))
        _sweep_row("fwd+bwd", f"dq q{q_dq} kv{kv_dq} w{warps_dq}, dkv q{q_dkv} kv{kv_dkv} "
                   f"w{warps_dkv}, s{stages}", fn, shape, args, "fwd_bwd")


def _sweep_row(name, setting, fn, shape, args, mode):
    try:
        ms = time_ms(make_step(fn, mode), args)
        print(f"| {name} | {setting} | {ms:.3f} | {shape.flops(mode) / ms / 1e9:.0f} |", flush=True)
    except Exception as err:  # noqa: BLE001
        print(f"| {name} | {setting} | error: {type(err).__name__}: {str(err)[:100]} | |",
              flush=True)


# ----------------------------------------------------------------------------- table


def table(shapes: list[Shape], impls: list[str], modes: list[str], dtype, budget_s: float,
          json_path: str | None) -> None:
    print(f"\n## attention benchmark ({jnp.dtype(dtype).name}; TFLOP/s, causal counted as half)\n")
    others = [impl for impl in impls if impl != "pallas"] if "pallas" in impls else []
    header = ["shape"] + [f"{impl} {mode} {unit}" for mode in modes for impl in impls
                          for unit in ("ms", "TFLOP/s")]
    header += [f"{other}/pallas time {mode}" for mode in modes for other in others]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    start = time.perf_counter()
    wins: dict[tuple[str, str], int] = {}
    sink = open(json_path, "a") if json_path else None  # noqa: SIM115
    for n, shape in enumerate(shapes):
        if time.perf_counter() - start > budget_s:
            print(f"\nbudget of {budget_s:.0f}s spent; not measured: "
                  + "; ".join(s.label() for s in shapes[n:]))
            break
        args = inputs(shape, dtype)
        ms = {}
        for mode in modes:
            for impl in impls:
                try:
                    ms[impl, mode] = time_ms(make_step(impl_fn(impl, shape.causal), mode), args)
                except Exception as err:  # noqa: BLE001 (OOM or unsupported: report, go on)
                    ms[impl, mode] = None
                    print(f"<!-- {impl} {mode} {shape.label()}: {type(err).__name__}: "
                          f"{str(err)[:160]} -->", file=sys.stderr)
                if sink:
                    sink.write(json.dumps({**dataclasses.asdict(shape), "impl": impl,
                                           "mode": mode, "ms": ms[impl, mode],
                                           "device": jax.devices()[0].device_kind}) + "\n")
        cells = []
        for mode in modes:
            for impl in impls:
                t = ms[impl, mode]
                cells += ["n/a", "n/a"] if t is None else [f"{t:.3f}",
                                                          f"{shape.flops(mode) / t / 1e9:.3g}"]
        for mode in modes:
            for other in others:
                a, b = ms["pallas", mode], ms[other, mode]
                cells.append("n/a" if a is None or b is None else f"{b / a:.2f}x")
        print(f"| {shape.label()} | " + " | ".join(cells) + " |", flush=True)
        for mode in modes:
            timed = {impl: ms[impl, mode] for impl in impls if ms[impl, mode] is not None}
            if timed:
                best = min(timed, key=timed.get)
                wins[mode, best] = wins.get((mode, best), 0) + 1
    if sink:
        sink.close()
    for mode in modes:  # what attention.AUTO should say for this platform
        counts = ", ".join(f"{impl} {n}" for (m, impl), n in sorted(wins.items()) if m == mode)
        print(f"\nfastest {mode} (rows won): {counts}")


def parse_shapes(spec: str, seqs: list[int], batch: int, causal: list[bool]) -> list[Shape]:
    """``"64:12:3,128:24:6"`` (head_dim:q_heads:kv_heads) crossed with seqs and causal flags."""
    heads = [tuple(int(x) for x in part.split(":")) for part in spec.split(",")]
    return [Shape(batch, seq, h, kv, d, c) for c in causal for seq in seqs for d, h, kv in heads]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seqs", default="2048,4096")
    parser.add_argument("--shapes", default="64:12:3,64:20:5,128:12:3,128:24:6",
                        help="head_dim:q_heads:kv_heads,... (OpenELM layers use 4 q per kv head)")
    parser.add_argument("--causal", default="1", help="1, 0 or 1,0")
    parser.add_argument("--impls", default="pallas,cudnn,xla")
    parser.add_argument("--modes", default="fwd,fwd_bwd")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--check", action="store_true", help="on-device correctness first")
    parser.add_argument("--check_cases", type=int, default=4, help="how many check cases (1-4)")
    parser.add_argument("--sweep", action="store_true", help="GPU kernel block-size sweep")
    parser.add_argument("--sweep_seq", type=int, default=2048)
    parser.add_argument("--no_table", action="store_true")
    parser.add_argument("--budget_s", type=float, default=1e9)
    parser.add_argument("--json", default=None, help="append one JSON line per measurement")
    parser.add_argument("--interpret", action="store_true",
                        help="Pallas interpreter (CPU smoke test of this script; not a benchmark)")
    args = parser.parse_args()
    global INTERPRET
    INTERPRET = args.interpret

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, "
          f"{jax.device_count()} device(s)")
    impls = args.impls.split(",")
    ok = check(impls, args.check_cases) if args.check else True
    if args.sweep:
        sweep(args.batch, args.sweep_seq)
    if not args.no_table:
        shapes = parse_shapes(args.shapes, [int(s) for s in args.seqs.split(",")], args.batch,
                              [c == "1" for c in args.causal.split(",")])
        table(shapes, impls, args.modes.split(","), jnp.dtype(args.dtype), args.budget_s,
              args.json)
    if not ok:
        print("\nCHECK FAILED")
        sys.exit(1)


if __name__ == "__main__":
    main()
