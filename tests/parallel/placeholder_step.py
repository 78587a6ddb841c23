"""A stand-in train step for the planner's tests until elm_jax.train lands: loss, grads, AdamW.

Parameters and Adam moments are sharded over ``fsdp`` on their first divisible dimension; the
batch over ("data", "fsdp"). Enough to exercise compile / report / fit, not the real recipe.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from elm_jax.config import Config
from elm_jax.model import abstract_model


def placeholder_mesh(config: Config, devices) -> jax.sharding.Mesh:
    sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
    fixed = -1 * jnp.prod(jnp.array(sizes)).item() if -1 in sizes else None
    if fixed:
        sizes[sizes.index(-1)] = len(devices) // fixed
    return jax.make_mesh(tuple(sizes), ("data", "fsdp", "tensor"), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _spec(shape, fsdp: int) -> PartitionSpec:
    for i, size in enumerate(shape):
        if size % fsdp == 0 and fsdp > 1:
            return PartitionSpec(*([None] * i), "fsdp")
    return PartitionSpec()


@dataclasses.dataclass
class PlaceholderStep:
    fn: Any
    state_shapes: Any
    batch_shapes: Any

    def lower(self):
        return self.fn.lower(self.state_shapes, self.batch_shapes)


def placeholder_step(config: Config, mesh: jax.sharding.Mesh) -> PlaceholderStep:
    gdef, params = nnx.split(abstract_model(config.model), nnx.Param)
    params = params.to_pure_dict()
    tx = optax.adamw(1e-3)
    fsdp = mesh.shape["fsdp"]

    def shaped(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                    sharding=NamedSharding(mesh, _spec(x.shape, fsdp)))

    state = jax.tree.map(shaped, (params, jax.eval_shape(tx.init, params)))
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    shape = (config.train.batch_size, config.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rows) for k in ("inputs", "targets")}

    def step(state, batch):
        params, opt = state

        def loss(p):
            logits = nnx.merge(gdef, p)(batch["inputs"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), value

    shardings = jax.tree.map(lambda x: x.sharding, state)
    fn = jax.jit(step, in_shardings=(shardings, rows), out_shardings=(shardings, None),
                 donate_argnums=0)
    return PlaceholderStep(fn, state, batch)
