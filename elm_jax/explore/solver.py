"""Matched-cost solver: stretch one knob of a schedule (or the model width) until one cost matches.

Costs are step functions of any knob (heads and FFN widths round to multiples), so the solver
brackets the step where the cost crosses the target and keeps whichever side is closer; the
untouched schedule (knob 1, or the reference width) wins ties, so a family that already matches is
left as written. It then reports how far the other costs ended up from the reference's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from elm_jax.config import ModelConfig
from elm_jax.errors import ConfigError
from elm_jax.explore.costs import COSTS, check_convention, model_costs, relative_mismatch
from elm_jax.explore.schedules import Schedule, apply

KNOBS = ("scale", "qkv_scale", "ffn_scale", "model_dim")
SCALE_RANGE = (1 / 64, 64.0)
WIDTH_RANGE = (8, 1 << 17)
BISECTION_STEPS = 60
SCAN_POINTS = 400  # scan around the crossing: rounding makes costs step, not always monotonically
WIDTH_SCAN = 64


@dataclasses.dataclass(frozen=True)
class Match:
    """The solved counterpart and how well it matches."""

    model: ModelConfig
    schedule: Schedule
    knob: str
    knob_value: float
    cost: str
    target: float
    achieved: float
    others: dict[str, float]  # relative mismatch of every cost, the matched one included

    @property
    def mismatch(self) -> float:
        return relative_mismatch(self.achieved, self.target)


def cost_summary(model: ModelConfig, seq_len: int) -> dict[str, float]:
    """The costs the solver reports: parameters in both conventions, FLOPs and KV bytes per token."""
    costs = model_costs(model, seq_len=seq_len)
    return {"params": float(costs.params("total")),
            "non_embedding_params": float(costs.params("non_embedding")),
            "flops": costs.flops_per_token(), "kv_bytes": float(costs.kv_bytes_per_token)}


def _candidate(base: ModelConfig, schedule: Schedule,
               knob: str) -> Callable[[float], tuple[ModelConfig, Schedule]]:
    if knob == "model_dim":
        return lambda x: (apply(dataclasses.replace(base, model_dim=int(x)), schedule), schedule)
    scales = {"scale": lambda x: dict(qkv=x, ffn=x), "qkv_scale": lambda x: dict(qkv=x),
              "ffn_scale": lambda x: dict(ffn=x)}[knob]

    def build(x: float) -> tuple[ModelConfig, Schedule]:
        stretched = schedule.scaled(**scales(x))
        return apply(base, stretched), stretched

    return build


def match_cost(reference: ModelConfig, schedule: Schedule, *, seq_len: int, cost: str = "params",
               convention: str = "total", knob: str = "scale", tolerance: float = 0.01,
               base: ModelConfig | None = None) -> Match:
    """``schedule`` applied to ``base`` (default: ``reference``) with ``knob`` solved so that
    ``cost`` equals the reference's within ``tolerance`` (relative); ``ConfigError`` otherwise."""
    if cost not in COSTS:
        raise ConfigError(f"match cost {cost!r} is unknown; choose one of {', '.join(COSTS)}")
    if knob not in KNOBS:
        raise ConfigError(f"match knob {knob!r} is unknown; choose one of {', '.join(KNOBS)}")
    check_convention(convention)
    base = base or reference
    build = _candidate(base, schedule, knob)
    value = lambda m: model_costs(m, seq_len=seq_len).value(cost, convention)  # noqa: E731
    target = value(reference)
    natural = float(base.model_dim) if knob == "model_dim" else 1.0
    memo: dict[float, float] = {}

    def g(x: float) -> float:
        if x not in memo:
            memo[x] = value(build(x)[0])
        return memo[x]

    best = min(_candidates(g, target, knob, natural), key=lambda x: (abs(g(x) - target), x != natural))
    if abs(relative_mismatch(g(best), target)) > tolerance:
        raise ConfigError(
            f"cannot match {schedule.name}'s {cost} to the reference's {target:.6g} within "
            f"{tolerance:.2%} with knob {knob}: the closest is {g(best):.6g} "
            f"({relative_mismatch(g(best), target):+.2%}); use a finer ffn_dim_divisor, another knob "
            "or a larger tolerance")
    model, stretched = build(best)
    ref, got = cost_summary(reference, seq_len), cost_summary(model, seq_len)
    return Match(model=model, schedule=stretched, knob=knob, knob_value=best, cost=cost, target=target,
                 achieved=g(best), others={k: relative_mismatch(got[k], ref[k]) for k in ref})


def _candidates(g: Callable[[float], float], target: float, knob: str, natural: float) -> list[float]:
    """Knob values on both sides of the crossing of ``target``, plus the natural value."""
    integer = knob == "model_dim"
    lo, hi = WIDTH_RANGE if integer else SCALE_RANGE
    if g(lo) > target or g(hi) < target:
        raise ConfigError(f"knob {knob} cannot reach the target cost {target:.6g} within "
                          f"[{lo}, {hi}] (from {g(lo):.6g} to {g(hi):.6g})")
    for _ in range(BISECTION_STEPS):  # invariant: g(lo) <= target <= g(hi)
        if (hi - lo <= 1) if integer else (hi / lo - 1 < 1e-9):
            break
        mid = (lo + hi) // 2 if integer else math.sqrt(lo * hi)
        lo, hi = (mid, hi) if g(mid) < target else (lo, mid)
    found = [natural, lo, hi]
    if min(abs(g(x) - target) for x in found) > 0:  # rounding steps need not be monotone: look around
        found += ([w for w in range(lo - WIDTH_SCAN, hi + WIDTH_SCAN + 1) if w >= WIDTH_RANGE[0]]
                  if integer else [hi / 1.05 * 1.1 ** (i / SCAN_POINTS) for i in range(SCAN_POINTS + 1)])
    return found
