"""The entry point: which kernel ``impl`` means where, clear refusals, and sharded execution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from elm_jax.kernels import attention
from elm_jax.kernels.attention import resolve_impl
from elm_jax.kernels.reference import xla_attention


def _qkv(batch, seq, heads, kv_heads, head_dim=16, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, seq, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, seq, kv_heads, head_dim))
    v = jax.random.normal(keys[2], (batch, seq, kv_heads, head_dim))
    ids = 1 + jnp.cumsum(jax.random.bernoulli(keys[3], 0.2, (batch, seq)), axis=1)
    return q, k, v, ids.astype(jnp.int32)


@pytest.mark.parametrize("impl,platform,message", [
    ("cudnn", "cpu", "'cudnn' runs on GPU only.*platform is cpu"),
    ("pallas_tpu", "gpu", "'pallas_tpu' runs on TPU only.*interpret=True"),
    ("pallas_gpu", "cpu", "'pallas_gpu' runs on GPU only.*interpret=True"),
    ("pallas", "cpu", "'pallas' needs a TPU or GPU.*interpret=True"),
    ("flash", "cpu", "unknown attention impl 'flash'.*pallas_tpu"),
])
def test_unservable_requests_fail_clearly(impl, platform, message):
    with pytest.raises(ValueError, match=message):
        resolve_impl(impl, platform=platform, interpret=False, dtype=jnp.bfloat16)


def test_cudnn_refuses_float32():
    with pytest.raises(ValueError, match="cudnn' needs bfloat16"):
        resolve_impl("cudnn", platform="gpu", interpret=False, dtype=jnp.float32)


@pytest.mark.parametrize("impl,platform,interpret,dtype,expected", [
    ("auto", "cpu", False, jnp.float32, "xla"),
    ("auto", "tpu", False, jnp.bfloat16, "pallas_tpu"),
    ("auto", "gpu", False, jnp.float32, "pallas_gpu"),  # cuDNN takes half precision only
    ("pallas", "tpu", False, jnp.bfloat16, "pallas_tpu"),
    ("pallas", "gpu", False, jnp.bfloat16, "pallas_gpu"),
    ("pallas", "cpu", True, jnp.float32, "pallas_tpu"),
    ("pallas_gpu", "cpu", True, jnp.float32, "pallas_gpu"),
])
def test_impl_resolution(impl, platform, interpret, dtype, expected):
    assert resolve_impl(impl, platform=platform, interpret=interpret, dtype=dtype) == expected


def test_entry_point_refuses_pallas_on_cpu_without_interpret():
    q, k, v, _ = _qkv(1, 8, 2, 1)
    with pytest.raises(ValueError, match="interpret=True"):
        attention(q, k, v, impl="pallas")


def _mesh():
    devices = np.asarray(jax.devices()[:8]).reshape(2, 2, 2)
    return jax.sharding.Mesh(devices, ("data", "fsdp", "tensor"))


def _sharded_qkv(heads, kv_heads):
    mesh = _mesh()
    q, k, v, ids = _qkv(4, 24, heads, kv_heads)
    head_axis = "tensor" if kv_heads % 2 == 0 else None
    q, k, v = (jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), None, head_axis)))
               for x in (q, k, v))
    return mesh, q, k, v, ids


def _shard_map_in_specs(fn, *args):
    """The in_specs of the one shard_map in ``fn``'s jaxpr."""
    eqns = [e for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns if e.primitive.name == "shard_map"]
    assert len(eqns) == 1
    return eqns[0].params["in_specs"]


def test_sharded_kernel_runs_per_shard_and_matches_xla():
    mesh, q, k, v, ids = _sharded_qkv(8, 2)  # batch over data x fsdp, heads over tensor

    def loss(q, k, v):
        out = attention(q, k, v, segment_ids=ids, impl="pallas_gpu", interpret=True)
        return jnp.sum(out * jnp.cos(out)), out

    with jax.set_mesh(mesh):
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        specs = _shard_map_in_specs(lambda q, k, v: attention(
            q, k, v, segment_ids=ids, impl="pallas_gpu", interpret=True), q, k, v)
        assert specs[0] == P(("data", "fsdp"), None, "tensor", None)
        (_, out), grads = step(q, k, v)

    def ref_loss(q, k, v):
        out = xla_attention(q, k, v, segment_ids=ids)
        return jnp.sum(out * jnp.cos(out)), out

    (_, ref_out), ref_grads = jax.value_and_grad(ref_loss, argnums=(0, 1, 2), has_aux=True)(
        q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, atol=1e-4, rtol=1e-4)


def test_heads_indivisible_by_tensor_axis_are_replicated():
    mesh, q, k, v, ids = _sharded_qkv(6, 3)  # 3 kv heads over tensor=2: heads replicated
    with jax.set_mesh(mesh):
        def call(q, k, v):
            return attention(q, k, v, segment_ids=ids, impl="pallas_gpu", interpret=True)

        specs = _shard_map_in_specs(call, q, k, v)
        out = jax.jit(call)(q, k, v)
    assert specs[0] == P(("data", "fsdp"), None, None, None)
    np.testing.assert_allclose(out, xla_attention(q, k, v, segment_ids=ids), atol=1e-5, rtol=1e-5)


def test_kernel_with_nothing_to_split_still_runs_inside_shard_map():
    # batch 3 and 3 kv heads divide none of the 2x2x2 mesh's axes: the Mosaic/Triton call must
    # still sit in a (replicated) shard_map, which the partitioner can place; a bare call cannot.
    mesh = _mesh()
    q, k, v, ids = _qkv(3, 24, 6, 3)
    with jax.set_mesh(mesh):
        def call(q, k, v):
            return attention(q, k, v, segment_ids=ids, impl="pallas_gpu", interpret=True)

        specs = _shard_map_in_specs(call, q, k, v)
        out = jax.jit(call)(q, k, v)
    assert specs[0] == P(None, None, None, None)
    np.testing.assert_allclose(out, xla_attention(q, k, v, segment_ids=ids), atol=1e-5, rtol=1e-5)
