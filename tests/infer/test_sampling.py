"""Sampling filters against hand-computed masks, and the sampler against its distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elm_jax.infer.sampling import Sampling, sample, top_k_mask, top_p_mask

PROBS = np.array([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5 (1), 0.3 (3), 0.15 (0), 0.05 (2)


def kept(masked):
    return set(np.flatnonzero(np.isfinite(np.asarray(masked))).tolist())


@pytest.mark.parametrize("p, expected", [
    (0.4, {1}),  # 0.5 alone reaches 0.4
    (0.7, {1, 3}),  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    (0.85, {1, 3, 0}),
    (0.97, {1, 3, 0, 2}),
    (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_smallest_set_reaching_p(p, expected):
    logits = jnp.log(jnp.asarray(PROBS, jnp.float32))[None]
    assert kept(top_p_mask(logits, p)[0]) == expected


def test_top_k_keeps_k_largest():
    logits = jnp.asarray([[0.1, 2.0, -1.0, 1.5, 0.3]])
    assert kept(top_k_mask(logits, 2)[0]) == {1, 3}
    assert kept(top_k_mask(logits, 0)[0]) == set(range(5))


def test_samples_follow_renormalised_nucleus():
    logits = jnp.log(jnp.asarray(np.tile(PROBS, (4000, 1)), jnp.float32))
    draws = np.asarray(sample(logits, jax.random.key(0), Sampling(temperature=1.0, top_p=0.85)))
    freq = np.bincount(draws, minlength=4) / len(draws)
    expected = np.array([0.15, 0.5, 0.0, 0.3]) / 0.95
    np.testing.assert_allclose(freq, expected, atol=0.03)  # ~4 standard errors


def test_temperature_sharpens():
    logits = jnp.log(jnp.asarray(np.tile(PROBS, (4000, 1)), jnp.float32))
    draws = np.asarray(sample(logits, jax.random.key(1), Sampling(temperature=0.5)))
    expected = PROBS ** 2 / (PROBS ** 2).sum()  # p^(1/T), renormalised
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), expected, atol=0.03)


def test_greedy_is_argmax_and_rows_draw_independently_of_batch_size():
    logits = jax.random.normal(jax.random.key(2), (6, 50))
    np.testing.assert_array_equal(sample(logits, jax.random.key(3), Sampling()),
                                  np.argmax(logits, axis=-1))
    s = Sampling(temperature=1.0)
    full = sample(logits, jax.random.key(4), s)
    np.testing.assert_array_equal(sample(logits[:3], jax.random.key(4), s), full[:3])


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Sampling(**kwargs)
