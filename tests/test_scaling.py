"""Layer-wise scaling against the per-layer tables in docs/OPENELM.md."""

import pytest

from elm_jax.scaling import layer_shapes, make_divisible, per_layer_multipliers


def _expand(spec):
    out = []
    for count, times in spec:
        out += [count] * times
    return out


PUBLISHED = {  # size: (layers, dim, head_dim, q_heads, ffn_dims) from docs/OPENELM.md section 1
    "270m": (16, 1280, 64, _expand([(12, 5), (16, 7), (20, 4)]),
             [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608,
              4864, 5120]),
    "450m": (20, 1536, 64, _expand([(12, 3), (16, 7), (20, 6), (24, 4)]),
             [768, 1024, 1280, 1536, 1792, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 4352,
              4608, 5120, 5376, 5632, 5888, 6144]),
    "1_1b": (28, 2048, 64, _expand([(16, 3), (20, 7), (24, 8), (28, 6), (32, 4)]),
             [1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 4608,
              4608, 5120, 5376, 5632, 5888, 6144, 6400, 6656, 6912, 7168, 7424, 7680, 7936, 8192]),
    "3b": (36, 3072, 128, _expand([(12, 4), (16, 14), (20, 12), (24, 6)]),
           [1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 4096, 4352, 4608, 4864, 5120, 5632,
            5888, 6144, 6400, 6656, 7168, 7424, 7680, 7936, 8192, 8704, 8960, 9216, 9472, 9728,
            10240, 10496, 10752, 11008, 11264, 11776, 12032, 12288]),
}


@pytest.mark.parametrize("size", sorted(PUBLISHED))
def test_per_layer_tables_match_reference(size):
    layers, dim, head_dim, q_heads, ffn = PUBLISHED[size]
    shapes = layer_shapes(num_layers=layers, model_dim=dim, head_dim=head_dim, num_gqa_groups=4,
                          qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 4.0))
    assert [s.q_heads for s in shapes] == q_heads
    assert [s.kv_heads for s in shapes] == [q // 4 for q in q_heads]
    assert [s.ffn_dim for s in shapes] == ffn


def test_make_divisible_never_rounds_down_more_than_ten_percent():
    assert make_divisible(640, 256) == 768  # 512 would be 20 % below
    assert make_divisible(100, 256) == 256
    assert make_divisible(1000, 8) == 1000
    assert make_divisible(1010, 256) == 1024
    for value in range(1, 5000, 37):
        assert make_divisible(value, 64) >= 0.9 * value


def test_multipliers_use_python_round_on_float64_linspace():
    mults = per_layer_multipliers((0.5, 4.0), 16)
    assert mults[1] == 0.73 and mults[-1] == 4.0  # 0.5 + 3.5/15 = 0.7333...


def test_uniform_schedule_gives_identical_layers():
    shapes = layer_shapes(num_layers=6, model_dim=1024, head_dim=64, num_gqa_groups=4,
                          qkv_multipliers=1.0, ffn_multipliers=(2.0, 2.0))
    assert len(set(shapes)) == 1
    assert shapes[0].q_heads == 16 and shapes[0].ffn_dim == 2048


def test_explicit_per_layer_lists_win():
    shapes = layer_shapes(num_layers=3, model_dim=256, head_dim=32, num_gqa_groups=4,
                          qkv_multipliers=(0.5, 1.0), ffn_multipliers=[1.0, 2.0, 3.0],
                          num_query_heads=[4, 6, 8], num_kv_heads=[2, 3, 2])
    assert [(s.q_heads, s.kv_heads, s.ffn_dim) for s in shapes] == [
        (4, 2, 256), (6, 3, 512), (8, 2, 768)]


def test_wrong_length_lists_are_rejected():
    with pytest.raises(ValueError, match="num_layers=3"):
        layer_shapes(num_layers=3, model_dim=256, head_dim=32, num_gqa_groups=4,
                     qkv_multipliers=(0.5, 1.0), ffn_multipliers=(1.0, 2.0),
                     num_query_heads=[4, 6])


def test_a_single_multiplier_is_the_uniform_schedule():
    """``--config.model.qkv_multipliers=0.75`` arrives as a 1-tuple: every layer gets 0.75."""
    assert per_layer_multipliers((0.75,), 4) == [0.75] * 4
    shapes = layer_shapes(num_layers=3, model_dim=256, head_dim=32, num_gqa_groups=2,
                          qkv_multipliers=(1.0,), ffn_multipliers=(2.0,), ffn_dim_divisor=64)
    assert [(s.q_heads, s.kv_heads, s.ffn_dim) for s in shapes] == [(8, 4, 512)] * 3
