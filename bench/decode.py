"""Prefill and decode throughput of KV-cache generation for an OpenELM shape (random weights).

    python bench/decode.py                       # 270M shape, batch 1 and 16
    python bench/decode.py --prompt_len 64 --new_tokens 16 --reps 2   # quicker, e.g. on a laptop

Prints tokens/s for the prefill (all prompt tokens of the batch) and for the decode loop (new
tokens of the batch, prefill excluded), and two ratios measured in the same run:
  - prefill: model FLOP/s over this device's dense matmul FLOP/s (a large ``jnp.dot``);
  - decode: the time of the step's weight matmuls alone (every weight matrix, the tied output
    projection included, applied to ``batch`` vectors in one jitted call) over the time of a whole
    decode step. Small-batch decoding is bound by reading the weights, so this is the fraction of
    that floor reached; the rest is attention over the cache, norms, RoPE, sampling, dispatch.
Defaults follow the hardware: float32 on CPU; bfloat16 weights, compute and cache on accelerators.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elm_jax.config import ModelConfig
from elm_jax.infer import decode
from elm_jax.model import build, flops_per_token, param_count
from elm_jax.presets import SIZES


def timed(fn, reps: int) -> float:
    """Best wall time of ``reps`` calls (after one warm-up/compile call), blocking on results."""
    jax.block_until_ready(fn())
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops(dtype: str, n: int, reps: int = 8) -> float:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    return 2 * n ** 3 / timed(lambda: f(a), reps)


def decode_matrices(model) -> list[jax.Array]:
    """Every weight as the ``[in, out]`` matrix a decode step multiplies by (tied output too)."""
    mats = []
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value, axes = var[...], var.get_metadata()["logical_axes"]
        if axes[0] == "vocab":  # the tied output projection contracts the embedding dim
            mats.append(value.T)
        elif axes[:2] == ("heads", "head_dim"):  # out_proj contracts heads x head_dim
            mats.append(value.reshape(-1, value.shape[-1]))
        elif value.ndim >= 2:
            mats.append(value.reshape(value.shape[0], -1))
    return mats


def matmul_floor_seconds(mats: list[jax.Array], batch: int, dtype: str) -> float:
    """One decode step's weight matmuls alone, each applied to ``batch`` vectors."""
    xs = [jnp.ones((batch, m.shape[0]), dtype) for m in mats]

    @jax.jit
    def chain(ms, xs):  # one after another, as in the model (no concurrent independent dots)
        y = jnp.zeros((batch, 1), dtype)
        for m, x in zip(ms, xs):
            y = (x + y[:, :1]) @ m
        return y

    return timed(lambda: chain(mats, xs), 3)


def machine() -> str:
    """The accelerator's name, or the CPU model and core count."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{device.device_kind} x{jax.device_count()}"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="270m", choices=sorted(SIZES))
    parser.add_argument("--batch_sizes", default="1,16")
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    accel = jax.default_backend() != "cpu"
    parser.add_argument("--dtype", default="bfloat16" if accel else "float32")
    parser.add_argument("--matmul_n", type=int, default=8192 if accel else 2048)
    args = parser.parse_args()

    layers, dim, head_dim, *_ = SIZES[args.size]
    cfg = ModelConfig(vocab_size=32000, num_layers=layers, model_dim=dim, head_dim=head_dim,
                      dtype=args.dtype, param_dtype=args.dtype)
    model = build(cfg, seed=0)
    mats = decode_matrices(model)
    print(f"OpenELM-{args.size} shape, {param_count(cfg):,} params, {args.dtype} weights/compute/"
          f"cache, prompt {args.prompt_len}, {args.new_tokens} new tokens, best of {args.reps}")
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"machine: {machine()}, jax {jax.__version__}{load}")
    peak = matmul_flops(args.dtype, args.matmul_n)
    # The prefill projects only each row's last position onto the vocabulary.
    output_flops = 2 * cfg.vocab_size * cfg.model_dim
    body_flops = flops_per_token(cfg, args.prompt_len, training=False) - output_flops

    rows = []
    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        prompts = rng.integers(3, cfg.vocab_size, (batch, args.prompt_len)).tolist()

        def prefill(prompts=prompts):
            return decode._request(model, prompts, args.new_tokens, temperature=0.0, top_k=0,
                                   top_p=1.0, key=None, eos_id=None, pad_id=None,
                                   prompt_lengths=None, cache_dtype=args.dtype)

        request, state = prefill()
        peak = max(peak, matmul_flops(args.dtype, args.matmul_n))  # interleaved: see below
        prefill_s = timed(lambda: prefill()[1], args.reps)
        last = jnp.int32(request.prompts.prompt_len + args.new_tokens - 1)

        def run_decode(request=request, last=last):
            state = jax.block_until_ready(prefill()[1])  # donated below: a fresh one each time
            start = time.perf_counter()
            out = jax.block_until_ready(decode._decode_loop(
                params=request.params, state=state, last=last, **request.static))
            return time.perf_counter() - start, out

        run_decode()  # compile
        decode_s = min(run_decode()[0] for _ in range(args.reps))
        steps = args.new_tokens - 1  # the prefill already produced the first new token
        prefill_flops = batch * (args.prompt_len * body_flops + output_flops) / prefill_s
        step_s, floor_s = decode_s / steps, matmul_floor_seconds(mats, batch, args.dtype)
        rows.append((batch, batch * args.prompt_len / prefill_s, prefill_flops,
                     batch * steps / decode_s, step_s, floor_s))
    # The peak is the best of measurements before, between and after the runs: a machine shared
    # with other work gives noisy figures, and an underestimated peak would flatter the model.
    peak = max(peak, matmul_flops(args.dtype, args.matmul_n))
    print(f"measured dense matmul: {peak / 1e9:,.1f} GFLOP/s ({args.matmul_n}^3 {args.dtype})")
    print(f"{'batch':>5} {'prefill tok/s':>14} {'prefill/peak':>13} {'decode tok/s':>13} "
          f"{'ms/step':>8} {'floor ms':>9} {'floor/step':>11}")
    for batch, prefill_tps, prefill_flops, decode_tps, step_s, floor_s in rows:
        print(f"{batch:>5} {prefill_tps:>14,.0f} {prefill_flops / peak:>13.2f} "
              f"{decode_tps:>13,.1f} {step_s * 1e3:>8.1f} {floor_s * 1e3:>9.1f} "
              f"{floor_s / step_s:>11.2f}")


if __name__ == "__main__":
    main()
