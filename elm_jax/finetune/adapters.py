"""LoRA and DoRA adapters, applied in weight space: the adapted model is the base model with each
targeted weight W replaced by W', so merging is exact and DoRA's per-feature norms are defined.

An adapter acts on the matrix view of its weight, input dimensions against output dimensions:
[embed] x [heads, head_dim] for q/k/v, [heads, head_dim] x [embed] for out_proj, [embed] x [mlp] for
gate and up, [mlp] x [embed] for down, [vocab] x [embed] for the token embedding (tied: its adapter
adapts the output projection too). We compute ``x @ W``, so A [in, r] and B [r, out] are the
transposes of the LoRA paper's::

    LoRA (Hu et al., 2021):   W' = W + s A B                        s = alpha / r
    DoRA (Liu et al., 2024):  W' = m (W + s A B) / ||W + s A B||    norm per output feature
    rsLoRA (Kalajdzievski, 2023): s = alpha / sqrt(r)

A starts Kaiming-uniform (bound 1 / sqrt(fan_in), PEFT's default) and B at zero, so the adapted
model starts equal to the base; DoRA's m starts at ||W||. Dropout with probability p drops input
features of the low-rank path: each step keeps each row of A with probability 1 - p (scaled by
1 / (1 - p)), the same rows for every token of the step: the weight-space form of LoRA's dropout on
the adapter input, never applied to the embedding (as PEFT does). DoRA's norm is taken without
dropout and treated as a constant in the backward pass, as the DoRA paper recommends (its §4.3).

Adapter parameters carry logical axes (A: its weight's input axes, B and m: its output axes, the
rank unsharded) and take their shardings from their weight's, so they split like it does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from elm_jax.config import FinetuneConfig, ModelConfig
from elm_jax.errors import ConfigError
from elm_jax.finetune import paths as paths_lib
from elm_jax.finetune.paths import Path, Tree
from elm_jax.model import abstract_params

INPUT_DIMS = {"out_proj": 2}  # leading input dimensions of a weight; 1 for every other matrix
EMBEDDING: Path = ("embed",)


@dataclasses.dataclass(frozen=True)
class Target:
    """One adapted weight: where it is, its shape and logical axes, and its matrix view."""

    path: Path
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    in_dims: int

    @property
    def fan_in(self) -> int:
        return math.prod(self.shape[:self.in_dims])

    @property
    def fan_out(self) -> int:
        return math.prod(self.shape[self.in_dims:])


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """Which weights get an adapter, and its rank, scale, kind and dropout."""

    targets: tuple[Target, ...]
    rank: int
    scale: float
    dora: bool
    dropout: float
    dtype: Any

    def shapes(self, target: Target) -> dict[str, tuple[tuple[int, ...], tuple[str | None, ...]]]:
        """``{name: (shape, logical axes)}`` of one target's adapter parameters."""
        k, r = target.in_dims, self.rank
        out = {"a": ((*target.shape[:k], r), (*target.axes[:k], None)),
               "b": ((r, *target.shape[k:]), (None, *target.axes[k:]))}
        if self.dora:
            out["m"] = (target.shape[k:], target.axes[k:])
        return out


def adapter_spec(model: ModelConfig, cfg: FinetuneConfig) -> AdapterSpec | None:
    """The adapters ``cfg`` asks for on ``model`` (None for ``adapter='none'``); a regex that selects
    no weight matrix or a rank above a matrix's smaller side is a ``ConfigError``."""
    if cfg.adapter == "none":
        return None
    state = dict(nnx.to_flat_state(abstract_params(model)))
    matrices = [p for p, var in state.items() if len(var.shape) >= 2]
    targets = []
    for path in paths_lib.select(matrices, cfg.targets, "finetune.targets"):
        var = state[path]
        target = Target(path, tuple(var.shape), tuple(var.get_metadata()["logical_axes"]),
                        INPUT_DIMS.get(path[-1], 1))
        side = min(target.fan_in, target.fan_out)
        if cfg.rank > side:
            raise ConfigError(
                f"finetune.rank={cfg.rank} exceeds the smaller side of {paths_lib.name(path)} "
                f"({target.fan_in} x {target.fan_out} as a matrix); use finetune.rank <= {side} or "
                "leave that weight out of finetune.targets")
        targets.append(target)
    scale = cfg.alpha / (math.sqrt(cfg.rank) if cfg.rslora else cfg.rank)
    return AdapterSpec(tuple(targets), cfg.rank, scale, cfg.adapter == "dora", cfg.dropout,
                       jnp.dtype(model.param_dtype))


def abstract(spec: AdapterSpec) -> Tree:
    """The adapter parameters as ``ShapeDtypeStruct`` leaves."""
    return paths_lib.unflatten({
        (*t.path, name): jax.ShapeDtypeStruct(shape, spec.dtype)
        for t in spec.targets for name, (shape, _) in spec.shapes(t).items()})


def logical_axes(spec: AdapterSpec) -> Tree:
    """The logical axis names of every adapter parameter (None: the unsharded rank)."""
    return paths_lib.unflatten({(*t.path, name): axes for t in spec.targets
                                for name, (_, axes) in spec.shapes(t).items()})


def shardings(spec: AdapterSpec, model_shardings: Mapping[Any, Any]) -> Tree:
    """Each adapter parameter sharded like its weight: A over the weight's input dimensions, B and
    m over its output dimensions."""
    out = {}
    for t in spec.targets:
        base = paths_lib.get(model_shardings, t.path)
        dims = (*base.spec, *([None] * (len(t.shape) - len(base.spec))))
        k = t.in_dims
        specs = {"a": (*dims[:k], None), "b": (None, *dims[k:]), "m": dims[k:]}
        for name in spec.shapes(t):
            out[(*t.path, name)] = NamedSharding(base.mesh, PartitionSpec(*specs[name]))
    return paths_lib.unflatten(out)


def _matrix(w: jax.Array, target: Target) -> jax.Array:
    return w.reshape(target.fan_in, target.fan_out).astype(jnp.float32)


def init(spec: AdapterSpec, model_params: Mapping[Any, Any], key: jax.Array) -> Tree:
    """Fresh adapters: A Kaiming-uniform, B zero (the adapted model equals the base), m = ||W||."""
    out = {}
    for i, t in enumerate(spec.targets):
        shapes = spec.shapes(t)
        bound = 1.0 / math.sqrt(t.fan_in)
        out[(*t.path, "a")] = jax.random.uniform(jax.random.fold_in(key, i), shapes["a"][0],
                                                 spec.dtype, -bound, bound)
        out[(*t.path, "b")] = jnp.zeros(shapes["b"][0], spec.dtype)
        if spec.dora:
            w = _matrix(paths_lib.get(model_params, t.path), t)
            out[(*t.path, "m")] = jnp.linalg.norm(w, axis=0).reshape(shapes["m"][0]).astype(spec.dtype)
    return paths_lib.unflatten(out)


def _low_rank(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def adapted_weight(spec: AdapterSpec, target: Target, w: jax.Array, adapter: Mapping[str, jax.Array],
                   key: jax.Array | None = None) -> jax.Array:
    """W' of one target (``key``: draw this step's dropout; None: none, as in merging)."""
    matrix = _matrix(w, target)
    a = adapter["a"].astype(jnp.float32).reshape(target.fan_in, spec.rank)
    b = adapter["b"].astype(jnp.float32).reshape(spec.rank, target.fan_out)
    used = a
    if key is not None and spec.dropout > 0 and target.path != EMBEDDING:
        keep = jax.random.bernoulli(key, 1.0 - spec.dropout, (target.fan_in, 1))
        used = jnp.where(keep, a / (1.0 - spec.dropout), 0.0)
    adapted = matrix + spec.scale * _low_rank(used, b)
    if spec.dora:
        norm = jnp.linalg.norm(matrix + spec.scale * _low_rank(a, b), axis=0)
        magnitude = adapter["m"].astype(jnp.float32).reshape(target.fan_out)
        adapted = adapted * (magnitude / jax.lax.stop_gradient(norm))
    return adapted.reshape(target.shape).astype(w.dtype)


def apply(spec: AdapterSpec | None, model_params: Mapping[Any, Any], adapters: Mapping[Any, Any],
          key: jax.Array | None = None) -> Tree:
    """The model's parameters with every adapter folded into its weight (merging is ``key=None``)."""
    if spec is None:
        return dict(model_params)
    new = {}
    for i, t in enumerate(spec.targets):
        step_key = None if key is None else jax.random.fold_in(key, i)
        new[t.path] = adapted_weight(spec, t, paths_lib.get(model_params, t.path),
                                     paths_lib.get(adapters, t.path), step_key)
    return paths_lib.replace(model_params, new)


def count(tree: Mapping[Any, Any]) -> int:
    """Number of scalars in a tree of arrays or ``ShapeDtypeStruct``s."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
