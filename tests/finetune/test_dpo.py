"""DPO's losses and metrics against NumPy, from the logits of pair rows."""

import numpy as np
import pytest
from scipy.special import log_softmax

from elm_jax.finetune.dpo import dpo_sums, pair_losses


def pair_batch(rng, rows=3, seq=10, vocab=11):
    """Rows holding a chosen (segment 1) and a rejected (segment 2) sequence, then padding; the
    loss mask covers some response tokens of each."""
    segments = np.zeros((rows, seq), np.int32)
    segments[:, :4], segments[:, 4:8] = 1, 2
    mask = np.zeros((rows, seq), np.float32)
    mask[:, 2:4], mask[:, 6:8] = 1.0, 1.0
    mask[2, 6:8] = 0.0  # row 2 has no rejected response: not a pair, not counted
    return {"targets": rng.integers(0, vocab, (rows, seq)).astype(np.int32), "loss_mask": mask,
            "segment_ids": segments}


def numpy_dpo(policy, reference, batch, beta, loss):
    def sides(logits):
        logp = np.take_along_axis(log_softmax(logits.astype(np.float64), -1),
                                  batch["targets"][..., None], -1)[..., 0] * batch["loss_mask"]
        return [(logp * (batch["segment_ids"] == s)).sum(-1) for s in (1, 2)]

    (pc, pr), (rc, rr) = sides(policy), sides(reference)
    z = beta * ((pc - rc) - (pr - rr))
    losses = np.log1p(np.exp(-z)) if loss == "sigmoid" else np.maximum(0.0, 1.0 - z)
    valid = np.array([True, True, False])
    return {"loss": losses[valid].mean(), "rewards_chosen": (beta * (pc - rc))[valid].mean(),
            "rewards_rejected": (beta * (pr - rr))[valid].mean(), "reward_margin": z[valid].mean(),
            "reward_accuracy": (z[valid] > 0).mean()}


@pytest.mark.parametrize("loss", ["sigmoid", "hinge"])
def test_dpo_matches_numpy(loss):
    rng = np.random.default_rng(0)
    batch = pair_batch(rng)
    policy = rng.standard_normal((3, 10, 11)).astype(np.float32) * 2
    reference = rng.standard_normal((3, 10, 11)).astype(np.float32) * 2
    want = numpy_dpo(policy, reference, batch, beta=0.5, loss=loss)
    sums, metrics = dpo_sums(policy, reference, batch, beta=0.5, loss=loss)
    assert float(sums.tokens) == 2 and float(sums.z_loss) == 0
    np.testing.assert_allclose(float(sums.cross_entropy) / 2, want["loss"], rtol=1e-5)
    for name, value in metrics.items():
        np.testing.assert_allclose(float(value) / 2, want[name], rtol=1e-5, atol=1e-6)


def test_losses_on_fixed_margins():
    """-log sigmoid(z) and max(0, 1 - z) at hand-picked z."""
    z = np.array([-2.0, 0.0, 0.5, 1.0, 3.0], np.float32)
    np.testing.assert_allclose(pair_losses(z, "sigmoid"), np.log1p(np.exp(-z)), rtol=1e-6)
    np.testing.assert_allclose(pair_losses(z, "hinge"), [3.0, 1.0, 0.5, 0.0, 0.0], rtol=1e-6)
    assert float(pair_losses(np.float32(0.0), "sigmoid")) == pytest.approx(np.log(2))
