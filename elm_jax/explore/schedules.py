"""Schedule families: how query heads, kv heads and FFN width vary over the layers.

Every family ends in the same place as the model: a ``model`` config section (multipliers or
per-layer lists) that ``ModelConfig.layer_shapes()`` turns into heads and widths through CoreNet's
rounding. Families given as a (first, last) pair keep that form, so the model's own
``linspace`` + ``round(., 2)`` applies exactly as in Apple's configs; families with a curve are
written out per layer, rounded to two decimals the same way.

- ``uniform``: every layer the same (``qkv``, ``ffn`` single multipliers).
- ``openelm_linear``: OpenELM's layer-wise scaling, linear from the first to the last layer.
- ``reverse``: the same ranges, widest layer first.
- ``tapered``: from ``(wide, narrow)`` along a half cosine (wide for longer at the bottom).
- ``crown``: wide-narrow-wide, ``(edge, middle)`` along a full cosine.
- ``explicit``: one multiplier per layer, or explicit ``q_heads`` / ``kv_heads`` lists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from elm_jax.config import ModelConfig
from elm_jax.errors import ConfigError
from elm_jax.scaling import per_layer_multipliers

FAMILIES = ("uniform", "openelm_linear", "reverse", "tapered", "crown", "explicit")
SCHEDULE_FIELDS = ("qkv_multipliers", "ffn_multipliers", "num_query_heads", "num_kv_heads")
PAIR_DIGITS = 4  # scaled (first, last) ends keep 4 decimals: readable configs, fine enough to match
LARGE_ROUNDING = 0.10  # a layer built more than 10 % away from its nominal size is worth a warning


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A family and its parameters; ``qkv_scale`` / ``ffn_scale`` stretch it (the solver's knobs)."""

    family: str
    qkv: tuple[float, ...] = ()
    ffn: tuple[float, ...] = ()
    q_heads: tuple[int, ...] | None = None
    kv_heads: tuple[int, ...] | None = None
    qkv_scale: float = 1.0
    ffn_scale: float = 1.0
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.family

    def scaled(self, *, qkv: float = 1.0, ffn: float = 1.0) -> Schedule:
        return dataclasses.replace(self, qkv_scale=self.qkv_scale * qkv, ffn_scale=self.ffn_scale * ffn)


def _numbers(name: str, value: Any) -> tuple[float, ...]:
    if value is None:
        return ()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"schedule field '{name}' = {value!r} is invalid: expected a number or a "
                          "list of numbers") from None


def schedule_from_spec(spec: Mapping[str, Any]) -> Schedule:
    """A ``Schedule`` from a sweep file's dict: ``{"family": ..., "qkv": ..., "ffn": ..., "label": ...}``."""
    known = {"family", "qkv", "ffn", "q_heads", "kv_heads", "qkv_scale", "ffn_scale", "label"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"unknown schedule key(s) {unknown}; known: {', '.join(sorted(known))}")
    family = spec.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"schedule family {family!r} is unknown; choose one of {', '.join(FAMILIES)}")
    heads = {k: tuple(int(v) for v in spec[k]) if spec.get(k) is not None else None
             for k in ("q_heads", "kv_heads")}
    return Schedule(family=family, qkv=_numbers("qkv", spec.get("qkv")),
                    ffn=_numbers("ffn", spec.get("ffn")), qkv_scale=float(spec.get("qkv_scale", 1.0)),
                    ffn_scale=float(spec.get("ffn_scale", 1.0)), label=str(spec.get("label") or ""),
                    **heads)


def _curve(ends: tuple[float, ...], num_layers: int, profile, what: str) -> list[float]:
    if len(ends) != 2:
        raise ConfigError(f"{what} takes two values (see elm_jax.explore.schedules); got {list(ends)}")
    a, b = ends
    denominator = max(num_layers - 1, 1)
    return [b + (a - b) * profile(i / denominator) for i in range(num_layers)]


def _half_cosine(t: float) -> float:
    return (1 + math.cos(math.pi * t)) / 2


def _full_cosine(t: float) -> float:
    return (1 + math.cos(2 * math.pi * t)) / 2


def _per_layer(family: str, values: tuple[float, ...], num_layers: int, which: str) -> list[float] | None:
    """Per-layer nominal multipliers of a curved family (None: the family is a (first, last) pair)."""
    if family == "tapered":
        return _curve(values, num_layers, _half_cosine, f"tapered {which} (wide, narrow)")
    if family == "crown":
        return _curve(values, num_layers, _full_cosine, f"crown {which} (edge, middle)")
    if family == "explicit":
        if len(values) != num_layers:
            raise ConfigError(f"explicit {which} needs {num_layers} per-layer values; got {len(values)}")
        return list(values)
    return None


def _pair(family: str, values: tuple[float, ...], which: str) -> tuple[float, float]:
    if family == "uniform":
        if len(values) != 1:
            raise ConfigError(f"uniform {which} takes one multiplier; got {list(values)}")
        return values[0], values[0]
    if len(values) != 2:
        raise ConfigError(f"{family} {which} takes (first, last) multipliers; got {list(values)}")
    return (values[1], values[0]) if family == "reverse" else (values[0], values[1])


def _multipliers(schedule: Schedule, values: tuple[float, ...], scale: float, num_layers: int,
                 which: str) -> tuple[float, ...]:
    curve = _per_layer(schedule.family, values, num_layers, which)
    if curve is None:
        return tuple(round(v * scale, PAIR_DIGITS) for v in _pair(schedule.family, values, which))
    return tuple(round(v * scale, 2) for v in curve)  # CoreNet rounds per-layer multipliers to 2 decimals


def model_section(schedule: Schedule, num_layers: int) -> dict[str, Any]:
    """The ``model`` config fields that realise ``schedule`` for ``num_layers`` layers."""
    if schedule.family not in FAMILIES:
        raise ConfigError(f"schedule family {schedule.family!r} is unknown; choose one of "
                          f"{', '.join(FAMILIES)}")
    explicit_heads = schedule.family == "explicit" and schedule.q_heads is not None
    section: dict[str, Any] = {
        "ffn_multipliers": _multipliers(schedule, schedule.ffn, schedule.ffn_scale, num_layers, "ffn"),
        "num_query_heads": schedule.q_heads if explicit_heads else None,
        "num_kv_heads": schedule.kv_heads if explicit_heads else None,
    }
    if explicit_heads:
        if schedule.qkv_scale != 1.0:
            raise ConfigError("explicit q_heads cannot be scaled; match on the ffn (knob ffn_scale)")
        section["qkv_multipliers"] = (1.0, 1.0)  # unused: the head lists win
    else:
        section["qkv_multipliers"] = _multipliers(schedule, schedule.qkv, schedule.qkv_scale,
                                                  num_layers, "qkv")
    return section


def apply(model: ModelConfig, schedule: Schedule) -> ModelConfig:
    """``model`` with its per-layer shapes replaced by ``schedule``'s, validated."""
    built = dataclasses.replace(model, **model_section(schedule, model.num_layers))
    built.validate()
    return built


@dataclasses.dataclass(frozen=True)
class BuiltLayer:
    """One row of the as-built table: what the schedule asked for and what the rounding gave."""

    index: int
    qkv_multiplier: float  # nominal, as the model reads it (None-free: explicit heads give built/d)
    ffn_multiplier: float
    q_heads: int
    kv_heads: int
    ffn_dim: int
    q_rounding: float  # built / nominal - 1
    ffn_rounding: float


@dataclasses.dataclass(frozen=True)
class AsBuilt:
    layers: tuple[BuiltLayer, ...]
    warnings: tuple[str, ...]


def as_built(model: ModelConfig) -> AsBuilt:
    """Per layer: nominal multipliers, built heads and FFN width, rounding error; plus warnings for
    staircases (fewer distinct sizes than the schedule asks for), non-monotonic results and layers
    rounded more than 10 % away from their nominal size."""
    n, d = model.num_layers, model.model_dim
    shapes = model.layer_shapes()
    ffn_m = per_layer_multipliers(model.ffn_multipliers, n)
    if model.num_query_heads is not None:
        qkv_m = [s.q_heads * model.head_dim / d for s in shapes]
    else:
        qkv_m = per_layer_multipliers(model.qkv_multipliers, n)
    rows = tuple(
        BuiltLayer(i, qkv_m[i], ffn_m[i], s.q_heads, s.kv_heads, s.ffn_dim,
                   s.q_heads * model.head_dim / (qkv_m[i] * d) - 1, s.ffn_dim / (ffn_m[i] * d) - 1)
        for i, s in enumerate(shapes))
    warnings = []
    for what, nominal, built in (("query heads", qkv_m, [r.q_heads for r in rows]),
                                 ("FFN width", ffn_m, [r.ffn_dim for r in rows])):
        warnings += _shape_warnings(what, nominal, built)
    for r in rows:
        for what, error, size, nominal in (("query width", r.q_rounding, r.q_heads * model.head_dim,
                                            r.qkv_multiplier),
                                           ("FFN width", r.ffn_rounding, r.ffn_dim, r.ffn_multiplier)):
            if abs(error) > LARGE_ROUNDING:
                warnings.append(f"layer {r.index}: {what} {size} is {size / d:.3g} d, not the nominal "
                                f"{nominal:.3g} d ({error:+.0%})")
    return AsBuilt(rows, tuple(warnings))


def _monotone(values: Sequence[float]) -> int:
    """+1 non-decreasing, -1 non-increasing, 0 neither (or constant)."""
    up = all(b >= a for a, b in zip(values, values[1:]))
    down = all(b <= a for a, b in zip(values, values[1:]))
    return 0 if up == down else (1 if up else -1)


def _shape_warnings(what: str, nominal: Sequence[float], built: Sequence[int]) -> list[str]:
    out = []
    distinct_nominal, distinct_built = len(set(nominal)), sorted(set(built))
    if len(distinct_built) < distinct_nominal and distinct_nominal > 1:
        out.append(f"staircase: {what} take only {len(distinct_built)} values "
                   f"{{{', '.join(map(str, distinct_built))}}} over {len(built)} layers "
                   f"({distinct_nominal} distinct nominal multipliers)")
    direction = _monotone(nominal)
    if direction and any((b - a) * direction < 0 for a, b in zip(built, built[1:])):
        out.append(f"non-monotonic: {what} {list(built)} do not follow the "
                   f"{'increasing' if direction > 0 else 'decreasing'} nominal schedule")
    return out

