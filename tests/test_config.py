"""Config validation: every impossible value raises one message naming the field."""

import pytest

from elm_jax.config import default_config, from_config_dict
from elm_jax.errors import ConfigError


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
