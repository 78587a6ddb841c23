"""The jitted step: accumulation equals one big batch, the loss falls, non-finite steps are dropped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import FAST_COMPILE, make_iterator, replace_train, tiny_config

from elm_jax.parallel.mesh import global_batch, single_device_mesh
from elm_jax.train.step import make_train_step


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("run"))
    mesh = single_device_mesh()
    step = make_train_step(config, mesh, compiler_options=FAST_COMPILE)
    return config, mesh, step, step.init()


def copy(state):
    return jax.tree.map(jnp.copy, state)


def test_microbatches_equal_one_big_batch(setup):
    config, mesh, step, state = setup
    batch = global_batch(next(make_iterator(config, "train")), mesh)
    assert 0 < float(batch["loss_mask"].sum()) < batch["loss_mask"].size  # padding is uneven
    big, big_metrics = step(copy(state), batch)
    micro_step = make_train_step(replace_train(config, microbatches=4), mesh,
                                 compiler_options=FAST_COMPILE)
    micro, micro_metrics = micro_step(copy(state), batch)
    for key in ("loss", "z_loss", "grad_norm", "target_tokens"):
        np.testing.assert_allclose(float(micro_metrics[key]), float(big_metrics[key]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(micro.params), jax.tree.leaves(big.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert int(micro.step) == int(big.step) == 1


def test_tiny_model_loss_goes_down(setup):
    config, mesh, step, state = setup
    state = copy(state)
    losses = []
    for _, batch in zip(range(24), make_iterator(config, "train")):
        state, metrics = step(state, global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(np.log(config.model.vocab_size), abs=0.6)  # ~uniform at init
    assert np.mean(losses[-4:]) < 0.6 * losses[0], losses
    assert int(state.step) == 24 and int(state.skipped) == 0 and int(state.first_nonfinite) == -1


def test_nonfinite_step_is_dropped(setup):
    """Parameters of 1e30 overflow the loss or its gradient: the update is not applied, the step is counted
    as skipped and named, and the next finite batch trains normally."""
    config, mesh, step, state = setup
    batches = [global_batch(b, mesh) for _, b in zip(range(2), make_iterator(config, "train"))]
    state = copy(state)
    state, _ = step(state, batches[0])
    blown = state._replace(params=jax.tree.map(lambda p: p * 1e30, state.params))
    kept = jax.tree.map(np.asarray, blown.params)
    after, metrics = step(blown, batches[1])
    assert int(metrics["nonfinite"]) == 1
    assert not (np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"])))
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(kept)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert int(after.step) == 2 and int(after.skipped) == 1 and int(after.first_nonfinite) == 1
