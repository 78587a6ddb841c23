"""Held-out loss and perplexity: mean next-token cross-entropy over the unmasked targets.

Works on the data pipeline's batches in either sequence mode: packed rows carry ``segment_ids`` and
per-document ``positions`` (attention stays inside a document), padded rows a zero ``loss_mask`` on
the padding. Sums are accumulated on the devices and read once at the end, so evaluating from the
training loop costs no host round trip per batch. Under a mesh, each process passes its own rows
and the batch is sharded over the data axes like a training batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from elm_jax.config import Config
from elm_jax.data.pipeline import make_iterator
from elm_jax.errors import DataError, UsageError
from elm_jax.infer.sharding import process_batch
from elm_jax.model import OpenELM
from elm_jax.parallel import mesh as mesh_lib

FIELDS = ("inputs", "targets", "loss_mask")
OPTIONAL = ("positions", "segment_ids")


class LossResult(NamedTuple):
    loss: float  # mean cross-entropy per target token (nats)
    perplexity: float
    tokens: int  # number of target tokens counted
    batches: int


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sums(graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, jax.Array]
          ) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, params)
    logits = model(batch["inputs"], positions=batch.get("positions"),
                   segment_ids=batch.get("segment_ids"))
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"].astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def evaluate_loss(model: OpenELM, batches: Iterable[Mapping[str, np.ndarray]], *,
                  max_batches: int | None = None) -> LossResult:
    """Loss and perplexity over ``batches`` (the first ``max_batches`` if given)."""
    graphdef, params = nnx.split(model)
    total, count, seen = jnp.float32(0), jnp.float32(0), 0
    for batch in batches:
        if max_batches is not None and seen >= max_batches:
            break
        missing = [f for f in FIELDS if f not in batch]
        if missing:
            raise UsageError(f"evaluation batch lacks {', '.join(missing)}; the data pipeline "
                           f"yields {', '.join(FIELDS + OPTIONAL)}")
        arrays = process_batch({k: np.asarray(batch[k]) for k in FIELDS + OPTIONAL if k in batch})
        nll, n = _sums(graphdef, params, arrays)
        total, count, seen = total + nll, count + n, seen + 1
    tokens = int(count)
    if tokens == 0:
        raise DataError("no target tokens to evaluate: the held-out split is empty or fully "
                         "masked (check data.sources and the validation split)")
    loss = float(total) / tokens
    return LossResult(loss, math.exp(loss), tokens, seen)


def held_out_loss(model: OpenELM, config: Config, *, max_batches: int | None = None,
                  split: str = "validation") -> LossResult:
    """Loss on the experiment's held-out split, read through the data pipeline from its start.

    ``max_batches`` defaults to ``config.train.eval_batches``; 0 means one whole pass over the
    split (single process only: processes could see different batch counts). A fresh iterator
    each call, so every evaluation during training scores the same rows.
    """
    limit = config.train.eval_batches if max_batches is None else max_batches
    if not limit and jax.process_count() > 1:
        raise UsageError("a whole-split evaluation needs one process; set train.eval_batches "
                         "(or max_batches) to a positive number of batches")
    index = count = None  # without a mesh: jax's process index and count
    mesh = jax.sharding.get_mesh()
    if not mesh.empty:  # the rows this process holds of the mesh's batches
        index, count = mesh_lib.data_shard(mesh)
    batches = make_iterator(config, split, num_epochs=None if limit else 1, process_index=index,
                            process_count=count)
    return evaluate_loss(model, batches, max_batches=limit or None)
