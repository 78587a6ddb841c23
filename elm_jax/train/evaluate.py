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

from elm_jax.config import Config
from elm_jax.errors import DataError
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.train.metrics import unigram_entropy
from elm_jax.train.step import ObjectiveBuilder, make_eval_step, pretraining

IteratorFactory = Callable[..., Iterator[dict[str, np.ndarray]]]


def process_kwargs() -> dict[str, int]:
    """This process's index and the process count, as the data pipeline takes them."""
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


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
            iterator = self._make_iterator(self.config, "validation", **process_kwargs())
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


def training_unigram_entropy(config: Config, make_iterator: IteratorFactory,
                             max_tokens: int) -> float:
    """Entropy of the token frequencies in (up to ``max_tokens`` of) the training stream."""
    counts = np.zeros(config.model.vocab_size, np.int64)
    seen = 0
    for batch in make_iterator(config, "train", **process_kwargs()):
        mask = np.asarray(batch["loss_mask"]) > 0
        counts += np.bincount(np.asarray(batch["targets"])[mask], minlength=counts.size)
        seen += int(mask.sum())
        if seen >= max_tokens:
            break
    return unigram_entropy(counts)
