"""Direct preference optimisation (Rafailov et al., 2023) on rows that each hold one pair.

A preference row packs the chosen sequence (segment 1) and the rejected one (segment 2) back to
back, attention confined to each by the segment ids, the loss mask on their response tokens. So a
pair never splits across devices or microbatches, and the batch keeps the pretraining fields.

With policy and reference log-probabilities of each response, ``z = beta ((pc - rc) - (pr - rr))``;
the sigmoid loss is ``-log sigmoid(z)`` (the paper's), the hinge loss ``max(0, 1 - z)`` (SLiC, as in
TRL's ``loss_type="hinge"``). Rewards are ``beta (p - r)`` of each side, the margin their
difference, the accuracy the share of pairs whose chosen reward is higher.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from elm_jax.train.loss import LossSums

CHOSEN, REJECTED = 1, 2  # segment ids of the two halves of a pair row


def response_logprobs(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Summed log-probabilities of the chosen and the rejected response of each row ``[rows]``."""
    logp = -optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                           batch["targets"])
    mask = batch["loss_mask"].astype(jnp.float32)
    segments = batch["segment_ids"]
    return tuple(jnp.sum(logp * mask * (segments == side), axis=-1) for side in (CHOSEN, REJECTED))


def pair_losses(z: jax.Array, loss: str) -> jax.Array:
    """Per-pair loss of ``z = beta * (policy log-ratio margin - reference log-ratio margin)``."""
    if loss == "sigmoid":
        return -jax.nn.log_sigmoid(z)
    if loss == "hinge":
        return jax.nn.relu(1.0 - z)
    raise ValueError(f"unknown DPO loss {loss!r}")


def dpo_sums(policy_logits: jax.Array, reference_logits: jax.Array, batch: Mapping[str, jax.Array],
             *, beta: float, loss: str) -> tuple[LossSums, dict[str, jax.Array]]:
    """The DPO loss summed over the rows that hold a pair (``tokens`` counts pairs) and the sums of
    its metrics: rewards, margin and accuracy."""
    pc, pr = response_logprobs(policy_logits, batch)
    rc, rr = response_logprobs(jax.lax.stop_gradient(reference_logits), batch)
    mask = batch["loss_mask"] * (batch["segment_ids"] > 0)
    has = [jnp.any((batch["segment_ids"] == side) & (mask > 0), axis=-1) for side in (CHOSEN, REJECTED)]
    valid = (has[0] & has[1]).astype(jnp.float32)
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    losses = pair_losses(chosen - rejected, loss)
    total = lambda x: jnp.sum(x * valid)  # noqa: E731
    metrics = {"rewards_chosen": total(chosen), "rewards_rejected": total(rejected),
               "reward_margin": total(chosen - rejected),
               "reward_accuracy": total((chosen > rejected).astype(jnp.float32))}
    return LossSums(total(losses), jnp.zeros((), jnp.float32), jnp.sum(valid)), metrics
