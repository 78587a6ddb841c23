"""Where inference and evaluation arrays live when a mesh is set (``jax.set_mesh``).

Like training: the batch dimension over ("data", "fsdp") and heads over "tensor", each only when
the mesh axes divide the dimension; otherwise that dimension stays replicated. Without a mesh every
function here is the identity (or a plain transfer to the default device).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"


def _sizes(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes))


def batch_spec(mesh, batch: int) -> tuple[str, ...] | None:
    """The mesh axes the batch dimension is split over, or None when they do not divide it."""
    sizes = _sizes(mesh)
    axes = tuple(a for a in BATCH_AXES if a in sizes)
    if not axes or batch % math.prod(sizes[a] for a in axes):
        return None
    return axes


def constrain_kv(x: jax.Array, kv_heads: int) -> jax.Array:
    """Inside jit: lay out a ``[batch, length, kv_heads, head_dim]`` array like activations."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    heads = HEAD_AXIS if kv_heads % _sizes(mesh).get(HEAD_AXIS, kv_heads + 1) == 0 else None
    spec = PartitionSpec(batch_spec(mesh, x.shape[0]), None, heads, None)
    if AxisType.Explicit in mesh.axis_types:  # the sharding is part of the type: reshard
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def global_batch(array: np.ndarray, *, process_local: bool = False) -> jax.Array:
    """A host array as a device array, batch-sharded over the data axes of the current mesh.

    ``process_local``: ``array`` is this process's share of the global batch (what the data
    pipeline yields on each host); otherwise it is the whole batch, identical on every process.
    """
    mesh = jax.sharding.get_mesh()
    if mesh.empty:
        return jnp.asarray(array)
    global_rows = array.shape[0] * (jax.process_count() if process_local else 1)
    sharding = NamedSharding(mesh, PartitionSpec(batch_spec(mesh, global_rows)))
    if process_local:
        return jax.make_array_from_process_local_data(sharding, array)
    return jax.device_put(array, sharding)
