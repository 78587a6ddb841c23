"""Mesh sizes, logical-axis rules and per-layer head replication, against hand-written specs."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from elm_jax.config import MeshConfig, ModelConfig
from elm_jax.errors import ConfigError
from elm_jax.model import abstract_params
from elm_jax.parallel.mesh import (
    check_batch_divides,
    global_batch,
    make_mesh,
    mesh_shape,
    param_specs,
    sharding_report,
)
from elm_jax.parallel.rules import logical_to_spec

# 3 layers with (query, kv) heads (4, 2), (6, 3), (8, 4) and FFN widths 32, 96, 128
MODEL = ModelConfig(vocab_size=64, num_layers=3, model_dim=64, head_dim=8, num_gqa_groups=2,
                    qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0), ffn_dim_divisor=32)


def test_model_has_the_head_counts_this_file_assumes():
    assert [(s.q_heads, s.kv_heads, s.ffn_dim) for s in MODEL.layer_shapes()] == \
        [(4, 2, 32), (6, 3, 96), (8, 4, 128)]


@pytest.mark.parametrize("cfg, devices, shape", [
    (MeshConfig(-1, 1, 1), 8, (8, 1, 1)),
    (MeshConfig(1, -1, 2), 8, (1, 4, 2)),
    (MeshConfig(2, 2, 2), 8, (2, 2, 2)),
    (MeshConfig(1, 1, 1), 1, (1, 1, 1)),
])
def test_mesh_shape_resolves_the_rest_axis(cfg, devices, shape):
    assert mesh_shape(cfg, devices) == shape


@pytest.mark.parametrize("cfg, devices", [(MeshConfig(-1, 3, 1), 8), (MeshConfig(2, 2, 1), 8),
                                          (MeshConfig(1, 1, 1), 8)])
def test_mesh_that_does_not_fit_is_a_config_error(cfg, devices):
    with pytest.raises(ConfigError, match="mesh"):
        mesh_shape(cfg, devices)


def test_make_mesh_axes_and_devices():
    mesh = make_mesh(MeshConfig(2, 2, -1))
    assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == \
        {"data": 2, "fsdp": 2, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_fsdp_plus_tensor_rules_per_layer():
    """mesh (1, 2, 4): embed dims over fsdp; heads over tensor only in the layer whose query AND kv
    head counts 4 divides (layer 2); the other layers keep their attention heads replicated."""
    specs = param_specs(abstract_params(MODEL), make_mesh(MeshConfig(1, 2, 4)))
    assert specs["embed"] == P("tensor", "fsdp")  # vocab 64 over tensor, embed over fsdp
    assert specs["norm"]["weight"] == P(None)
    layer = [specs["layers"][i] for i in range(3)]
    for i in (0, 1):
        assert layer[i]["attn"]["q_proj"] == P("fsdp", None, None)
        assert layer[i]["attn"]["k_proj"] == P("fsdp", None, None)
        assert layer[i]["attn"]["out_proj"] == P(None, None, "fsdp")
    assert layer[2]["attn"]["q_proj"] == P("fsdp", "tensor", None)
    assert layer[2]["attn"]["v_proj"] == P("fsdp", "tensor", None)
    assert layer[2]["attn"]["out_proj"] == P("tensor", None, "fsdp")
    for i in range(3):  # FFN widths 32 / 96 / 128 all divide by 4
        assert layer[i]["ffn"]["gate"] == P("fsdp", "tensor")
        assert layer[i]["ffn"]["down"] == P("tensor", "fsdp")
        assert layer[i]["attn"]["q_norm"]["weight"] == P(None)
    report = sharding_report(MODEL, abstract_params(MODEL), make_mesh(MeshConfig(1, 2, 4)))
    assert len(report) == 2 and "layers/0/attn (4 query / 2 kv heads)" in report[0]
    assert "layers/1/attn (6 query / 3 kv heads)" in report[1]


def test_tensor_two_replicates_only_the_odd_kv_layer():
    specs = param_specs(abstract_params(MODEL), make_mesh(MeshConfig(4, 1, 2)))
    assert [specs["layers"][i]["attn"]["k_proj"] for i in range(3)] == \
        [P(None, "tensor", None), P(None, None, None), P(None, "tensor", None)]


def test_pure_data_parallel_replicates_every_parameter():
    specs = param_specs(abstract_params(MODEL), make_mesh(MeshConfig(-1, 1, 1)))
    assert all(all(a is None for a in s) for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))


def test_logical_to_spec_never_reuses_a_mesh_axis_and_skips_non_divisors():
    mesh = make_mesh(MeshConfig(1, 2, 4))
    rules = {"a": ("tensor",), "b": ("tensor",), "c": ("fsdp",)}
    assert logical_to_spec(("a", "b"), (8, 8), mesh, rules) == P("tensor", None)
    assert logical_to_spec(("a", "c"), (6, 5), mesh, rules) == P(None, None)


def test_batch_checks_and_global_batch():
    mesh = make_mesh(MeshConfig(2, 2, 2))
    with pytest.raises(ConfigError, match="multiple of 8"):
        check_batch_divides(mesh, 12, microbatches=2)
    batch = global_batch({"inputs": np.arange(32).reshape(8, 4)}, mesh)["inputs"]
    assert batch.shape == (8, 4) and batch.sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(batch), np.arange(32).reshape(8, 4))
