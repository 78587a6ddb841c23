"""The analytic memory floor, checked term by term against numbers worked out by hand."""

import pytest

from elm_jax.config import from_config_dict
from elm_jax.presets import openelm_config
from elm_jax.train import plan as plan_lib
from elm_jax.train import topology
from elm_jax.train.memory import memory_bound, shard_bytes
from elm_jax.train.step import make_train_step

PARAMS_3B = 3_037_040_640


@pytest.fixture(scope="module")
def openelm_3b_on_v5p_32():
    """The 3B recipe on 16 v5p chips (FSDP over all of them), 16 sequences per chip per
    microbatch: built abstractly, nothing compiled."""
    config = from_config_dict(openelm_config("3b"))  # microbatches "auto": 128 per chip -> 8 x 16
    topo = topology.parse("v5p-32")
    mesh = plan_lib.default_mesh_builder(config, topology.devices(topo))
    step = make_train_step(config, mesh)
    return config, dict(mesh.shape), step


def test_3b_floor_at_16_sequences_per_chip(openelm_3b_on_v5p_32):
    config, mesh_shape, step = openelm_3b_on_v5p_32
    assert mesh_shape == {"data": 1, "fsdp": 16, "tensor": 1}
    bound = memory_bound(config, mesh_shape, step.state_shapes, step.batch_shapes,
                         microbatches=8, attention_impl="pallas_tpu")
    terms = {t.name: t.bytes for t in (*bound.held, *bound.temporaries)}
    tokens = 16 * 2048
    # f32 parameters and two Adam moments, 1/16 each, but for the norm weights (replicated):
    # two [3072] and two [128] per layer, and the final [3072]
    norms = 36 * (2 * 3072 + 2 * 128) + 3072
    per_chip = (PARAMS_3B - norms) // 16 + norms
    assert terms["parameters"] == 4 * per_chip
    assert terms["optimizer state"] == pytest.approx(2 * 4 * per_chip, abs=64)  # + Adam's count
    assert terms["gradients"] == terms["parameters"]
    # full remat: each of the 36 layers keeps its bf16 input, plus the last layer's output
    assert terms["activations kept for the backward"] == 37 * tokens * 3072 * 2
    # the larger working set is the widest layer's backward: its FFN (gate, up, the gradients of
    # their product and of gate, 12288 wide; the normed input and incoming gradient, 3072 wide;
    # bf16) and its gathered bf16 weights with their gradient (3 x 3072 x 12288 for the FFN,
    # 3072 x 128 x (24 + 2 x 6) + 24 x 128 x 3072 for attention, plus its norms)
    layer_35 = config.model.layer_shapes()[35]
    assert (layer_35.q_heads, layer_35.kv_heads, layer_35.ffn_dim) == (24, 6, 12288)
    weights = 3 * 3072 * 12288 + 3072 * 128 * 36 + 24 * 128 * 3072 + 2 * 3072 + 2 * 128
    assert terms["largest layer's backward working set"] == (
        tokens * (4 * 12288 + 2 * 3072) * 2 + 2 * weights * 2)
    assert "loss working set" not in terms
    assert bound.temp_bytes == sum(t.bytes for t in bound.temporaries)


def test_loss_working_set_is_one_chunk_of_logits(openelm_3b_on_v5p_32):
    config, mesh_shape, step = openelm_3b_on_v5p_32
    whole = plan_lib.with_overrides(config, (("train.loss_chunk", 0),))
    bound = memory_bound(whole, mesh_shape, step.state_shapes, step.batch_shapes, microbatches=8)
    loss = {t.name: t.bytes for t in bound.temporaries}["loss working set"]
    tokens = 16 * 2048
    # float32 logits of all 32768 tokens and their gradient, plus the hidden states' gradient
    assert loss == 2 * tokens * 32128 * 4 + tokens * 3072 * 2
    chunked = memory_bound(config, mesh_shape, step.state_shapes, step.batch_shapes, 8)
    assert chunked.temp_bytes < bound.temp_bytes


def test_kept_activations_follow_the_remat_policy(openelm_3b_on_v5p_32):
    config, mesh_shape, step = openelm_3b_on_v5p_32
    kept = {}
    for policy in ("full", "save_attention_out", "none"):
        cfg = plan_lib.with_overrides(config, (("model.remat_policy", policy),))
        bound = memory_bound(cfg, mesh_shape, step.state_shapes, step.batch_shapes, 8)
        kept[policy] = {t.name: t.bytes for t in bound.temporaries}[
            "activations kept for the backward"]
    q_widths = sum(s.q_heads * 128 for s in config.model.layer_shapes())
    assert kept["save_attention_out"] - kept["full"] == 16 * 2048 * q_widths * 2
    assert kept["none"] > 10 * kept["full"]
    assert shard_bytes(step.batch_shapes) == 5 * 128 * 2048 * 4  # 128 rows of 5 int32/f32 fields
