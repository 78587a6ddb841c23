"""The Flax model against published counts and an independent NumPy forward pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpy_openelm
import pytest
from flax import nnx

from elm_jax.config import ModelConfig
from elm_jax.convert.hf import load_hf
from elm_jax.model import build, flops_per_token, param_count
from elm_jax.presets import SIZES

PUBLISHED = {  # docs/OPENELM.md: total parameters at vocab 32000 and 32128
    "270m": (271_527_168, 271_691_008),
    "450m": (457_179_136, 457_375_744),
    "1_1b": (1_079_891_456, 1_080_153_600),
    "3b": (3_036_647_424, 3_037_040_640),
}


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_parameter_counts_match_published(size):
    layers, dim, head_dim, *_ = SIZES[size]
    for vocab, expected in zip((32000, 32128), PUBLISHED[size]):
        cfg = ModelConfig(vocab_size=vocab, num_layers=layers, model_dim=dim, head_dim=head_dim)
        assert param_count(cfg) == expected


def test_logits_match_numpy_reference(tiny_model_config, random_hf_checkpoint):
    path, hf_cfg, tensors = random_hf_checkpoint(tiny_model_config)
    assert len(set(hf_cfg["num_query_heads"])) > 1  # layers really differ
    _, model = load_hf(path)
    tokens = np.random.default_rng(1).integers(0, tiny_model_config.vocab_size, (2, 12))
    ours = model(jnp.asarray(tokens, jnp.int32))
    assert ours.dtype == jnp.float32
    ref = numpy_openelm.forward(tensors, hf_cfg, tokens)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)


def test_packed_segments_and_positions_match_reference(tiny_model_config, random_hf_checkpoint):
    path, hf_cfg, tensors = random_hf_checkpoint(tiny_model_config)
    _, model = load_hf(path)
    tokens = np.random.default_rng(2).integers(0, tiny_model_config.vocab_size, (1, 10))
    segments = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0]])
    positions = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0]])
    ours = model(jnp.asarray(tokens), positions=jnp.asarray(positions),
                 segment_ids=jnp.asarray(segments))
    ref = numpy_openelm.forward(tensors, hf_cfg, tokens, segments, positions)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)


def test_segments_isolate_documents(tiny_model_config):
    """The second document's logits equal those of the same document run alone."""
    model = build(tiny_model_config, seed=3)
    rng = np.random.default_rng(3)
    doc_a, doc_b = rng.integers(0, 97, 5), rng.integers(0, 97, 7)
    packed = jnp.asarray(np.concatenate([doc_a, doc_b])[None])
    segments = jnp.asarray([[1] * 5 + [2] * 7])
    positions = jnp.asarray([list(range(5)) + list(range(7))])
    together = model(packed, positions=positions, segment_ids=segments)
    alone = model(jnp.asarray(doc_b[None]))
    np.testing.assert_allclose(together[0, 5:], alone[0], rtol=1e-5, atol=1e-5)


def test_causal_mask_later_tokens_never_change_earlier_logits(tiny_model_config):
    model = build(tiny_model_config, seed=4)
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 97, (1, 10)))
    changed = tokens.at[0, 6:].set((tokens[0, 6:] + 1) % 97)
    a, b = model(tokens), model(changed)
    np.testing.assert_array_equal(np.asarray(a[0, :6]), np.asarray(b[0, :6]))
    assert not np.allclose(a[0, 6:], b[0, 6:])


@pytest.mark.parametrize("policy", ["full", "dots", "save_attention_out"])
def test_remat_changes_nothing_but_memory(tiny_model_config, policy):
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 97, (2, 8)))
    loss = lambda m: jnp.mean(m(tokens) ** 2)  # noqa: E731
    plain = build(tiny_model_config, seed=5)
    remat_cfg = dataclasses.replace(tiny_model_config, remat_policy=policy, remat_layers=(0, 2))
    remat = build(remat_cfg, seed=5)
    g_plain = nnx.state(nnx.grad(loss)(plain))
    g_remat = nnx.state(nnx.grad(loss)(remat))
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_keeps_f32_params_and_logits(tiny_model_config):
    cfg = dataclasses.replace(tiny_model_config, dtype="bfloat16")
    model = build(cfg, seed=6)
    ref = build(tiny_model_config, seed=6)
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 97, (2, 8)))
    out = model(tokens)
    assert out.dtype == jnp.float32 and model.embed[...].dtype == jnp.float32
    np.testing.assert_allclose(out, ref(tokens), atol=0.15)


def test_initialisation_follows_corenet(tiny_model_config):
    cfg = dataclasses.replace(tiny_model_config, model_dim=256, vocab_size=4000)
    model = build(cfg, seed=7)
    d, n = cfg.model_dim, cfg.num_layers
    assert np.std(model.embed[...]) == pytest.approx(d ** -0.5, rel=0.05)
    assert np.std(model.layers[0].attn.q_proj[...]) == pytest.approx(d ** -0.5, rel=0.05)
    assert np.std(model.layers[2].ffn.down[...]) == pytest.approx(
        d ** -0.5 * (2 * n) ** -0.5, rel=0.05)
    assert np.all(model.layers[1].attn.q_norm.weight[...] == 1)


def test_flops_per_token_is_six_n_plus_attention():
    cfg = ModelConfig(vocab_size=32000, num_layers=16, model_dim=1280, head_dim=64)
    params = param_count(cfg)
    norms = 1280 * (2 * 16 + 1) + 2 * 64 * 16
    attention = sum(3 * 2 * 2 * s.q_heads * 64 * 1024 for s in cfg.layer_shapes())
    # 6 * (matmul params): the embedding counts once, as the tied output projection
    assert flops_per_token(cfg, 2048) == pytest.approx(6 * (params - norms) + attention)
