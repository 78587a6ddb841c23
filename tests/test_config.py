"""Config validation: every impossible value raises one message naming the field."""

import pytest

from elm_jax.config import default_config, from_config_dict
from elm_jax.errors import ConfigError
from elm_jax.presets import openelm_config


def _with(section, field, value):
    cd = default_config()
    cd[section][field] = value
    return cd


@pytest.mark.parametrize("section,field,value,message", [
    ("model", "head_dim", 63, "model.head_dim.*even"),
    ("model", "model_dim", -5, "model.model_dim.*positive"),
    ("model", "attention_impl", "flash", "model.attention_impl.*xla"),
    ("model", "dtype", "float8", "model.dtype.*bfloat16"),
    ("model", "remat_policy", "some", "model.remat_policy.*dots"),
    ("model", "tie_embeddings", False, "tie_embeddings"),
    ("data", "mode", "stream", "data.mode.*pack"),
    ("train", "microbatches", 3, "train.microbatches.*divisor"),
    ("train", "b2", 1.5, r"train.b2.*\[0, 1\)"),
    ("mesh", "fsdp", -1, "at most one -1"),
])
def test_invalid_values_name_field_and_allowed_values(section, field, value, message):
    cd = _with(section, field, value)
    if section == "mesh":
        cd.mesh.data = -1
    with pytest.raises(ConfigError, match=message):
        from_config_dict(cd)


def test_indivisible_head_counts_name_the_layer():
    cd = default_config()
    cd.model.num_query_heads = (12,) * 16
    cd.model.num_kv_heads = (5,) * 16
    with pytest.raises(ConfigError, match="layer 0: 12 query heads.*5 kv heads"):
        from_config_dict(cd)


def test_wrong_types_are_named():
    cd = default_config().to_dict()
    cd["train"]["steps"] = "ten"
    with pytest.raises(ConfigError, match="train.steps.*integer"):
        from_config_dict(cd)


def test_unknown_field_is_named():
    cd = default_config().to_dict()
    cd["model"]["hidden_size"] = 3
    with pytest.raises(ConfigError, match="model.hidden_size"):
        from_config_dict(cd)


def test_pad_id_must_have_an_embedding_row():
    cd = _with("model", "vocab_size", 32000)
    with pytest.raises(ConfigError, match="data.pad_id"):
        from_config_dict(cd)


def test_experiment_files_load_and_validate():
    from pathlib import Path

    from ml_collections import config_flags

    root = Path(__file__).resolve().parents[1] / "experiments"
    # Files whose get_config needs an argument get a real one (what their docstring shows).
    arguments = {"sweep_cell": f"{root}/ablations/layerwise_vs_uniform.py@uniform-seed1"}
    for path in sorted(root.glob("*.py")):
        module = config_flags.config_flags._LoadConfigModule(path.stem, str(path))
        argument = arguments.get(path.stem)
        config = from_config_dict(module.get_config(argument) if argument else module.get_config())
        assert config.model.num_layers > 0


def test_attention_interpret_must_be_a_bool():
    raw = default_config().to_dict()
    raw["model"]["attention_interpret"] = "yes"
    with pytest.raises(ConfigError, match="model.attention_interpret.*True or False"):
        from_config_dict(raw)


@pytest.mark.parametrize("batch,shards,most,expected", [
    (2048, 16, 16, 8),     # the 3B recipe on a v5p-32 slice: 128 per chip -> 8 x 16
    (2048, 32, 16, 4),
    (2048, 128, 16, 1),    # 16 per device already: one microbatch
    (2048, 256, 16, 1),
    (96, 4, 10, 3),        # 24 per device: 3 x 8 (2 x 12 is over the limit)
    (112, 4, 10, 4),       # 28 per device: 4 x 7; 3 does not divide 28
    (52, 4, 4, 13),        # 13 per device: only 13 x 1 stays under 4
])
def test_auto_microbatches_are_the_fewest_that_fit_the_per_device_limit(batch, shards, most,
                                                                        expected):
    cd = default_config()
    cd.train.batch_size = batch
    cd.train.microbatches = "auto"
    cd.train.max_sequences_per_device = most
    assert from_config_dict(cd).train.microbatch_count(shards) == expected


@pytest.mark.parametrize("size,chips,expected", [
    ("270m", 8, 64),   # v5e-8: 256 per chip, at most 4 (the 270M keeps every activation) -> 64 x 4
    ("3b", 16, 8),     # v5p-32: 128 per chip -> 8 x 16, the paper's 16 per device
])
def test_presets_resolve_auto_microbatches_from_their_per_device_limit(size, chips, expected):
    assert from_config_dict(openelm_config(size)).train.microbatch_count(chips) == expected


def test_microbatches_take_a_count_or_auto_and_nothing_else():
    cd = default_config()
    cd.train.microbatches = 4  # experiment files may set either kind on the same field
    assert from_config_dict(cd).train.microbatch_count(8) == 4
    cd.train.microbatches = "auto"
    assert from_config_dict(cd).train.microbatches == "auto"
    cd.train.microbatches = "many"
    with pytest.raises(ConfigError, match='train.microbatches.*"auto"'):
        from_config_dict(cd)
    cd.train.microbatches = "auto"
    cd.train.batch_size = 100
    with pytest.raises(ConfigError, match="train.batch_size=100.*8 devices"):
        from_config_dict(cd).train.microbatch_count(8)
