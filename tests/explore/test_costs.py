"""Per-layer costs against hand-computed values, the model's own counters, the published totals,
and JAX's list of the residuals autodiff saves."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals

from elm_jax.common_types import REMAT_POLICIES
from elm_jax.config import ModelConfig
from elm_jax.explore.costs import activation_bytes, model_costs
from elm_jax.model import flops_per_token, param_count
from elm_jax.model.openelm import CHECKPOINT_POLICIES as POLICY_FUNCTIONS
from elm_jax.model.openelm import DecoderLayer, _run_layer
from elm_jax.presets import SIZES

# Published totals with the 32000-token vocabulary (docs/OPENELM.md, HF checkpoints).
PUBLISHED = {"270m": 271_527_168, "450m": 457_179_136, "1_1b": 1_079_891_456, "3b": 3_036_647_424}


def openelm(size, vocab=32000):
    layers, dim, head_dim, *_ = SIZES[size]
    return ModelConfig(vocab_size=vocab, num_layers=layers, model_dim=dim, head_dim=head_dim)


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_totals_match_published_counts_and_the_models_flop_counter(size):
    model = openelm(size)
    costs = model_costs(model, seq_len=2048)
    assert costs.params("total") == PUBLISHED[size]
    assert costs.params("non_embedding") == PUBLISHED[size] - 32000 * model.model_dim
    assert costs.flops_per_token() == flops_per_token(model, 2048)
    assert costs.flops_per_token(training=False) == flops_per_token(model, 2048, training=False)


def test_params_match_the_built_model():
    """The model's own count (every parameter of the abstract model) on a vocab-32128 270M."""
    model = openelm("270m", vocab=32128)
    assert model_costs(model, seq_len=2048).params() == param_count(model) == 271_691_008


def test_one_layer_by_hand():
    """d 64, head_dim 16, 4 query / 2 kv heads, FFN 128, sequence 8, float32."""
    model = ModelConfig(vocab_size=100, num_layers=1, model_dim=64, head_dim=16, num_gqa_groups=2,
                        num_query_heads=(4,), num_kv_heads=(2,), ffn_multipliers=(2.0,),
                        ffn_dim_divisor=32)
    costs = model_costs(model, seq_len=8, tensor_parallel=2)
    layer = costs.layers[0]
    assert (layer.q_heads, layer.kv_heads, layer.ffn_dim) == (4, 2, 128)
    assert layer.attention_params == 64 * 16 * (4 + 2 + 2) + 4 * 16 * 64 + 2 * 16 == 12_320
    assert layer.ffn_params == 3 * 64 * 128 == 24_576
    assert layer.params == 12_320 + 24_576 + 2 * 64
    assert costs.params("total") == layer.params + 100 * 64 + 64
    assert layer.projection_flops == 2 * 64 * 16 * 12 == 24_576
    assert layer.score_flops == 2 * (4 * 16 * 8 / 2) * 2 == 1024  # QK^T and AV, causal half
    assert layer.ffn_flops == 2 * 3 * 64 * 128
    assert costs.flops_per_token() == 3 * (24_576 + 1024 + 49_152 + 2 * 100 * 64)
    assert layer.kv_bytes == 2 * 2 * 16 * 4 == costs.kv_bytes_per_token
    assert model_costs(model, seq_len=8, kv_dtype="bfloat16").kv_bytes_per_token == 128
    assert layer.tp_divides and costs.tp_divides
    assert not model_costs(model, seq_len=8, tensor_parallel=4).tp_divides  # 2 kv heads over 4
    assert layer.activation_bytes == activation_bytes(
        policy="none", model_dim=64, head_dim=16, q_heads=4, kv_heads=2, ffn_dim=128, seq_len=8,
        compute_bytes=4)
    assert model_costs(model, seq_len=8, remat_policy="full").activation_bytes_per_token \
        == 64 * 4 + 4 * 100  # the layer input, then the float32 logits


def _residual_bytes(model, policy, batch, seq):
    layer = DecoderLayer(model, 0, rngs=nnx.Rngs(0))
    graph, state = nnx.split(layer)
    x = jnp.ones((batch, seq, model.model_dim), jnp.dtype(model.dtype))
    positions = jnp.broadcast_to(jnp.arange(seq), (batch, seq))

    def loss(state, x):
        block = nnx.merge(graph, state)
        if policy == "none":
            return block(x, positions).astype(jnp.float32).sum()
        run = nnx.remat(_run_layer, policy=POLICY_FUNCTIONS[policy])
        return run(block, x, positions, None).astype(jnp.float32).sum()

    # Integer residuals are the positions, one array every layer shares (not a per-layer cost).
    return sum(aval.size * aval.dtype.itemsize for aval, _ in saved_residuals(loss, state, x)
               if not jnp.issubdtype(aval.dtype, jnp.integer))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("policy", REMAT_POLICIES)
def test_activation_bytes_are_what_autodiff_saves(policy, dtype):
    """Per token = (residual bytes at batch 2 - at batch 1) / seq: weights and constants cancel."""
    model = ModelConfig(vocab_size=97, num_layers=1, model_dim=64, head_dim=16, num_gqa_groups=2,
                        num_query_heads=(4,), num_kv_heads=(2,), ffn_multipliers=(2.0,),
                        ffn_dim_divisor=32, dtype=dtype, attention_impl="xla")
    seq = 8
    with jax.default_device(jax.devices("cpu")[0]):
        per_token = (_residual_bytes(model, policy, 2, seq) - _residual_bytes(model, policy, 1, seq)) / seq
    assert per_token == model_costs(model, seq_len=seq, remat_policy=policy).layers[0].activation_bytes
