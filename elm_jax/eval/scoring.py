"""Log-likelihood of token continuations given token contexts (what every zero-shot task needs).

Requests are sorted longest first and scored in fixed-size batches whose length is rounded up to a
bucket, so a whole evaluation compiles a handful of times. As in lm-eval-harness, a request longer
than the model's context keeps its last ``max_length + 1`` tokens (the left of the context is
dropped), and "greedy" means every continuation token is the argmax at its position.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from elm_jax.errors import UsageError
from elm_jax.infer.decode import bucket
from elm_jax.infer.sharding import global_batch, to_host
from elm_jax.model import OpenELM


class Scored(NamedTuple):
    logprob: float  # sum of log p(continuation token) over the continuation
    greedy: bool  # whether greedy decoding would have produced the continuation


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score_batch(graphdef: nnx.GraphDef, params: nnx.State, inputs: jax.Array,
                 targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = nnx.merge(graphdef, params)(inputs)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    hits = (jnp.argmax(logits, axis=-1) == targets) | (mask == 0)
    return -jnp.sum(nll * mask, axis=-1), jnp.all(hits, axis=-1)


def _window(context: Sequence[int], continuation: Sequence[int],
            max_length: int) -> tuple[list[int], list[int], int]:
    """Inputs and targets of one request (left-truncated to ``max_length``), and cont length."""
    if not continuation:
        raise UsageError("a continuation must hold at least one token")
    if not context:
        raise UsageError("a context must hold at least one token (e.g. BOS)")
    if len(continuation) > max_length:
        raise UsageError(f"continuation of {len(continuation)} tokens exceeds the model's "
                         f"context of {max_length}")
    whole = [*context, *continuation][-(max_length + 1):]
    return whole[:-1], whole[1:], len(continuation)


def score(model: OpenELM, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
          batch_size: int = 16, max_length: int | None = None) -> list[Scored]:
    """``[(context_ids, continuation_ids), ...]`` -> log-likelihood and greediness of each."""
    max_length = max_length or model.cfg.max_context_length
    windows = [_window(ctx, cont, max_length) for ctx, cont in requests]
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    graphdef, params = nnx.split(model)
    results: list[Scored | None] = [None] * len(windows)
    for begin in range(0, len(order), batch_size):
        chunk = order[begin:begin + batch_size]
        length = bucket(len(windows[chunk[0]][0]))
        inputs = np.zeros((batch_size, length), np.int32)
        targets = np.zeros((batch_size, length), np.int32)
        mask = np.zeros((batch_size, length), np.float32)
        for row, i in enumerate(chunk):
            inp, tgt, n_cont = windows[i]
            inputs[row, :len(inp)], targets[row, :len(tgt)] = inp, tgt
            mask[row, len(tgt) - n_cont:len(tgt)] = 1.0
        logprob, greedy = to_host(_score_batch(
            graphdef, params, global_batch(inputs), global_batch(targets), global_batch(mask)))
        for row, i in enumerate(chunk):
            results[i] = Scored(float(logprob[row]), bool(greedy[row]))
    return results
