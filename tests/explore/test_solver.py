"""The matched-cost solver: matches within tolerance, leaves a matching family alone, reports the
other costs, and says when no knob value can match."""

import dataclasses

import pytest

from elm_jax.config import ModelConfig
from elm_jax.errors import ConfigError
from elm_jax.explore.costs import model_costs
from elm_jax.explore.schedules import Schedule
from elm_jax.explore.solver import match_cost

REFERENCE = ModelConfig(vocab_size=4224, num_layers=8, model_dim=128, head_dim=16, num_gqa_groups=2,
                        qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 4.0), ffn_dim_divisor=8)


def params(model, convention="total"):
    return model_costs(model, seq_len=128).params(convention)


def test_uniform_matches_openelm_non_embedding_params_exactly_here():
    """Eight uniform layers of 6 query heads (the linear ranges' midpoint 0.75 d) and one FFN width:
    the solver finds the width; both sides counted independently layer by layer."""
    match = match_cost(REFERENCE, Schedule("uniform", (0.75,), (2.25,)), seq_len=128,
                       convention="non_embedding", knob="ffn_scale", tolerance=0.01)
    shapes = match.model.layer_shapes()
    assert len(set(shapes)) == 1 and shapes[0].q_heads == 6
    by_hand = sum(128 * 16 * (2 * s.q_heads + 2 * s.kv_heads) + 2 * 16 + 3 * 128 * s.ffn_dim + 2 * 128
                  for s in shapes) + 128
    reference = sum(128 * 16 * (2 * s.q_heads + 2 * s.kv_heads) + 2 * 16 + 3 * 128 * s.ffn_dim + 2 * 128
                    for s in REFERENCE.layer_shapes()) + 128
    assert match.achieved == by_hand == match.target == reference  # this one lands exactly
    assert match.mismatch == 0 and match.others["non_embedding_params"] == 0
    # 6 kv heads x 8 layers against OpenELM's (2 + 3 x 4 + 4 x 3) x 2: the KV cache shrinks 1/13
    assert match.others["kv_bytes"] == pytest.approx(48 / 52 - 1)


def test_a_family_that_already_matches_is_left_alone():
    match = match_cost(REFERENCE, Schedule("reverse", (0.5, 1.0), (0.5, 4.0)), seq_len=128,
                       knob="ffn_scale")
    assert match.knob_value == 1.0 and match.model.ffn_multipliers == (4.0, 0.5)
    assert all(value == 0 for value in match.others.values())


@pytest.mark.parametrize("cost", ["params", "flops"])
def test_width_knob_matches_each_cost_within_tolerance(cost):
    """Six layers at 0.75 / 2.25 d, widened until they cost what the 8-layer model costs."""
    base = dataclasses.replace(REFERENCE, num_layers=6)
    match = match_cost(REFERENCE, Schedule("uniform", (0.75,), (2.25,)), seq_len=128, cost=cost,
                       knob="model_dim", tolerance=0.02, base=base)
    assert abs(match.mismatch) <= 0.02
    assert match.model.model_dim > 128 and match.model.num_layers == 6
    value = model_costs(match.model, seq_len=128).value(cost)
    assert value == match.achieved
    # no neighbouring width is closer (the solver keeps the best side of the step)
    for width in (match.model.model_dim - 1, match.model.model_dim + 1):
        other = model_costs(dataclasses.replace(match.model, model_dim=width), seq_len=128).value(cost)
        assert abs(other - match.target) >= abs(value - match.target)


def test_kv_cache_match_takes_the_closer_side_of_the_step():
    """OpenELM's 26 kv heads (2+3+3+3+3+4+4+4); 8 uniform layers have 24 or 32: 24 is closer."""
    match = match_cost(REFERENCE, Schedule("uniform", (0.75,), (2.25,)), seq_len=128, cost="kv_bytes",
                       knob="qkv_scale", tolerance=0.08)
    assert sum(s.kv_heads for s in match.model.layer_shapes()) == 24
    assert match.mismatch == pytest.approx(24 / 26 - 1)


def test_unreachable_tolerance_names_the_closest_match():
    coarse = dataclasses.replace(REFERENCE, ffn_dim_divisor=256)
    with pytest.raises(ConfigError, match=r"cannot match uniform's params .* the closest is .*\(\+|\(-"):
        match_cost(coarse, Schedule("uniform", (0.75,), (2.25,)), seq_len=128, tolerance=0.001,
                   knob="ffn_scale")


def test_bad_knob_and_cost_are_named():
    with pytest.raises(ConfigError, match="match knob 'depth' is unknown"):
        match_cost(REFERENCE, Schedule("uniform", (1.0,), (1.0,)), seq_len=128, knob="depth")
    with pytest.raises(ConfigError, match="match cost 'memory' is unknown"):
        match_cost(REFERENCE, Schedule("uniform", (1.0,), (1.0,)), seq_len=128, cost="memory")
