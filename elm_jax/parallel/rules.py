"""Logical axis names -> mesh axes: one table for parameters and for activations.

Parameters name their dimensions in ``logical_axes`` metadata (``elm_jax.model.layers``); the model
names the dimensions of its main activations where it computes them (:func:`constrain`). Both are
mapped to the ("data", "fsdp", "tensor") mesh by a rules table: ``DEFAULT_RULES``, with overrides
from ``mesh.rules`` in the config (:func:`rules_from_config`). Pure data parallelism, FSDP and
FSDP + tensor parallelism are mesh sizes; moving a dimension to another axis is a rules edit.

A dimension its rule's axes do not divide is replicated (see ``logical_to_spec``). The head
dimensions of one attention block (``HEAD_AXES``) are sharded together or not at all, for its
weights and for its activations alike, so a layer whose head counts the tensor axis does not divide
computes all its heads on every tensor shard instead of resharding between q, k and v.

The table itself and the parsing of ``mesh.rules`` live below this floor (``common_types``,
``config``); this module applies them to arrays and meshes and never imports the model.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import PartitionSpec

from elm_jax.common_types import DEFAULT_RULES, HEAD_AXES, Rules

_ACTIVE_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("elm_jax_rules",
                                                                      default=DEFAULT_RULES)


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[None]:
    """Make ``rules`` the table :func:`constrain` reads while tracing inside this block."""
    token = _ACTIVE_RULES.set(rules)
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def active_rules() -> Rules:
    return _ACTIVE_RULES.get()


def axis_size(mesh: Any, axes: tuple[str, ...]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Any,
                    rules: Rules | None = None, *, replicate: Sequence[str] = ()) -> PartitionSpec:
    """PartitionSpec for one array: each named dimension takes its rule's mesh axes when they divide
    it and are not already used by an earlier dimension; names in ``replicate`` stay replicated.

    Axes that are manual here (inside ``shard_map``) are skipped. ``rules`` defaults to the active
    table (:func:`use_rules`).
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    rules = active_rules() if rules is None else rules
    manual = set(getattr(mesh, "manual_axes", ()))
    used: set[str] = set()
    spec: list[Any] = []
    for name, size in zip(logical_axes, shape):
        axes = tuple(a for a in (rules.get(name) or ()) if a in mesh.shape and a not in used
                     and a not in manual and mesh.shape[a] > 1)
        if name in replicate or not axes or size % axis_size(mesh, axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def splits_evenly(name: str, size: int, mesh: Any, rules: Rules) -> bool:
    """Whether the mesh axes of ``name``'s rule divide ``size`` (True when it has none here)."""
    axes = tuple(a for a in (rules.get(name) or ()) if a in mesh.shape)
    return not axes or size % axis_size(mesh, axes) == 0


def heads_divide(q_heads: int, kv_heads: int, mesh: Any, rules: Rules | None = None) -> bool:
    """Whether one attention block's heads shard over their axes (else all of them replicate)."""
    rules = active_rules() if rules is None else rules
    return (splits_evenly("heads", q_heads, mesh, rules)
            and splits_evenly("kv_heads", kv_heads, mesh, rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None], *,
              heads: tuple[int, int] | None = None) -> jax.Array:
    """Pin activation ``x`` to the layout its logical axes map to on the ambient mesh.

    A no-op off a mesh. ``heads=(q_heads, kv_heads)`` names the attention block ``x`` belongs to,
    whose head dimensions replicate together when the tensor axis does not divide them.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(mesh.axis_names) <= set(getattr(mesh, "manual_axes", ())):
        return x
    replicate = HEAD_AXES if heads is not None and not heads_divide(*heads, mesh) else ()
    spec = logical_to_spec(logical_axes, x.shape, mesh, replicate=replicate)
    return jax.lax.with_sharding_constraint(x, spec)
