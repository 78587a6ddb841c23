"""What the training loop measures besides the training loss: held-out loss and the unigram baseline.

The held-out batches are the first ``train.eval_batches`` of the validation split (at least one,
which also supplies the prompts of the end-of-run samples), read once at start-up and kept on the
host, so every evaluation of a run scores the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from elm_jax.config import Config
from elm_jax.errors import DataError
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.train.metrics import unigram_entropy
from elm_jax.train.step import ObjectiveBuilder, make_eval_step, pretraining

IteratorFactory = Callable[..., Iterator[dict[str, np.ndarray]]]


def process_kwargs(mesh: jax.sharding.Mesh) -> dict[str, int]:
    """The data shard this process loads on ``mesh``, as the data pipeline's process index and
    count: processes that hold the same batch rows (a tensor axis across processes) load the same
    shard (``elm_jax.parallel.mesh.data_shard``)."""
    shard = mesh_lib.data_shard(mesh)
    return {"process_index": shard.index, "process_count": shard.count}


class Evaluator:
    """Held-out loss and perplexity over the first ``train.eval_batches`` validation batches."""

    def __init__(self, config: Config, mesh: jax.sharding.Mesh, make_iterator: IteratorFactory,
                 compiler_options: dict[str, Any] | None = None,
                 objective: ObjectiveBuilder = pretraining):
        self.config, self.mesh, self._make_iterator = config, mesh, make_iterator
        self._step = make_eval_step(config, mesh, compiler_options=compiler_options,
                                    objective=objective)
        self._batches: list[dict[str, np.ndarray]] | None = None

    def batches(self) -> list[dict[str, np.ndarray]]:
        if self._batches is None:
            iterator = self._make_iterator(self.config, "validation", **process_kwargs(self.mesh))
            wanted = max(1, self.config.train.eval_batches)  # at least one: the end-of-run samples
            self._batches = [batch for _, batch in zip(range(wanted), iterator)]
            if not self._batches:
                raise DataError("the validation split yielded no batch; check data.sources or "
                                "set train.eval_batches=0")
        return self._batches

    def __call__(self, params: Any, frozen: Any = None) -> dict[str, float]:
        sums = [self._step(params, mesh_lib.global_batch(b, self.mesh), frozen)
                for b in self.batches()]
        ce, tokens = (sum(float(jax.device_get(getattr(s, k))) for s in sums)
                      for k in ("cross_entropy", "tokens"))
        loss = ce / max(tokens, 1.0)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}


def training_unigram_entropy(config: Config, make_iterator: IteratorFactory, max_tokens: int,
                             mesh: jax.sharding.Mesh) -> float:
    """Entropy of the token frequencies in (about ``max_tokens`` of) the training stream.

    Every data shard reads its share of the tokens and the counts are summed over the shards
    (once per shard, however many processes load it), so the baseline describes the whole
    stream, not process 0's part of it. A collective: every process calls it.
    """
    shard = mesh_lib.data_shard(mesh)
    counts = np.zeros(config.model.vocab_size, np.int64)
    seen, budget = 0, max(1, max_tokens // shard.count)
    for batch in make_iterator(config, "train", **process_kwargs(mesh)):
        mask = np.asarray(batch["loss_mask"]) > 0
        counts += np.bincount(np.asarray(batch["targets"])[mask], minlength=counts.size)
        seen += int(mask.sum())
        if seen >= budget:
            break
    return unigram_entropy(_sum_over_shards(counts, shard.index))


def _sum_over_shards(counts: np.ndarray, shard: int) -> np.ndarray:
    """``counts`` summed over the data shards, taking each shard's first process."""
    if jax.process_count() == 1:
        return counts
    gathered = multihost_utils.process_allgather(
        {"counts": counts.astype(np.int32), "shard": np.int32(shard)})
    first_of_shard: dict[int, int] = {}
    for process, index in enumerate(np.asarray(gathered["shard"]).tolist()):
        first_of_shard.setdefault(index, process)
    return np.asarray(gathered["counts"], np.int64)[sorted(first_of_shard.values())].sum(axis=0)
