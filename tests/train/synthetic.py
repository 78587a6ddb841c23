"""A tiny learnable token stream in the data pipeline's batch format (a checkpointable grain iterator).

Each row is a few "documents" of an arithmetic sequence ``t_{i+1} = (a * t_i + c) mod V`` with a
random start, packed with segment ids and restarting positions, right-padded: the next token is
predictable from the current one, so a tiny model's loss must fall well below ln(V).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import grain
import numpy as np

from elm_jax.config import Config, DataConfig, MeshConfig, ModelConfig, TrainConfig

# XLA's CPU backend compiles 3-5x faster without LLVM optimisation; the tiny test steps run a
# handful of times, so compile time is what counts. Same numerics path as the default.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def tiny_config(run_dir, **train) -> Config:
    model = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, head_dim=8, num_gqa_groups=2,
                        qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0), ffn_dim_divisor=16)
    data = DataConfig(seq_len=16, pad_id=0, mode="pack")
    defaults = dict(steps=8, batch_size=8, peak_lr=1e-2, warmup_steps=2, cosine_period=100,
                    log_every=2, eval_every=4, eval_batches=2, save_every=4, run_dir=str(run_dir),
                    sample_lines=0)
    config = Config(model=model, data=data, train=TrainConfig(**(defaults | train)),
                    mesh=MeshConfig(data=1, fsdp=1, tensor=1), name="synthetic")
    config.validate()
    return config


def replace_train(config: Config, **train) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train))


def make_row(index: int, *, seq_len: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    tokens = np.zeros(seq_len + 1, np.int32)
    segments = np.zeros(seq_len + 1, np.int32)
    positions = np.zeros(seq_len + 1, np.int32)
    filled, doc = 0, 1
    while filled < seq_len - 2:
        length = min(int(rng.integers(4, seq_len)), seq_len + 1 - filled)
        t = int(rng.integers(1, vocab))
        for j in range(length):
            tokens[filled + j] = t
            t = (5 * t + 3) % (vocab - 1) + 1  # never the pad id 0
        segments[filled:filled + length] = doc
        positions[filled:filled + length] = np.arange(length)
        filled, doc = filled + length, doc + 1
    same_doc = (segments[1:] == segments[:-1]) & (segments[:-1] > 0)
    return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": same_doc.astype(np.float32),
            "segment_ids": segments[:-1], "positions": positions[:-1]}


def _slowly(batch: dict[str, np.ndarray], delay: float) -> dict[str, np.ndarray]:
    time.sleep(delay)
    return batch


def make_iterator(config: Config, split: str, *, process_index: int | None = None,
                  process_count: int | None = None, delay: float = 0.0, nan_at: int | None = None):
    """The contract of ``elm_jax.data.pipeline.make_iterator`` over the synthetic stream.

    ``delay`` seconds per batch slow a run down enough to kill it at a chosen point; ``nan_at``
    puts a NaN into the loss mask of that batch (0-based) to test the non-finite policy.
    """
    process_index, process_count = process_index or 0, process_count or 1
    seed = {"train": 0, "validation": 1}[split]
    ds = grain.MapDataset.range(10_000).shuffle(seed=seed)
    ds = ds[process_index::process_count].map(
        lambda i: make_row(int(i), seq_len=config.data.seq_len, vocab=config.model.vocab_size, seed=seed))
    ds = ds.batch(config.train.batch_size // process_count)
    if nan_at is not None:
        ds = ds.map_with_index(lambda i, b: _poison(b) if i == nan_at else b)
    if delay:
        ds = ds.map(functools.partial(_slowly, delay=delay))
    return iter(ds.to_iter_dataset())


def _poison(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mask = batch["loss_mask"].copy()
    mask[0, 0] = np.nan
    return batch | {"loss_mask": mask}
