"""Layer-wise scaling: every layer's head counts and FFN width, exactly as Apple's released code.

Pure Python (numpy only for ``linspace``) so that shapes can be derived, counted and validated
without building a model. ``round`` is Python's on float64 values, as in CoreNet, because the
per-layer multipliers must round to the same two decimals as the released checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """The shapes that make one decoder layer different from the others."""

    q_heads: int
    kv_heads: int
    ffn_dim: int


def make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to a multiple of ``divisor``, never more than 10 % below it (CoreNet rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def per_layer_multipliers(multipliers: float | Sequence[float], num_layers: int) -> list[float]:
    """Expand a (first, last) pair into one multiplier per layer; a full list passes through.

    A single number, or a pair with equal ends, is the uniform schedule used by ablations.
    """
    if isinstance(multipliers, (int, float)):
        multipliers = (float(multipliers), float(multipliers))
    values = [float(m) for m in multipliers]
    if len(values) == 1:  # one value (e.g. --config.model.qkv_multipliers=0.75): uniform
        values *= 2
    if len(values) == num_layers and num_layers != 2:
        return values
    if len(values) != 2:
        raise ValueError(
            f"multipliers must be a (first, last) pair or one value per layer ({num_layers}); "
            f"got {len(values)} values"
        )
    return [round(float(m), 2) for m in np.linspace(values[0], values[1], num_layers, dtype=np.float64)]


def layer_shapes(
    *,
    num_layers: int,
    model_dim: int,
    head_dim: int,
    num_gqa_groups: int,
    qkv_multipliers: float | Sequence[float],
    ffn_multipliers: float | Sequence[float],
    ffn_dim_divisor: int = 256,
    num_query_heads: Sequence[int] | None = None,
    num_kv_heads: Sequence[int] | None = None,
) -> tuple[LayerShape, ...]:
    """Every layer's (query heads, kv heads, ffn dim).

    Explicit ``num_query_heads`` / ``num_kv_heads`` lists (as HF configs store them) win over the
    multiplier rule; ``ffn_multipliers`` may likewise be a full per-layer list.
    """
    ffn_mults = per_layer_multipliers(ffn_multipliers, num_layers)
    ffn_dims = [make_divisible(m * model_dim, ffn_dim_divisor) for m in ffn_mults]
    if num_query_heads is not None:
        q_heads = [int(q) for q in num_query_heads]
        kv_heads = (
            [int(k) for k in num_kv_heads]
            if num_kv_heads is not None
            else [q // num_gqa_groups for q in q_heads]
        )
    else:
        qkv_mults = per_layer_multipliers(qkv_multipliers, num_layers)
        q_dims = [make_divisible(model_dim * m, head_dim * num_gqa_groups) for m in qkv_mults]
        q_heads = [q // head_dim for q in q_dims]
        kv_heads = [q // num_gqa_groups for q in q_heads]
    if not (len(q_heads) == len(kv_heads) == num_layers):
        raise ValueError(
            f"per-layer head lists must have num_layers={num_layers} entries; got "
            f"{len(q_heads)} query and {len(kv_heads)} kv entries"
        )
    return tuple(LayerShape(q, k, f) for q, k, f in zip(q_heads, kv_heads, ffn_dims))
