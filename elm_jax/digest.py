"""Checksums of array bytes, computed on the devices that hold the arrays.

Orbax and TensorStore keep no checksum of array bytes, so a flipped byte in a checkpoint file
restores silently (as NaN or 3e38 weights). ``tree_digests`` gives every array a 64-bit digest of
its raw bits in one jitted pass, before a save and after a restore, without bringing the arrays to
the host: two position-weighted sums of the array's 32-bit words modulo 2**32 (odd weights, so any
change confined to one word, e.g. one corrupted byte, always changes the first sum; the second
sum, over mixed words and other weights, catches most multi-word changes the first misses). The
sums depend on the global array only, not on how it is sharded, so a state saved on one mesh
verifies on another. This guards against damaged files, not against a deliberate forgery.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_W1 = np.uint32(0x9E3779B1)  # multipliers of the two position weights (odd 32-bit constants)
_W2 = np.uint32(0x85EBCA6B)
_SALT = np.uint32(0x27D4EB2F)


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (1- and 2-byte items widened, 8-byte items split in two)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of 2 words


def _leaf_digest(x: jax.Array) -> jax.Array:
    words = _words(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # the flat (row-major) position, elementwise
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(
            stride % 2**32)
        stride *= words.shape[axis]
    first = jnp.sum(words * (index * _W1 | np.uint32(1)), dtype=jnp.uint32)
    mixed = words ^ (words >> np.uint32(15))
    second = jnp.sum(mixed * ((index ^ _SALT) * _W2 | np.uint32(1)), dtype=jnp.uint32)
    return jnp.stack([first, second])


def _leaf_digests(arrays: list[jax.Array]) -> list[jax.Array]:
    return [_leaf_digest(x) for x in arrays]


@functools.cache
def _compiled(out: jax.sharding.Sharding | None):
    return jax.jit(_leaf_digests, out_shardings=out)


def _replicated_like(arrays: list[jax.Array]) -> jax.sharding.Sharding | None:
    sharding = getattr(arrays[0], "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return None


def tree_digests(tree: Any) -> dict[str, str]:
    """``{path: "dtype:hex"}`` for every array leaf of ``tree`` (paths as ``jax.tree_util.keystr``).

    Runs where the arrays live; every process of a multi-host run gets the same answer.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        return {}
    arrays = [jnp.asarray(leaf) for _, leaf in flat]
    sums = _compiled(_replicated_like(arrays))(arrays)
    values = [np.asarray(s.addressable_data(0)) for s in sums]
    return {jax.tree_util.keystr(path): f"{x.dtype}:{int(v[0]):08x}{int(v[1]):08x}"
            for (path, _), x, v in zip(flat, arrays, values)}


def mismatches(expected: dict[str, str], tree: Any) -> list[str]:
    """The paths of ``tree`` whose digest differs from ``expected`` (arrays of another dtype than
    the one saved are not compared: restoring into another dtype changes the bytes)."""
    actual = tree_digests(tree)
    bad = []
    for path, digest in actual.items():
        want = expected.get(path)
        if want is not None and want.split(":")[0] == digest.split(":")[0] and want != digest:
            bad.append(path)
    return bad
