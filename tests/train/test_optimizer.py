"""The paper's schedule and AdamW details against hand-written formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from elm_jax.config import ModelConfig, TrainConfig
from elm_jax.model import abstract_model
from elm_jax.train.optimizer import decay_mask, learning_rate_schedule, make_optimizer


def paper_lr(t, peak, warmup=5000, period=345_001, init=1e-6, min_ratio=0.1):
    """docs/OPENELM.md, "Pretraining recipe", verbatim."""
    lo = min_ratio * peak
    if t < warmup:
        return init + t * (peak - init) / warmup
    return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * min(t - warmup, period) / period))


@pytest.mark.parametrize("peak", [5.3e-3, 1.2e-3])
def test_schedule_matches_paper_formula(peak):
    schedule = learning_rate_schedule(TrainConfig(peak_lr=peak))
    for t in (0, 1, 2500, 4999, 5000, 5001, 100_000, 177_500, 349_999, 350_001, 400_000):
        np.testing.assert_allclose(float(schedule(t)), paper_lr(t, peak), rtol=2e-6, atol=1e-9,
                                   err_msg=f"step {t}")
    assert float(schedule(0)) == pytest.approx(1e-6, abs=1e-9)
    assert float(schedule(5000)) == pytest.approx(peak, rel=1e-6)
    assert float(schedule(350_001)) == pytest.approx(0.1 * peak, rel=1e-6)


def test_schedule_without_warmup_starts_at_peak():
    schedule = learning_rate_schedule(TrainConfig(peak_lr=1e-3, warmup_steps=0, cosine_period=10))
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(5)) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi / 2)))


def test_decay_mask_is_exactly_the_matrices():
    cfg = ModelConfig(vocab_size=32, num_layers=2, model_dim=16, head_dim=8, num_gqa_groups=1,
                      ffn_dim_divisor=16)
    params = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
    flat = {"/".join(map(str, p)): m for p, m in
            ((tuple(k.key for k in path), m) for path, m in
             jax.tree_util.tree_flatten_with_path(decay_mask(params))[0])}
    no_decay = {k for k, m in flat.items() if not m}
    assert no_decay == {k for k in flat if k.endswith("norm/weight")}  # every RMSNorm, nothing else
    assert "embed" in flat and flat["embed"]
    assert flat["layers/0/attn/q_proj"] and flat["layers/1/ffn/down"]


def test_adamw_decays_matrices_not_norms():
    """With zero gradients Adam's step is 0, so one update is pure decoupled weight decay:
    p <- p - lr * wd * p on >= 2-D params, and 1-D params do not move."""
    cfg = TrainConfig(peak_lr=0.5, warmup_steps=0, cosine_period=10, weight_decay=0.1, grad_clip=1.0)
    tx = make_optimizer(cfg)
    rng = np.random.default_rng(0)
    params = {"embed": jnp.asarray(rng.standard_normal((5, 4))), "norm": {"weight": jnp.ones(4)},
              "layers": {0: {"up": jnp.asarray(rng.standard_normal((4, 3, 2))),
                             "q_norm": {"weight": jnp.full(2, 0.5)}}}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    for (path, p), u in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(updates)):
        expected = -0.5 * 0.1 * np.asarray(p) if p.ndim > 1 else np.zeros(p.shape)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6, atol=1e-8, err_msg=str(path))


def test_gradient_clipping_caps_the_global_norm():
    """Adam's second moment after one step is (1 - b2) g^2 of the gradient it saw: the gradient
    clipped to global norm 1 (here 3x3 entries of 100 -> entries of 1/3)."""
    tx = make_optimizer(TrainConfig(grad_clip=1.0, b2=0.95))
    params = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
    grads = {"w": jnp.full((3, 3), 100.0), "b": jnp.zeros(3)}
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    (nu,) = optax.tree_utils.tree_get_all_with_path(state, "nu")
    np.testing.assert_allclose(np.asarray(nu[1]["w"]), 0.05 * np.full((3, 3), 1 / 9), rtol=1e-5)
