"""LoRA / DoRA against NumPy in the papers' notation (W [out, in], B [out, r], A [r, in]), the
adapted model at initialisation, where gradients go, shardings, and bad selections."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec
from train.synthetic import FAST_COMPILE

from elm_jax.config import Config, DataConfig, FinetuneConfig, MeshConfig, TrainConfig
from elm_jax.errors import ConfigError
from elm_jax.finetune import adapters
from elm_jax.finetune.objective import finetune_objective, layout
from elm_jax.finetune.paths import get
from elm_jax.model import abstract_params, build
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.train.step import forward_logits, graphdef


def model_params(cfg, seed=0):
    return nnx.to_pure_dict(nnx.state(build(cfg, seed), nnx.Param))


def random_adapters(spec, seed=1):
    """Non-zero A, B and m, so every term of the merge shows."""
    rng = np.random.default_rng(seed)
    tree = adapters.abstract(spec)
    return jax.tree.map(lambda x: (rng.standard_normal(x.shape) * 0.1 + 0.5).astype(np.float32), tree)


def paper_view(w, in_dims):
    """Our [in..., out...] weight as the papers' [out, in] matrix."""
    fan_in = int(np.prod(w.shape[:in_dims]))
    return np.asarray(w).reshape(fan_in, -1).T


def expected(w, ad, in_dims, scale, dora=False):
    """W + s B A (LoRA), or m (W + s B A) / ||W + s B A|| per output feature (DoRA), in NumPy."""
    w_pt = paper_view(w, in_dims).astype(np.float64)
    r = ad["a"].shape[-1]
    a_pt = np.asarray(ad["a"]).reshape(-1, r).T.astype(np.float64)  # [r, in]
    b_pt = np.asarray(ad["b"]).reshape(r, -1).T.astype(np.float64)  # [out, r]
    v = w_pt + scale * b_pt @ a_pt
    if dora:
        m = np.asarray(ad["m"]).reshape(-1).astype(np.float64)
        v = m[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)
    return v.T.reshape(np.shape(w))


@pytest.mark.parametrize("adapter,rslora", [("lora", False), ("lora", True), ("dora", False)])
def test_merged_weights_match_numpy(tiny_model_config, adapter, rslora):
    cfg = FinetuneConfig(adapter=adapter, targets=("token_embeddings", "q_proj", "out_proj", "down"),
                         rank=4, alpha=8.0, rslora=rslora)
    spec = adapters.adapter_spec(tiny_model_config, cfg)
    scale = 8.0 / (np.sqrt(4) if rslora else 4)
    assert spec.scale == pytest.approx(scale)
    base, ad = model_params(tiny_model_config), random_adapters(spec)
    merged = jax.jit(lambda b, a: adapters.apply(spec, b, a), compiler_options=FAST_COMPILE)(base, ad)
    checked = {("embed",): 1, ("layers", 1, "attn", "q_proj"): 1, ("layers", 2, "attn", "out_proj"): 2,
               ("layers", 0, "ffn", "down"): 1}
    for path, in_dims in checked.items():
        want = expected(get(base, path), get(ad, path), in_dims, scale, dora=adapter == "dora")
        np.testing.assert_allclose(np.asarray(get(merged, path)), want, rtol=2e-5, atol=2e-6)
    # untargeted weights are untouched
    np.testing.assert_array_equal(merged["layers"][0]["attn"]["k_proj"], base["layers"][0]["attn"]["k_proj"])


def test_dora_magnitude_starts_at_the_weight_norm(tiny_model_config):
    spec = adapters.adapter_spec(tiny_model_config, FinetuneConfig(adapter="dora", targets=("v_proj",),
                                                                   rank=2))
    base = model_params(tiny_model_config)
    fresh = adapters.init(spec, base, jax.random.key(0))
    w = base["layers"][0]["attn"]["v_proj"]
    m = fresh["layers"][0]["attn"]["v_proj"]["m"]
    np.testing.assert_allclose(np.asarray(m).reshape(-1), np.linalg.norm(paper_view(w, 1), axis=1),
                               rtol=1e-6)


def setup(tiny_model_config, tmp_path, **finetune):
    config = Config(model=tiny_model_config, data=DataConfig(seq_len=8, pad_id=0),
                    train=TrainConfig(batch_size=2, run_dir=str(tmp_path)), mesh=MeshConfig(1, 1, 1),
                    finetune=FinetuneConfig(**{"rank": 4, "alpha": 8.0} | finetune))
    config.validate()
    mesh = mesh_lib.single_device_mesh()
    base = model_params(tiny_model_config)
    objective = finetune_objective(lambda mesh, shardings: base)(config, mesh, {})
    return config, objective, base


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_the_adapted_model_starts_equal_to_the_base(tiny_model_config, tmp_path, adapter):
    config, objective, base = setup(tiny_model_config, tmp_path, adapter=adapter)
    params, frozen = objective.start(base)
    adapted = jax.jit(objective.model_params, compiler_options=FAST_COMPILE)(params, frozen)
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8) % tiny_model_config.vocab_size
    batch = {"inputs": tokens, "positions": np.tile(np.arange(8), (2, 1)), "segment_ids": None}
    forward = jax.jit(lambda p: forward_logits(graphdef(config), p, batch), compiler_options=FAST_COMPILE)
    if adapter == "lora":  # W + s A 0 is W, bit for bit
        for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(base)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(forward(adapted), forward(base), rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_what_trains(tiny_model_config, tmp_path):
    """The trainable tree holds the adapters (and unfrozen norms), the base is frozen; the
    gradient of the loss covers the trainable tree, and is non-zero on B and the norms."""
    config, objective, base = setup(tiny_model_config, tmp_path, targets=("qkv_proj",),
                                    trainable=(r"norm/weight$",))
    params, frozen = objective.start(base)
    assert set(params) == {"adapters", "model"}
    assert all(path[-2].endswith("norm") for path, _ in nnx.to_flat_state(nnx.State(params["model"])))
    assert "q_proj" not in str(jax.tree_util.tree_structure(params["model"]))
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8) % tiny_model_config.vocab_size
    batch = {"inputs": tokens, "targets": np.roll(tokens, -1, 1), "loss_mask": np.ones((2, 8), np.float32),
             "positions": np.tile(np.arange(8), (2, 1)), "segment_ids": np.ones((2, 8), np.int32)}
    grads = jax.jit(jax.grad(lambda p: objective.sums(p, frozen, batch, None)[0].cross_entropy),
                    compiler_options=FAST_COMPILE)(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    q = grads["adapters"]["layers"][0]["attn"]["q_proj"]
    assert np.abs(np.asarray(q["b"])).max() > 0 and np.abs(np.asarray(q["a"])).max() == 0  # B = 0
    assert np.abs(np.asarray(grads["model"]["norm"]["weight"])).max() > 0
    assert "q_proj" in str(jax.tree_util.tree_structure(frozen["model"]))


def test_adapters_shard_like_their_weights(tiny_model_config):
    """On a 4 x 2 fsdp x tensor mesh: A splits like its weight's input dimensions, B and m like its
    output ones; a layer whose heads the tensor axis does not divide keeps them whole, B too."""
    spec = adapters.adapter_spec(tiny_model_config, FinetuneConfig(
        adapter="dora", targets=("q_proj", "out_proj", "gate", "down"), rank=2))
    mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    model_sh = mesh_lib.param_shardings(abstract_params(tiny_model_config), mesh)
    sh = adapters.shardings(spec, model_sh)
    axes = adapters.logical_axes(spec)
    for t in spec.targets:
        base = tuple(get(model_sh, t.path).spec)
        base = base + (None,) * (len(t.shape) - len(base))
        got = get(sh, t.path)
        k = t.in_dims
        assert tuple(got["a"].spec) == (*base[:k], None)
        assert tuple(got["b"].spec) == (None, *base[k:])
        assert tuple(got["m"].spec) == base[k:]
        names = get(axes, t.path)
        assert names["a"] == (*t.axes[:k], None) and names["b"] == (None, *t.axes[k:])
    q = get(sh, ("layers", 1, "attn", "q_proj"))["b"].spec
    assert q == PartitionSpec(None, "tensor", None)  # 4 query / 2 kv heads over 2 devices
    q = get(sh, ("layers", 0, "attn", "q_proj"))["b"].spec
    assert q == PartitionSpec(None, None, None)  # 1 kv head: the block's heads stay whole
    gate = get(sh, ("layers", 0, "ffn", "gate"))
    assert gate["a"].spec == PartitionSpec("fsdp", None)


def test_corenet_names_select_our_weights(tiny_model_config):
    spec = adapters.adapter_spec(tiny_model_config, FinetuneConfig(
        targets=("token_embeddings", "qkv_proj", "proj_1"), rank=2))
    names = {"/".join(map(str, t.path)) for t in spec.targets}
    layers = range(tiny_model_config.num_layers)
    attention = {f"layers/{i}/attn/{p}" for i in layers for p in ("q_proj", "k_proj", "v_proj")}
    assert names == {"embed"} | attention | {f"layers/{i}/ffn/{p}" for i in layers for p in ("gate", "up")}


def test_bad_selections_are_one_line_errors(tiny_model_config, tmp_path):
    with pytest.raises(ConfigError, match=r"finetune.targets regex 'qkv_prj' matches no parameter") as err:
        adapters.adapter_spec(tiny_model_config, FinetuneConfig(targets=("qkv_prj",)))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"finetune.rank=40 exceeds the smaller side of "
                                          r"layers/0/attn/k_proj \(64 x 16 as a matrix\); use "
                                          r"finetune.rank <= 16") as err:
        adapters.adapter_spec(tiny_model_config, FinetuneConfig(targets=("k_proj",), rank=40))
    assert "\n" not in str(err.value)
    config, _, _ = setup(tiny_model_config, tmp_path)
    both = dataclasses.replace(config, finetune=dataclasses.replace(
        config.finetune, targets=("down",), trainable=("ffn/down",)))
    with pytest.raises(ConfigError, match="both get an adapter and train in full"):
        layout(both)
