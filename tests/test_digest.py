"""Array digests: any one changed byte changes them, for every dtype a state holds, and the global
array decides them, not its sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elm_jax.digest import mismatches, tree_digests


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.int32, np.int8, np.bool_])
def test_every_single_byte_change_is_seen(dtype):
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((4, 6)) * 3).astype(dtype)
    want = tree_digests({"x": jnp.asarray(base)})
    raw = np.ascontiguousarray(base).view(np.uint8).reshape(-1).copy()
    for position in range(raw.size):
        for flip in (1, 0x80):
            changed = raw.copy()
            changed[position] ^= flip
            value = changed.view(base.dtype).reshape(base.shape)
            if dtype == np.bool_:
                value = value.astype(bool)  # a bool keeps one bit of meaning per byte
                if np.array_equal(value, base):
                    continue
            assert mismatches(want, {"x": jnp.asarray(value)}) == ["['x']"], (position, flip)


def test_digests_do_not_depend_on_the_sharding():
    x = jnp.arange(8 * 12, dtype=jnp.float32).reshape(8, 12)
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P("a", "b")))
    assert tree_digests({"x": sharded}) == tree_digests({"x": x})
    assert tree_digests({"x": x.T}) != tree_digests({"x": x})  # positions count, not just values


def test_another_dtype_is_not_compared():
    x = jnp.ones((3,), jnp.float32)
    assert mismatches(tree_digests({"x": x}), {"x": x.astype(jnp.bfloat16)}) == []
