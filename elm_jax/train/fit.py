"""Find the flags that make a train step fit a slice, by compiling (``elm-plan --fit``).

Starting from a plan that does not fit: shard the state over the whole slice when the state alone
needs it (the planner's FSDP suggestion), then look for the fewest microbatches that fit, first
under the configured remat policy and then under full remat. Temporaries shrink with the sequences
per microbatch, so the search bisects the microbatch counts that divide the per-chip batch: a few
compiles instead of one per count. The global batch never changes.
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


def _smallest_fitting(counts: list[int], attempt: Callable[[int], plan_lib.Plan]) -> int | None:
    """Index of the first count whose plan fits, assuming fitting is monotone in the count."""
    if attempt(counts[0]).fits:
        return 0
    if len(counts) == 1 or not attempt(counts[-1]).fits:
        return None
    bad, good = 0, len(counts) - 1
    while good - bad > 1:
        middle = (bad + good) // 2
        if attempt(counts[middle]).fits:
            good = middle
        else:
            bad = middle
    return good


def fit(first: plan_lib.Plan, *, plan_fn: Callable[..., plan_lib.Plan] | None = None,
        **plan_kwargs: Any) -> FitResult:
    """Search microbatches and remat policy (and FSDP if the state needs it) from ``first``.

    ``plan_fn(config, topology, **plan_kwargs)`` makes each plan (default ``plan_lib.plan``; the
    plan table passes one that compiles in a child process).
    """
    plan_fn = plan_fn or plan_lib.plan
    base = _mesh_fix(first)
    if not base and not first.compiled and first.compiler_error is None:
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
        index = _smallest_fitting(counts, lambda c, p=policy: attempt(p, c))
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
