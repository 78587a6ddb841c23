"""Train-step throughput and MFU: tiny and 270M-shaped models, plus the OpenELM-3B compile time.

Each model is timed with the whole-logits loss (``train.loss_chunk=0``) and the chunked one, in the
same run, and the ratio of their step times is printed (below 1: the chunked loss is faster).

Prints figures; not a test. The matmul peak is measured in the same process (a large ``jnp.dot`` in
the benchmark's compute dtype, again before each model), so "fraction of measured peak" is a ratio of
two numbers taken on the same machine at the same time; MFU against the vendor peak is printed where
the chip is known.

    python bench/train_step.py                       # CPU: f32, short sequences
    python bench/train_step.py --dtype bfloat16 --seq 2048 --batch 8   # an accelerator
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from elm_jax.common_types import BATCH_FIELDS
from elm_jax.config import from_config_dict  # noqa: E402
from elm_jax.model import flops_per_token, param_count  # noqa: E402
from elm_jax.parallel.mesh import global_batch, make_mesh  # noqa: E402
from elm_jax.presets import openelm_config  # noqa: E402
from elm_jax.train.metrics import mfu, peak_flops  # noqa: E402
from elm_jax.train.step import make_train_step  # noqa: E402

SIZES = flags.DEFINE_list("sizes", ["tiny", "270m"], "models to time: tiny, 270m, 450m, 1_1b, 3b")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
SEQ = flags.DEFINE_integer("seq", 128, "sequence length of the 270M-class models")
BATCH = flags.DEFINE_integer("batch", 4, "global batch (sequences) of the 270M-class models")
STEPS = flags.DEFINE_integer("steps", 5, "timed steps per model")
COMPILE_3B = flags.DEFINE_bool("compile_3b", True, "time the OpenELM-3B step's AOT compile")
MATMUL = flags.DEFINE_integer("matmul", 4096, "matrix size of the peak measurement")
ATTENTION = flags.DEFINE_list("attention", ["auto"], "attention impls to time each model with")
LOSS_CHUNKS = flags.DEFINE_list("loss_chunks", ["0", "256"],
                                "train.loss_chunk values to time each model with (0: whole logits)")


def matmul_peak(n: int, dtype: str, reps: int = 10) -> float:
    """FLOP/s of an n x n x n matmul (best of ``reps``) on the default device."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dtype))
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def experiment(size: str, dtype: str, seq: int, batch: int, attention: str = "auto",
               loss_chunk: int | None = None):
    """The paper's config for ``size`` (or experiments/tiny.py) at the benchmark's shape."""
    if size == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
        import tiny

        cd = tiny.get_config()
    else:
        cd = openelm_config(size)
        cd.data.seq_len, cd.train.batch_size = seq, batch
    cd.model.dtype = dtype
    cd.model.attention_impl = attention
    cd.mesh.data, cd.mesh.fsdp = -1, 1
    cd.train.microbatches = 1
    if loss_chunk is not None:
        cd.train.loss_chunk = loss_chunk
    return from_config_dict(cd)


def random_batch(config) -> dict[str, np.ndarray]:
    shape = (config.train.batch_size, config.data.seq_len)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.model.vocab_size - 1, shape, dtype=np.int32)
    return {"inputs": tokens, "targets": np.roll(tokens, -1, axis=1),
            "loss_mask": np.ones(shape, np.float32), "segment_ids": np.ones(shape, np.int32),
            "positions": np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy()}


def time_steps(config, steps: int, peak: float) -> float:
    mesh = make_mesh(config.mesh)
    step = make_train_step(config, mesh)
    start = time.perf_counter()
    compiled = step.lower().compile()
    compile_s = time.perf_counter() - start
    state = step.init()
    batch = global_batch({k: random_batch(config)[k] for k in BATCH_FIELDS}, mesh)
    with jax.set_mesh(mesh):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
    tokens = config.train.batch_size * config.data.seq_len
    flops = flops_per_token(config.model, config.data.seq_len) * tokens / step_s
    util = mfu(flops, list(mesh.devices.flat))
    print(f"{config.name:>12} ({config.model.attention_impl}, loss chunk "
          f"{config.train.loss_chunk or 'none'}): "
          f"{param_count(config.model) / 1e6:7.1f}M params, batch "
          f"{config.train.batch_size} x seq {config.data.seq_len}, {config.model.dtype}: compile "
          f"{compile_s:6.1f} s, step {step_s * 1e3:8.1f} ms, {tokens / step_s:9.0f} tokens/s, "
          f"{flops / 1e12:7.3f} model TFLOP/s = {flops / peak:6.1%} of measured matmul peak, MFU "
          + ("n/a" if util is None else f"{util:.1%}") + f" (loss {float(metrics['loss']):.3f})",
          flush=True)
    return step_s


def compile_3b(dtype: str) -> None:
    """AOT-compile the 3B step from abstract shapes (nothing allocated) and time each stage."""
    config = experiment("3b", dtype, 2048, len(jax.devices()))
    mesh = make_mesh(config.mesh)
    start = time.perf_counter()
    step = make_train_step(config, mesh)
    lowered = step.lower()
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    mem = compiled.memory_analysis()
    temp = f", temporaries {mem.temp_size_in_bytes / 2**30:.1f} GiB" if mem is not None else ""
    print(f"openelm_3b train step (36 unrolled layers, remat {config.model.remat_policy}, batch "
          f"{config.train.batch_size} x 2048, {dtype}) on {jax.devices()[0].device_kind}: trace + "
          f"lower {lower_s:.1f} s, XLA compile {compile_s:.1f} s{temp}", flush=True)


def main(argv: list[str]) -> None:
    del argv
    device = jax.devices()[0]
    peak = matmul_peak(MATMUL.value, DTYPE.value)
    table = peak_flops(device)
    print(f"{len(jax.devices())} x {device.device_kind} ({device.platform}), jax {jax.__version__}: "
          f"measured {DTYPE.value} matmul peak {peak / 1e12:.3f} TFLOP/s per device"
          + (f" (table bf16 peak {table / 1e12:.0f})" if table else ""), flush=True)
    for size in SIZES.value:
        for attention in ATTENTION.value:
            times = {}
            for chunk in map(int, LOSS_CHUNKS.value):
                config = experiment(size, DTYPE.value, SEQ.value, BATCH.value, attention, chunk)
                peak = matmul_peak(MATMUL.value, DTYPE.value)  # again, right before: machines drift
                times[chunk] = time_steps(config, STEPS.value, peak * len(jax.devices()))
            if 0 in times:
                for chunk, seconds in times.items():
                    if chunk:
                        print(f"{size} ({attention}): step time with loss chunk {chunk} / whole "
                              f"logits = {seconds / times[0]:.3f}", flush=True)
    if COMPILE_3B.value:
        compile_3b(DTYPE.value)


if __name__ == "__main__":
    app.run(main)
