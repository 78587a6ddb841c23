"""HuggingFace import/export: bit-exact round trips and clear errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from elm_jax.convert.hf import load_hf, save_hf
from elm_jax.errors import CheckpointError, UsageError


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shard_bytes", [None, 20_000])
def test_round_trip_is_bit_exact(tiny_model_config, random_hf_checkpoint, tmp_path, dtype,
                                 shard_bytes):
    import ml_dtypes

    np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    src, hf_cfg, tensors = random_hf_checkpoint(tiny_model_config, dtype=np_dtype)
    cfg, model = load_hf(src)
    assert cfg.param_dtype == dtype
    out = tmp_path / "out"
    save_hf(cfg, model, out, **({} if shard_bytes is None else {"max_shard_bytes": shard_bytes}))
    if shard_bytes:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        files = set(index["weight_map"].values())
        assert len(files) > 1
        written = {}
        for f in files:
            written |= load_file(str(out / f))
    else:
        written = load_file(str(out / "model.safetensors"))
    assert written.keys() == tensors.keys()
    for name, value in tensors.items():
        assert written[name].dtype == value.dtype
        assert written[name].tobytes() == value.tobytes(), name
    assert json.loads((out / "config.json").read_text()) == hf_cfg
    _, again = load_hf(out)
    tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
    np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(again(tokens)))


def test_shape_mismatch_names_the_tensor(tiny_model_config, random_hf_checkpoint):
    src, _, tensors = random_hf_checkpoint(tiny_model_config)
    name = "transformer.layers.1.attn.qkv_proj.weight"
    expected = tensors[name].shape
    tensors[name] = tensors[name][:-16]
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"{name}.*{expected[0]}.*{expected[0] - 16}"):
        load_hf(src)


def test_missing_tensor_is_named(tiny_model_config, random_hf_checkpoint):
    src, _, tensors = random_hf_checkpoint(tiny_model_config)
    del tensors["transformer.layers.2.ffn.proj_2.weight"]
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match="layers.2.ffn.proj_2.weight"):
        load_hf(src)


def test_integer_tensors_are_refused_by_name(tiny_model_config, random_hf_checkpoint):
    src, _, tensors = random_hf_checkpoint(tiny_model_config)
    name = "transformer.layers.0.ffn.proj_1.weight"
    tensors[name] = (tensors[name] * 100).astype(np.int8)  # as a quantized export would hold it
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"tensor {name} holds int8 values"):
        load_hf(src)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_tensors_are_refused_by_name(tiny_model_config, random_hf_checkpoint, bad):
    src, _, tensors = random_hf_checkpoint(tiny_model_config)
    name = "transformer.layers.1.attn.out_proj.weight"
    tensors[name][3, 5] = bad
    tensors[name][0, 1] = -bad
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"tensor {name} holds 2 NaN/Inf value\(s\)"):
        load_hf(src)


def test_missing_and_corrupt_files_are_clear(tiny_model_config, random_hf_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_hf(tmp_path)
    src, _, _ = random_hf_checkpoint(tiny_model_config)
    (src / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_hf(src)


def test_export_never_overwrites(tiny_model_config, random_hf_checkpoint):
    src, _, tensors = random_hf_checkpoint(tiny_model_config)
    cfg, model = load_hf(src)
    with pytest.raises(UsageError, match="is not empty; choose a new output directory") as err:
        save_hf(cfg, model, src)
    advice = str(err.value).split(" is not empty; ")[1]
    assert "overwrite" not in advice  # no such flag: the message names no way around it
    assert load_file(str(src / "model.safetensors")).keys() == tensors.keys()
