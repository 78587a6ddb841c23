"""Cached decoding against full recomputation, stopping, sampling, buckets, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from elm_jax.config import MeshConfig, ModelConfig
from elm_jax.infer import decode, generate, stream
from elm_jax.infer.cache import forward_cached, init_cache
from elm_jax.infer.loading import place
from elm_jax.model import build
from elm_jax.parallel.mesh import make_mesh

NEW = 7


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=97, num_layers=3, model_dim=64, head_dim=16, num_gqa_groups=2,
                      qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0), ffn_dim_divisor=32)
    assert len({s.kv_heads for s in cfg.layer_shapes()}) > 1  # layers differ in kv heads
    model = build(cfg, seed=0)
    # Larger weights than the CoreNet init, so greedy continuations do not just repeat a token.
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if var[...].ndim > 1:
            var.set_value(var[...] * 4)
    return model


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 97, n).tolist() for n in (5, 11, 3)]


@nnx.jit
def full_forward(model, tokens):
    return model(tokens)


def greedy_without_cache(model, prompts, steps, width=32):
    """The reference: recompute every whole sequence for every new token (no cache).

    Rows are right-padded to one width so the forward compiles once; causal attention makes the
    logits at a row's last real token independent of the padding after it.
    """
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        buf = np.zeros((len(seqs), width), np.int32)
        for i, seq in enumerate(seqs):
            buf[i, :len(seq)] = seq
        logits = np.asarray(full_forward(model, jnp.asarray(buf)))
        for i, seq in enumerate(seqs):
            seq.append(int(np.argmax(logits[i, len(seq) - 1])))
    return seqs


@pytest.fixture(scope="module")
def reference(model, prompts):
    return greedy_without_cache(model, prompts, NEW)


def test_cached_greedy_equals_recomputation_for_ragged_batch(model, prompts, reference):
    out = np.asarray(generate(model, prompts, NEW))
    assert out.dtype == np.int32 and out.shape == (3, 11 + NEW)
    for row, ref in zip(out, reference):
        np.testing.assert_array_equal(row[:len(ref)], ref)
        assert (row[len(ref):] == 0).all()  # pad id 0 without an EOS id
    assert len({tuple(r[-NEW:]) for r in reference}) == 3 and len(set(reference[1])) > 6


def test_rectangular_and_right_padded_inputs(model, prompts, reference):
    square = np.asarray(generate(model, np.asarray([prompts[0], prompts[0]]), NEW))
    np.testing.assert_array_equal(square, [reference[0]] * 2)
    padded = np.zeros((2, 11), np.int32)
    padded[0, :5], padded[1] = prompts[0], prompts[1]
    out = np.asarray(generate(model, padded, NEW, prompt_lengths=[5, 11]))
    np.testing.assert_array_equal(out[0, :5 + NEW], reference[0])
    np.testing.assert_array_equal(out[1], reference[1])


@nnx.jit
def cached(model, tokens, cache, index):
    return forward_cached(model, tokens, cache, index)


def test_cache_logits_match_full_forward(model, prompts):
    """Prefill then single-token steps give the logits of the uncached forward at each slot."""
    seq = jnp.asarray([prompts[1]])
    full = full_forward(model, seq)
    cache = init_cache(model, 1, 16, jnp.zeros(1, jnp.int32), jnp.float32)
    logits, cache = cached(model, seq[:, :6], cache, 0)
    np.testing.assert_allclose(logits, full[:, 5], rtol=1e-4, atol=1e-4)
    for i in range(6, seq.shape[1]):
        logits, cache = cached(model, seq[:, i:i + 1], cache, jnp.int32(i))
        np.testing.assert_allclose(logits, full[:, i], rtol=1e-4, atol=1e-4)


def test_bfloat16_cache_stays_close(model, prompts):
    seq = jnp.asarray([prompts[1]])
    cache = init_cache(model, 1, 16, jnp.zeros(1, jnp.int32), jnp.bfloat16)
    assert cache.layers[0][0].dtype == jnp.bfloat16
    _, cache = cached(model, seq[:, :-1], cache, 0)
    logits, _ = cached(model, seq[:, -1:], cache, jnp.int32(seq.shape[1] - 1))
    full = full_forward(model, seq)[:, -1]
    assert not np.array_equal(logits, full)  # really rounded
    np.testing.assert_allclose(logits, full, atol=0.05 * float(jnp.abs(full).max()))


def test_stream_yields_the_generated_tokens(model, prompts, reference):
    steps = list(stream(model, prompts, NEW))
    assert len(steps) == NEW
    tokens = np.stack([s.tokens for s in steps], axis=1)
    for row, ref in zip(tokens, reference):
        np.testing.assert_array_equal(row, ref[-NEW:])


def test_eos_stops_a_row_and_pads_after_it(model, prompts, reference):
    eos = reference[0][5 + 2]  # row 0's third new token
    first = reference[0].index(eos, 5)
    out = np.asarray(generate(model, prompts, NEW, eos_id=eos, pad_id=96))
    np.testing.assert_array_equal(out[0, :first + 1], reference[0][:first + 1])
    assert (out[0, first + 1:] == 96).all()
    for i in (1, 2):
        ref = reference[i]
        stop = next((j for j in range(len(prompts[i]), len(ref)) if ref[j] == eos), len(ref) - 1)
        np.testing.assert_array_equal(out[i, :stop + 1], ref[:stop + 1])
    steps = list(stream(model, prompts[:1], NEW, eos_id=eos))
    assert len(steps) == first - 5 + 1 and steps[-1].done.all()  # stops early


def test_sampling_is_reproducible_and_top_k_1_is_greedy(model, prompts, reference):
    def run(seed, **kw):
        return np.asarray(generate(model, prompts, NEW, temperature=1.0, key=jax.random.key(seed),
                                   **kw))

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    top1 = run(2, top_k=1)
    for row, ref in zip(top1, reference):
        np.testing.assert_array_equal(row[:len(ref)], ref)
    with pytest.raises(ValueError, match="PRNG key"):
        generate(model, prompts, NEW, temperature=0.7)


def test_compiles_once_per_bucket(model, prompts):
    generate(model, [prompts[0]], NEW)
    sizes = (decode._prefill._cache_size(), decode._decode_loop._cache_size())
    generate(model, [prompts[1]], NEW + 3)  # same (batch, prompt, total) buckets
    assert (decode._prefill._cache_size(),
            decode._decode_loop._cache_size()) == sizes
    generate(model, [list(range(20))], NEW)  # a longer prompt: a new bucket
    assert decode._prefill._cache_size() == sizes[0] + 1


def test_tensor_parallel_decode_matches_single_device(model, prompts, reference):
    """Training's sharding rules (heads over "tensor", batch over "data"): same tokens."""
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=2), jax.devices()[:4])
    sharded = place(model, mesh)
    assert sharded.layers[1].attn.k_proj[...].sharding.spec[1] == "tensor"
    with jax.set_mesh(mesh):
        out = np.asarray(generate(sharded, prompts, NEW))
        _, state = decode._request(
            sharded, prompts, NEW, temperature=0.0, top_k=0, top_p=1.0, key=None, eos_id=None,
            pad_id=None, prompt_lengths=None, cache_dtype=None)
    for row, ref in zip(out, reference):
        np.testing.assert_array_equal(row[:len(ref)], ref)
    assert [k.shape[2] for k, _ in state.cache.layers] == [1, 2, 2]
    for (k, _), heads in zip(state.cache.layers, (None, "tensor", "tensor")):
        # batch over data; layer 0's single kv head cannot split over tensor=2: replicated
        want = NamedSharding(mesh, PartitionSpec("data", None, heads, None))
        assert k.sharding.is_equivalent_to(want, 4), (k.sharding, want)


@pytest.mark.parametrize("prompt_ids, new, match", [
    ([[1, 2], []], 3, "non-empty"), ([], 3, "no prompts"), ([[1, 2]], 0, "max_new_tokens"),
    ([[1, 97]], 3, "outside")])
def test_bad_requests_are_refused(model, prompt_ids, new, match):
    with pytest.raises(ValueError, match=match):
        generate(model, prompt_ids, new)
