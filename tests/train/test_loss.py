"""Cross-entropy and z-loss sums against a NumPy log-softmax."""

import jax.numpy as jnp
import numpy as np

from elm_jax.train.loss import loss_sums


def test_loss_sums_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (2, 5))
    mask = (rng.random((2, 5)) > 0.3).astype(np.float32)
    sums = loss_sums(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), jnp.asarray(targets),
                     jnp.asarray(mask))
    x = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
    log_z = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    nll = log_z - np.take_along_axis(x, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums.cross_entropy), (nll * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums.z_loss), (log_z ** 2 * mask).sum(), rtol=1e-5)
    assert float(sums.tokens) == mask.sum()
    objective = float(sums.objective(1e-4))
    np.testing.assert_allclose(objective, ((nll + 1e-4 * log_z ** 2) * mask).sum() / mask.sum(),
                               rtol=1e-5)


def test_fully_masked_batch_gives_zero_not_nan():
    sums = loss_sums(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3)))
    assert float(sums.objective(1e-4)) == 0.0
