"""Find the flags that make a train step fit a slice, by compiling (``elm-plan --fit``).

Starting from a plan that does not fit: shard the state over the whole slice when the state alone
needs it (the planner's FSDP suggestion), then look for the fewest microbatches that fit, first
under the configured remat policy and then under full remat. The global batch never changes.

Each compile of a large model takes many minutes, so the analytic floor (seconds, no compile)
steers the search: the first compile is the count predicted to fit, the floor scaled by how far
the first compile's temporaries were from their floor (the floor is an account, not a strict bound,
so no count is skipped on its word). From there the search steps one count at a time toward the
fewest that fits: usually one compile to confirm the prediction and one to show the count below it
does not fit (or none, when that is the plan it started from).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from elm_jax.errors import ConfigError
from elm_jax.parallel.mesh import mesh_shape
from elm_jax.train import plan as plan_lib

Override = tuple[str, Any]


@dataclasses.dataclass(frozen=True)
class FitResult:
    """The first setup found to fit (None if none did), the overrides that make it, every plan tried."""

    plan: plan_lib.Plan | None
    overrides: tuple[Override, ...]
    tried: tuple[plan_lib.Plan, ...]

    def flags(self) -> str:
        return " ".join(f"--config.{k}={v}" for k, v in self.overrides)


def microbatch_counts(per_chip: int, start: int) -> list[int]:
    """Microbatch counts from ``start`` up that split ``per_chip`` sequences evenly, ascending."""
    return [c for c in range(max(1, start), per_chip + 1) if per_chip % c == 0]


def _mesh_fix(first: plan_lib.Plan) -> tuple[Override, ...]:
    """The planner's "shard the state over the slice" overrides, when it made that suggestion."""
    for suggestion in first.suggestions:
        if suggestion.topology is None and any(k.startswith("mesh.") for k, _ in suggestion.overrides):
            return suggestion.overrides
    return ()


def _predicted_to_fit(trial: plan_lib.Plan, ratio: float) -> bool:
    """Whether the step fits if XLA's temporaries are ``ratio`` times the floor's."""
    if trial.bound is None:
        return True  # nothing to predict with: compile it
    return trial.state_bytes + trial.batch_bytes + ratio * trial.bound.temp_bytes <= trial.budget_bytes


def _smallest_fitting(attempts: list[Callable[[], plan_lib.Plan]], guess: int) -> int | None:
    """Index of the first attempt that fits, assuming fitting is monotone along the list.

    The walk starts at ``guess`` and steps up after a miss, down after a fit, until a fit sits right
    above a miss (or the first attempt fits, or the last does not).
    """
    bad, good = -1, None
    probe = guess
    while bad + 1 < len(attempts) and (good is None or good - bad > 1):
        if attempts[probe]().fits:
            good, probe = probe, probe - 1
        else:
            bad, probe = probe, probe + 1
    return good


def fit(first: plan_lib.Plan, *, plan_fn: Callable[..., plan_lib.Plan] | None = None,
        estimate_fn: Callable[..., plan_lib.Plan] | None = None, **plan_kwargs: Any) -> FitResult:
    """Search microbatches and remat policy (and FSDP if the state needs it) from ``first``.

    ``plan_fn(config, topology, **plan_kwargs)`` makes each plan (default ``plan_lib.plan``; the
    plan table passes one that compiles in a child process); ``estimate_fn`` (default
    ``plan_lib.estimate``) gives the same plan's floor without compiling.
    """
    plan_fn = plan_fn or plan_lib.plan
    estimate_fn = estimate_fn or plan_lib.estimate
    base = _mesh_fix(first)
    if not base and first.state_bytes + first.batch_bytes > first.budget_bytes:
        return FitResult(None, (), ())  # the state alone exceeds HBM: no batch split helps
    try:
        config = plan_lib.with_overrides(first.config, base)
    except ConfigError:
        return FitResult(None, (), ())
    data, fsdp, _ = mesh_shape(config.mesh, first.topology.chips)
    shards = data * fsdp
    if config.train.batch_size % shards:
        return FitResult(None, (), ())
    per_chip = config.train.batch_size // shards
    start = config.train.microbatch_count(shards)
    policies = [config.model.remat_policy] + (["full"] if config.model.remat_policy != "full" else [])
    ratio = first.temp_ratio or 1.0  # XLA's temporaries over the floor, where the first compile says
    tried: dict[tuple, plan_lib.Plan] = {}

    def overrides_for(policy: str, count: int) -> tuple[Override, ...]:
        out = base + (("train.microbatches", count),)
        return out + ((("model.remat_policy", policy),) if policy != first.config.model.remat_policy
                      else ())

    def attempt(policy: str, count: int) -> plan_lib.Plan:
        key = (policy, count)
        if key not in tried:
            if not base and policy == first.config.model.remat_policy and count == first.microbatches:
                tried[key] = first  # already compiled
            else:
                trial = plan_lib.with_overrides(first.config, overrides_for(policy, count))
                tried[key] = plan_fn(trial, first.topology, **plan_kwargs)
        return tried[key]

    for policy in policies:
        counts = microbatch_counts(per_chip, start)
        floors = [estimate_fn(plan_lib.with_overrides(first.config, overrides_for(policy, c)),
                              first.topology, **plan_kwargs) for c in counts]
        guess = next((i for i, f in enumerate(floors) if _predicted_to_fit(f, ratio)), len(counts) - 1)
        index = _smallest_fitting([lambda c=c, p=policy: attempt(p, c) for c in counts], guess)
        if index is not None:
            count = counts[index]
            return FitResult(tried[(policy, count)], overrides_for(policy, count),
                             tuple(tried.values()))
    return FitResult(None, (), tuple(tried.values()))


def fit_report(result: FitResult) -> str:
    """What ``elm-plan`` prints after a search."""
    lines = [f"searched microbatches and remat by compiling ({len(result.tried)} compile(s)):"]
    for trial in result.tried:
        lines.append(f"  {trial.microbatches:4d} microbatch(es) of {trial.per_chip_microbatch:g} per "
                     f"chip, remat {trial.config.model.remat_policy}: "
                     + (f"fits, {trial.peak_bytes / plan_lib.GIB:.2f} GiB" if trial.fits else
                        f"does not fit ({trial.peak_bytes / plan_lib.GIB:.2f} GiB)"))
    if result.plan is None:
        lines.append("no microbatch count or remat policy fits this slice; see the suggestions above")
    else:
        lines.append(f"fits with: {result.flags()}")
    return "\n".join(lines)
