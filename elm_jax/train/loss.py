"""Cross-entropy over non-masked targets plus z-loss (``1e-4 * logsumexp^2``), all in float32.

The functions return *sums* and a token count rather than means, so that gradient accumulation
over microbatches adds sums and divides once: the result equals one big batch exactly (up to
float addition order), however the padding is spread over microbatches.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


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
