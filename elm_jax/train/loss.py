"""Cross-entropy over non-masked targets plus z-loss (``1e-4 * logsumexp^2``), all in float32.

The functions return *sums* and a token count rather than means, so that gradient accumulation
over microbatches adds sums and divides once: the result equals one big batch exactly (up to
float addition order), however the padding is spread over microbatches.

``chunked_objective`` computes the same sums from the final hidden states and the output embedding
without ever holding the float32 ``[batch, seq, vocab]`` logits or their gradient: it walks the
sequence in chunks, and since the objective is a sum its gradient with respect to each chunk's
logits is known in the forward pass already (softmax minus one-hot, plus the z-loss term). So the
forward computes each chunk's gradients with respect to the hidden states and the embedding and
keeps those (``[batch, seq, d]`` and ``[vocab, d]``, the size of the inputs) instead of the logits;
the backward only scales them by the incoming cotangent. No logit is computed twice.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from elm_jax.model.openelm import LOGITS
from elm_jax.parallel.rules import constrain


class LossSums(NamedTuple):
    """Per-batch sums over non-masked target tokens."""

    cross_entropy: jax.Array
    z_loss: jax.Array  # sum of logsumexp(logits)^2, unweighted
    tokens: jax.Array

    def objective(self, z_loss_weight: float, tokens: jax.Array | None = None) -> jax.Array:
        """``(ce + w * z) / tokens``; ``tokens`` may be a larger total (accumulation)."""
        count = jnp.maximum(self.tokens if tokens is None else tokens, 1.0)
        return (self.cross_entropy + z_loss_weight * self.z_loss) / count


def loss_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> LossSums:
    """``logits`` [batch, seq, vocab], integer ``targets`` and float ``loss_mask`` [batch, seq]."""
    logits = logits.astype(jnp.float32)
    mask = loss_mask.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return LossSums(cross_entropy=jnp.sum((log_z - target_logit) * mask),
                    z_loss=jnp.sum(jnp.square(log_z) * mask),
                    tokens=jnp.sum(mask))


def chunk_count(seq_len: int, chunk: int) -> int:
    """Number of equal chunks of at most ``chunk`` positions that tile ``seq_len`` (1 if chunk <= 0)."""
    if chunk <= 0 or chunk >= seq_len:
        return 1
    count = -(-seq_len // chunk)
    while seq_len % count:
        count += 1
    return count


def _chunk_logits(hidden: jax.Array, embedding: jax.Array) -> jax.Array:
    """Float32 logits of one chunk: ``hidden`` [batch, chunk, d] times the tied embedding [vocab, d]."""
    logits = jnp.einsum("bcd,vd->bcv", hidden, embedding, preferred_element_type=jnp.float32)
    return constrain(logits, LOGITS)


def _chunk_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(cross-entropy sum, z sum, logsumexp, target logit) of one chunk's float32 logits."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return (jnp.sum((log_z - target_logit) * mask), jnp.sum(jnp.square(log_z) * mask), log_z,
            target_logit)


def _slice(x: jax.Array, index: jax.Array, size: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=1)


def _sums_only(hidden, embedding, targets, mask, z_weight, chunks):
    """The primal: ``(ce + w z, ce, z)`` sums, one chunk of logits at a time."""
    size = hidden.shape[1] // chunks

    def body(i, carry):
        logits = _chunk_logits(_slice(hidden, i, size), embedding)
        ce, z, _, _ = _chunk_sums(logits, _slice(targets, i, size), _slice(mask, i, size))
        return carry[0] + ce, carry[1] + z

    zero = jnp.zeros((), jnp.float32)
    ce, z = jax.lax.fori_loop(0, chunks, body, (zero, zero))
    return ce + z_weight * z, ce, z


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _objective(hidden, embedding, targets, mask, z_weight, chunks):
    return _sums_only(hidden, embedding, targets, mask, z_weight, chunks)


def _objective_fwd(hidden, embedding, targets, mask, z_weight, chunks):
    """Sums and, chunk by chunk, the objective's gradients for the hidden states and embedding."""
    size = hidden.shape[1] // chunks
    vocab = embedding.shape[0]

    def body(i, carry):
        ce_sum, z_sum, d_hidden, d_embedding = carry
        h = _slice(hidden, i, size)
        m = _slice(mask, i, size)
        t = _slice(targets, i, size)
        logits = _chunk_logits(h, embedding)
        ce, z, log_z, _ = _chunk_sums(logits, t, m)
        # d(ce + w z)/d logits = softmax * (1 + 2 w logsumexp) - onehot(target), on unmasked tokens
        probs = jnp.exp(logits - log_z[..., None])
        d_logits = (probs * (1.0 + 2.0 * z_weight * log_z)[..., None]
                    - jax.nn.one_hot(t, vocab, dtype=jnp.float32)) * m[..., None]
        d_logits = constrain(d_logits, LOGITS).astype(hidden.dtype)
        d_h = jnp.einsum("bcv,vd->bcd", d_logits, embedding, preferred_element_type=jnp.float32)
        d_hidden = jax.lax.dynamic_update_slice_in_dim(d_hidden, d_h.astype(hidden.dtype),
                                                       i * size, axis=1)
        d_embedding = d_embedding + jnp.einsum("bcv,bcd->vd", d_logits, h,
                                               preferred_element_type=jnp.float32)
        return ce_sum + ce, z_sum + z, d_hidden, d_embedding

    zero = jnp.zeros((), jnp.float32)
    init = (zero, zero, jnp.zeros_like(hidden), jnp.zeros(embedding.shape, jnp.float32))
    ce, z, d_hidden, d_embedding = jax.lax.fori_loop(0, chunks, body, init)
    return (ce + z_weight * z, ce, z), (d_hidden, d_embedding.astype(embedding.dtype))


def _objective_bwd(z_weight, chunks, residuals, cotangents):
    """Scale the gradients found in the forward pass. Only the objective is differentiable:
    ``chunked_objective`` stops the gradient of the ce and z sums it also returns."""
    del z_weight, chunks
    d_hidden, d_embedding = residuals
    g = cotangents[0]
    return ((g * d_hidden).astype(d_hidden.dtype), (g * d_embedding).astype(d_embedding.dtype),
            None, None)


_objective.defvjp(_objective_fwd, _objective_bwd)


def chunked_objective(hidden: jax.Array, embedding: jax.Array, targets: jax.Array,
                      loss_mask: jax.Array, *, z_loss_weight: float, chunk: int
                      ) -> tuple[jax.Array, LossSums]:
    """``(sum of ce + w * z, LossSums)`` from final hidden states, without whole logits.

    ``hidden`` [batch, seq, d] and ``embedding`` [vocab, d] are in the compute dtype (the logits are
    accumulated in float32, as ``OpenELM.logits`` does); ``chunk`` is the number of sequence
    positions whose logits exist at once (``chunk_count`` makes the chunks equal). Only the first
    result is differentiable, with respect to ``hidden`` and ``embedding``; the sums are for
    reporting.
    """
    mask = loss_mask.astype(jnp.float32)
    chunks = chunk_count(hidden.shape[1], chunk)
    objective, ce, z = _objective(hidden, embedding, targets, mask, float(z_loss_weight), chunks)
    sums = LossSums(jax.lax.stop_gradient(ce), jax.lax.stop_gradient(z), jnp.sum(mask))
    return objective, sums


def chunked_loss_sums(hidden: jax.Array, embedding: jax.Array, targets: jax.Array,
                      loss_mask: jax.Array, *, z_loss_weight: float, chunk: int) -> LossSums:
    """``chunked_objective`` as the ``LossSums`` every objective returns: the values are exactly the
    cross-entropy and z sums, and ``cross_entropy + z_loss_weight * z_loss`` differentiates as the
    objective (its gradient rides on ``cross_entropy``: ``objective - stop_gradient(objective)`` is
    zero in value; ``z_loss`` carries none)."""
    objective, sums = chunked_objective(hidden, embedding, targets, loss_mask,
                                        z_loss_weight=z_loss_weight, chunk=chunk)
    return sums._replace(cross_entropy=sums.cross_entropy + objective - jax.lax.stop_gradient(objective))
