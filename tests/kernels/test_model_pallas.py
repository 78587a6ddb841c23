"""The model gives the same logits and gradients with the Pallas kernel as with XLA attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elm_jax.model import build


def _logits_and_grads(cfg, tokens, segment_ids, positions):
    model = build(cfg, seed=0)

    def loss(model):
        logits = model(tokens, positions=positions, segment_ids=segment_ids)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    (_, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    return logits, jax.tree.leaves(nnx.state(grads, nnx.Param))


def test_model_pallas_interpret_matches_xla(tiny_model_config):
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, tiny_model_config.vocab_size, (2, 20)), jnp.int32)
    segment_ids = jnp.asarray([[1] * 12 + [2] * 8, [1] * 20], jnp.int32)  # one packed row
    positions = jnp.asarray([list(range(12)) + list(range(8)), list(range(20))], jnp.int32)
    xla_cfg = dataclasses.replace(tiny_model_config, attention_impl="xla")
    pallas_cfg = dataclasses.replace(tiny_model_config, attention_impl="pallas",
                                     attention_interpret=True)
    logits, grads = _logits_and_grads(pallas_cfg, tokens, segment_ids, positions)
    ref_logits, ref_grads = _logits_and_grads(xla_cfg, tokens, segment_ids, positions)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert len(grads) == len(ref_grads) > 0
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, atol=1e-5, rtol=1e-4)
