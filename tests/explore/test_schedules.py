"""Schedule families against per-layer tables worked out by hand (5 layers, d 256, head_dim 32,
2 query heads per kv head, so query widths round to multiples of 64; FFN divisor 64)."""

import pytest

from elm_jax.config import ModelConfig, default_config, from_config_dict
from elm_jax.errors import ConfigError
from elm_jax.explore.schedules import (
    Schedule,
    _shape_warnings,
    apply,
    as_built,
    model_section,
    schedule_from_spec,
)

BASE = ModelConfig(vocab_size=512, num_layers=5, model_dim=256, head_dim=32, num_gqa_groups=2,
                   ffn_dim_divisor=64)

# family -> (spec, query heads per layer, FFN width per layer). Worked by hand from CoreNet's rule:
# multipliers round to 2 decimals (Python's half-even on exact binary values: 0.625 -> 0.62,
# 0.875 -> 0.88, 1.375 -> 1.38, 3.125 -> 3.12), then make_divisible, which bumps 0.62 d = 158.72
# from 128 (19 % below) up to 192.
TABLES = {
    "openelm_linear": ({"qkv": (0.5, 1.0), "ffn": (0.5, 4.0)},
                       [4, 6, 6, 8, 8], [128, 384, 576, 768, 1024]),
    "reverse": ({"qkv": (0.5, 1.0), "ffn": (0.5, 4.0)}, [8, 8, 6, 6, 4], [1024, 768, 576, 384, 128]),
    "uniform": ({"qkv": 0.75, "ffn": 2.25}, [6] * 5, [576] * 5),
    # (1 + cos(pi t)) / 2 at t = 0, 1/4, 1/2, 3/4, 1: 1, .854, .5, .146, 0 -> qkv 1, .93, .75, .57, .5
    # and ffn 4, 3.49, 2.25, 1.01, .5
    "tapered": ({"qkv": (1.0, 0.5), "ffn": (4.0, 0.5)}, [8, 8, 6, 6, 4], [1024, 896, 576, 256, 128]),
    # (1 + cos(2 pi t)) / 2: 1, .5, 0, .5, 1
    "crown": ({"qkv": (1.0, 0.5), "ffn": (4.0, 0.5)}, [8, 6, 4, 6, 8], [1024, 576, 128, 576, 1024]),
    "explicit": ({"q_heads": (2, 4, 6, 8, 10), "kv_heads": (1, 2, 3, 4, 5), "ffn": (1, 2, 3, 4, 5)},
                 [2, 4, 6, 8, 10], [256, 512, 768, 1024, 1280]),
}


@pytest.mark.parametrize("family", sorted(TABLES))
def test_families_build_the_hand_computed_layers(family):
    spec, q_heads, ffn = TABLES[family]
    model = apply(BASE, schedule_from_spec({"family": family, **spec}))
    shapes = model.layer_shapes()
    assert [s.q_heads for s in shapes] == q_heads
    assert [s.kv_heads for s in shapes] == [q // 2 for q in q_heads]
    assert [s.ffn_dim for s in shapes] == ffn


def test_model_section_is_a_valid_config_section():
    section = model_section(schedule_from_spec({"family": "tapered", "qkv": (1.0, 0.5),
                                                "ffn": (4.0, 0.5)}), 5)
    cd = default_config()
    cd.model.update(num_layers=5, model_dim=256, head_dim=32, num_gqa_groups=2, ffn_dim_divisor=64,
                    **section)
    model = from_config_dict(cd).model
    assert model.ffn_multipliers == (4.0, 3.49, 2.25, 1.01, 0.5)
    assert [s.ffn_dim for s in model.layer_shapes()] == TABLES["tapered"][2]


def test_pair_families_keep_the_models_own_rounding():
    linear = model_section(Schedule("openelm_linear", (0.5, 1.0), (0.5, 4.0)), 16)
    assert linear["qkv_multipliers"] == (0.5, 1.0) and linear["ffn_multipliers"] == (0.5, 4.0)
    stretched = model_section(Schedule("uniform", (0.75,), (2.25,), ffn_scale=1.0155), 16)
    assert stretched["ffn_multipliers"] == (2.2849, 2.2849)  # 4 decimals


@pytest.mark.parametrize("spec, message", [
    ({"family": "zigzag"}, "family 'zigzag' is unknown"),
    ({"family": "uniform", "qkv": (0.5, 1.0), "ffn": 2.0}, "uniform qkv takes one multiplier"),
    ({"family": "tapered", "qkv": (1.0,), "ffn": (4.0, 0.5)}, "tapered qkv"),
    ({"family": "explicit", "qkv": (1.0, 1.0), "ffn": (1.0,) * 5}, "explicit qkv needs 5"),
    ({"family": "uniform", "qkv": 1.0, "ffn": 2.0, "width": 3}, "unknown schedule key"),
])
def test_bad_schedules_are_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        apply(BASE, schedule_from_spec(spec))


def test_as_built_270m_shows_the_staircase_and_the_wide_first_ffn():
    """OpenELM-270M: 16 layers but only {12, 16, 20} query heads; its first FFN is 0.6 d, not 0.5 d
    (768 = make_divisible(640, 256)), see docs/OPENELM.md."""
    built = as_built(ModelConfig(num_layers=16, model_dim=1280, head_dim=64))
    assert built.layers[0].ffn_dim == 768
    assert built.layers[0].ffn_rounding == pytest.approx(768 / 640 - 1)
    assert built.layers[-1].q_rounding == 0 and built.layers[-1].q_heads == 20
    assert "staircase: query heads take only 3 values {12, 16, 20} over 16 layers" in built.warnings[0]
    assert any(w.startswith("layer 0: FFN width 768 is 0.6 d, not the nominal 0.5 d (+20%)")
               for w in built.warnings)
    assert not any("non-monotonic" in w for w in built.warnings)


def test_uniform_model_has_no_warnings():
    assert as_built(apply(BASE, Schedule("uniform", (1.0,), (2.0,)))).warnings == ()


def test_non_monotonic_results_are_flagged():
    warnings = _shape_warnings("FFN width", [1.0, 2.0, 3.0], [256, 512, 384])
    assert warnings == ["non-monotonic: FFN width [256, 512, 384] do not follow the increasing "
                        "nominal schedule"]
    assert _shape_warnings("FFN width", [3.0, 2.0, 1.0], [768, 512, 256]) == []
