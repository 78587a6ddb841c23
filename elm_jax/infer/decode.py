"""Batched generation: prefill the prompts into a KV cache, then decode one token per step.

Prompts of different lengths are left-padded into one ``[batch, length]`` buffer whose shapes are
rounded up to buckets, so the prefill and the decode loop compile once per (batch, prompt length,
total length) bucket and are reused for every request that falls in it. ``generate`` runs the whole
decode loop on the device (``lax.while_loop``, stopping early when every row has emitted EOS);
``stream`` runs the same step from Python and yields each token as it is produced.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elm_jax.errors import UsageError
from elm_jax.infer.cache import KVCache, forward_cached, init_cache
from elm_jax.infer.sampling import Sampling, sample
from elm_jax.infer.sharding import global_batch, to_host
from elm_jax.model import OpenELM

MIN_BUCKET = 16


class DecodeState(NamedTuple):
    """Everything the decode loop carries; ``tokens[:, index]`` is the newest, not yet cached."""

    cache: KVCache
    tokens: jax.Array  # int32 [batch, length]: left-padded prompts, then generated tokens
    index: jax.Array  # int32 scalar
    done: jax.Array  # bool [batch]: emitted EOS (or a batch-filling dummy row)
    key: jax.Array
    eos: jax.Array  # int32 [n]: stop tokens (-1 when there are none)
    pad: jax.Array  # int32 scalar: written after a row is done


class Step(NamedTuple):
    """One streamed step: the token each row produced (``pad_id`` once a row is done)."""

    tokens: np.ndarray  # int32 [batch]
    done: np.ndarray  # bool [batch], True from the step where a row emitted EOS


class Prompts(NamedTuple):
    """Host-side left-padded batch (bucketed shapes) and what is needed to undo the padding."""

    tokens: np.ndarray  # int32 [batch_bucket, length_bucket]
    start: np.ndarray  # int32 [batch_bucket]
    dummy: np.ndarray  # bool [batch_bucket]
    lengths: np.ndarray  # int32 [batch]: the real prompt lengths
    prompt_len: int  # bucketed prompt length: the first generated token goes to this slot


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two >= n (and >= minimum): few shapes, so few compilations."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def as_rows(prompt_ids: Any, prompt_lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """Prompts as a list of 1-D int arrays, from ragged lists or a (right-padded) 2-D array."""
    if prompt_lengths is not None or isinstance(prompt_ids, (np.ndarray, jax.Array)):
        array = np.asarray(prompt_ids)
        if array.ndim != 2:
            raise UsageError(f"prompt_ids must be [batch, length], got shape {array.shape}")
        lengths = [array.shape[1]] * len(array) if prompt_lengths is None else prompt_lengths
        if len(lengths) != len(array):
            raise UsageError(f"{len(lengths)} prompt_lengths for {len(array)} prompts")
        rows = [row[:n] for row, n in zip(array, lengths)]
    else:
        rows = [np.asarray(row) for row in prompt_ids]
    if not rows:
        raise UsageError("no prompts given")
    for i, row in enumerate(rows):
        if row.ndim != 1 or row.size == 0:
            raise UsageError(f"prompt {i} must be a non-empty list of token ids (e.g. just BOS)")
    return [row.astype(np.int32) for row in rows]


def check_length(model: OpenELM, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse (before any cache is allocated) a prompt that, with ``max_new_tokens``, outgrows the
    model's context (``max_context_length``: the positions it was built for)."""
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens={max_new_tokens} must be >= 1")
    context = model.cfg.max_context_length
    if prompt_tokens + max_new_tokens > context:
        room = (f"ask for at most {context - prompt_tokens} new tokens" if prompt_tokens < context
                else "shorten the prompt")
        raise UsageError(f"a prompt of {prompt_tokens} tokens plus max_new_tokens={max_new_tokens} "
                         f"exceeds the model's context of {context} tokens; {room}")


def pack_prompts(rows: list[np.ndarray], max_new_tokens: int, *, pad_id: int) -> Prompts:
    """Left-pad ``rows`` into a bucketed buffer with room for ``max_new_tokens``."""
    lengths = np.array([len(r) for r in rows], np.int32)
    prompt_len = bucket(int(lengths.max()))
    total = bucket(prompt_len + max_new_tokens)
    batch = bucket(len(rows), minimum=1)
    tokens = np.full((batch, total), pad_id, np.int32)
    start = np.full(batch, prompt_len - 1, np.int32)  # dummy rows: one token
    for i, row in enumerate(rows):
        start[i] = prompt_len - len(row)
        tokens[i, start[i]:prompt_len] = row
    dummy = np.arange(batch) >= len(rows)
    return Prompts(tokens, start, dummy, lengths, prompt_len)


def _emit(state: DecodeState, logits: jax.Array, sampling: Sampling) -> DecodeState:
    """Sample the token after ``index`` and write it to ``index + 1``."""
    key, step_key = jax.random.split(state.key)
    chosen = jnp.where(state.done, state.pad, sample(logits, step_key, sampling))
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, chosen[:, None], state.index + 1,
                                                 axis=1)
    done = state.done | jnp.isin(chosen, state.eos)
    return state._replace(tokens=tokens, index=state.index + 1, done=done, key=key)


@functools.partial(jax.jit, static_argnames=("graphdef", "prompt_len", "sampling", "cache_dtype"))
def _prefill(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, start: jax.Array,
             dummy: jax.Array, key: jax.Array, eos: jax.Array, pad: jax.Array, *,
             prompt_len: int, sampling: Sampling, cache_dtype: str) -> DecodeState:
    model = nnx.merge(graphdef, params)
    cache = init_cache(model, tokens.shape[0], tokens.shape[1], start, jnp.dtype(cache_dtype))
    logits, cache = forward_cached(model, tokens[:, :prompt_len], cache, 0)
    state = DecodeState(cache, tokens, jnp.int32(prompt_len - 1), dummy, key, eos, pad)
    return _emit(state, logits, sampling)


def _step_body(model: OpenELM, state: DecodeState, sampling: Sampling) -> DecodeState:
    newest = jax.lax.dynamic_slice_in_dim(state.tokens, state.index, 1, axis=1)
    logits, cache = forward_cached(model, newest, state.cache, state.index)
    return _emit(state._replace(cache=cache), logits, sampling)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("state",))
def _step(graphdef: nnx.GraphDef, params: nnx.State, state: DecodeState, *,
          sampling: Sampling) -> DecodeState:
    return _step_body(nnx.merge(graphdef, params), state, sampling)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("state",))
def _decode_loop(graphdef: nnx.GraphDef, params: nnx.State, state: DecodeState, last: jax.Array,
                 *, sampling: Sampling) -> DecodeState:
    """Decode until slot ``last`` is filled or every row is done."""
    model = nnx.merge(graphdef, params)
    return jax.lax.while_loop(
        lambda s: (s.index < last) & ~jnp.all(s.done),
        lambda s: _step_body(model, s, sampling),
        state)


def default_cache_dtype(model: OpenELM) -> str:
    """bfloat16 on accelerators, the model's compute dtype on CPU."""
    return "bfloat16" if jax.default_backend() != "cpu" else str(jnp.dtype(model.cfg.dtype))


class _Request(NamedTuple):
    graphdef: nnx.GraphDef
    params: nnx.State
    prompts: Prompts
    static: dict[str, Any]


def _request(model: OpenELM, prompt_ids: Any, max_new_tokens: int, *, temperature: float,
             top_k: int, top_p: float, key: jax.Array | None, eos_id: int | Sequence[int] | None,
             pad_id: int | None, prompt_lengths: Sequence[int] | None,
             cache_dtype: str | None) -> tuple[_Request, DecodeState]:
    """Validate arguments, pack the prompts and run the prefill (shared by generate and stream)."""
    sampling = Sampling(temperature, top_k, top_p)
    if key is None:
        if not sampling.greedy:
            raise UsageError("sampling with temperature > 0 needs an explicit PRNG key "
                             "(key=jax.random.key(seed))")
        key = jax.random.key(0)
    eos_ids = [] if eos_id is None else [int(e) for e in np.atleast_1d(eos_id)]
    pad = pad_id if pad_id is not None else (eos_ids[0] if eos_ids else 0)
    rows = as_rows(prompt_ids, prompt_lengths)
    check_length(model, max(len(row) for row in rows), max_new_tokens)
    vocab = model.cfg.vocab_size
    for i, row in enumerate(rows):
        if row.min() < 0 or row.max() >= vocab:
            raise UsageError(f"prompt {i} holds token ids outside [0, {vocab}): wrong tokenizer?")
    prompts = pack_prompts(rows, max_new_tokens, pad_id=pad)
    graphdef, params = nnx.split(model)
    static = dict(graphdef=graphdef, sampling=sampling)
    state = _prefill(params=params, tokens=global_batch(prompts.tokens),
                     start=global_batch(prompts.start), dummy=global_batch(prompts.dummy), key=key,
                     eos=jnp.asarray(eos_ids or [-1], jnp.int32), pad=jnp.int32(pad),
                     prompt_len=prompts.prompt_len,
                     cache_dtype=cache_dtype or default_cache_dtype(model), **static)
    return _Request(graphdef, params, prompts, static), state


def _unpack(prompts: Prompts, tokens: np.ndarray, produced: int, max_new_tokens: int,
            pad_id: int) -> np.ndarray:
    """Rows of ``prompt + generated`` (pad after EOS or a shorter prompt), ``[batch, P + new]``."""
    batch = len(prompts.lengths)
    out = np.full((batch, int(prompts.lengths.max()) + max_new_tokens), pad_id, np.int32)
    new = tokens[:batch, prompts.prompt_len:prompts.prompt_len + produced]
    for i, n in enumerate(prompts.lengths):
        out[i, :n] = tokens[i, prompts.prompt_len - n:prompts.prompt_len]
        out[i, n:n + produced] = new[i]
    return out


def generate(model: OpenELM, prompt_ids: Any, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, key: jax.Array | None = None,
             eos_id: int | Sequence[int] | None = None, pad_id: int | None = None,
             prompt_lengths: Sequence[int] | None = None,
             cache_dtype: str | None = None) -> jax.Array:
    """Continue each prompt by up to ``max_new_tokens`` tokens; int32 ``[batch, prompt + new]``.

    ``prompt_ids`` is a ``[batch, length]`` array (rows right-padded when ``prompt_lengths`` is
    given) or a list of token lists of different lengths. Row ``i`` of the result holds prompt
    ``i``, then its new tokens up to and including the first ``eos_id``, then ``pad_id``
    (default: the first EOS id, else 0) to the common width ``max(prompt) + max_new_tokens``.
    ``temperature=0`` is greedy; otherwise ``key`` (a PRNG key) is required and ``top_k`` /
    ``top_p`` filter the distribution. ``cache_dtype`` defaults to bfloat16 on accelerators and to
    the model's compute dtype on CPU.
    """
    request, state = _request(model, prompt_ids, max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, key=key, eos_id=eos_id, pad_id=pad_id,
                              prompt_lengths=prompt_lengths, cache_dtype=cache_dtype)
    last = jnp.int32(request.prompts.prompt_len + max_new_tokens - 1)
    state = _decode_loop(params=request.params, state=state, last=last, **request.static)
    produced = int(state.index) - request.prompts.prompt_len + 1
    return jnp.asarray(_unpack(request.prompts, to_host(state.tokens), produced,
                               max_new_tokens, int(state.pad)))


def stream(model: OpenELM, prompt_ids: Any, max_new_tokens: int, *, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, key: jax.Array | None = None,
           eos_id: int | Sequence[int] | None = None, pad_id: int | None = None,
           prompt_lengths: Sequence[int] | None = None,
           cache_dtype: str | None = None) -> Iterator[Step]:
    """Like ``generate`` (same arguments, same tokens), yielding each step's tokens as produced.

    Stops after ``max_new_tokens`` steps or once every row has emitted EOS.
    """
    request, state = _request(model, prompt_ids, max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, key=key, eos_id=eos_id, pad_id=pad_id,
                              prompt_lengths=prompt_lengths, cache_dtype=cache_dtype)
    batch = len(request.prompts.lengths)
    for produced in range(1, max_new_tokens + 1):
        if produced > 1:
            state = _step(params=request.params, state=state, **request.static)
        tokens, done = to_host((state.tokens[:batch, state.index], state.done[:batch]))
        yield Step(np.asarray(tokens, np.int32), np.asarray(done))
        if done.all():
            return
