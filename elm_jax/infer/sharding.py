"""Where inference and evaluation arrays live when a mesh is set (``jax.set_mesh``).

The same rules as training (``elm_jax.parallel.mesh``): the batch over ("data", "fsdp") and kv heads
over "tensor", each only where the mesh axes divide the dimension. A layer whose heads the tensor
axis does not divide keeps its attention weights replicated, and so does its KV cache, so decoding
never reshards a cache. Without a mesh every function here is the identity (or a plain transfer).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from elm_jax.parallel import mesh as mesh_lib
from elm_jax.parallel.rules import constrain, logical_to_spec

KV_AXES = ("activation_batch", None, "activation_kv_heads", None)


def constrain_kv(x: jax.Array, q_heads: int) -> jax.Array:
    """Inside jit: lay out one layer's ``[batch, length, kv_heads, head_dim]`` keys or values as
    training lays out that layer's k and v (so a cache update never reshards)."""
    return constrain(x, KV_AXES, heads=(q_heads, x.shape[2]))


def global_batch(array: np.ndarray) -> jax.Array:
    """A whole batch (the same on every process) as a device array, rows over the data axes
    of the current mesh when they divide them."""
    mesh = jax.sharding.get_mesh()
    if mesh.empty:
        return jnp.asarray(array)
    spec = logical_to_spec(("batch",) + (None,) * (array.ndim - 1), array.shape, mesh)
    return jax.device_put(array, NamedSharding(mesh, spec))


def to_host(tree: Any) -> Any:
    """Device arrays -> NumPy, whole, on every process.

    A batch sharded over several processes' devices has rows this process cannot read
    (``device_get`` fails: "spans non-addressable devices"); those are gathered from every process
    (``process_allgather``), a collective, so all processes call this at the same point.
    """
    def fetch(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(fetch, tree)


def process_batch(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of a data-pipeline batch as global arrays (training's layout).

    On one process a batch the data axes do not divide stays whole on every device; across
    processes each must hold an equal share (training's rule, checked by ``global_batch``).
    """
    if jax.process_count() == 1:
        return {k: global_batch(v) for k, v in batch.items()}
    return mesh_lib.global_batch(batch, jax.sharding.get_mesh())
