"""One train step on 8 simulated devices equals the single-device step, for DP, FSDP, and mixed
FSDP + tensor meshes (issue 6), and every parameter lands with the sharding its rule names."""

import dataclasses

import jax
import numpy as np
import pytest
from synthetic import FAST_COMPILE, make_iterator, tiny_config

from elm_jax.config import MeshConfig
from elm_jax.model import abstract_params
from elm_jax.parallel.mesh import global_batch, make_mesh, param_specs, single_device_mesh
from elm_jax.train.step import make_train_step


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Layers with (query, kv) heads (4, 2) and (8, 4): a tensor axis of 4 divides the second
    layer's heads and not the first's. eps 1e-3 keeps Adam's first step smooth in tiny gradients."""
    config = tiny_config(tmp_path_factory.mktemp("run"), warmup_steps=0, eps=1e-3)
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, model_dim=64, ffn_dim_divisor=32))
    assert [(s.q_heads, s.kv_heads) for s in config.model.layer_shapes()] == [(4, 2), (8, 4)]
    step = make_train_step(config, single_device_mesh(), donate=False, compiler_options=FAST_COMPILE)
    state = step.init()
    batch = next(make_iterator(config, "train"))
    new_state, metrics = step(state, global_batch(batch, step.mesh))
    return config, state, batch, new_state, metrics


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_one_step_matches_single_device(reference, shape):
    config, state, batch, want, want_metrics = reference
    mesh = make_mesh(MeshConfig(*shape))
    step = make_train_step(dataclasses.replace(config, mesh=MeshConfig(*shape)), mesh, donate=False,
                           compiler_options=FAST_COMPILE)
    specs = jax.tree.leaves(param_specs(abstract_params(config.model), mesh),
                            is_leaf=lambda x: isinstance(x, jax.P))
    if shape == (1, 2, 4):  # created sharded (jit with out_shardings): the same values as one device
        sharded_state = step.init()
        for got, ref, spec in zip(jax.tree.leaves(sharded_state.params), jax.tree.leaves(state.params),
                                  specs):
            assert got.sharding.spec == spec
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
        mu = sharded_state.opt_state[1][0].mu  # Adam's moments follow the parameter shardings
        assert [m.sharding.spec for m in jax.tree.leaves(mu)] == specs
    else:
        sharded_state = jax.device_put(state, step.state_shardings)
    got, metrics = step(sharded_state, global_batch(batch, mesh))
    for key in ("loss", "z_loss", "grad_norm"):
        np.testing.assert_allclose(float(metrics[key]), float(want_metrics[key]), rtol=2e-5)
    flat = jax.tree_util.tree_flatten_with_path(got.params)[0]
    for (path, g), w, spec in zip(flat, jax.tree.leaves(want.params), specs):
        assert g.sharding.spec == spec, path  # the step's outputs keep the rule's sharding
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5, err_msg=str(path))
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(state.params)))
    assert moved > 1e-3  # the step really changed the parameters
