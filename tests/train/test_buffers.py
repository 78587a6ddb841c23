"""The buffers alive at XLA's peak, read from its dumps of a real (libtpu, compile-only) compile."""

import jax
import jax.numpy as jnp

from elm_jax.train import topology
from elm_jax.train.buffers import array_bytes, compile_with_buffers, describe, on_chip_memory


def test_the_one_large_temporary_is_found_with_its_shape_and_origin():
    devices = topology.devices(topology.parse("v5e-1"))
    mesh = jax.sharding.Mesh(devices, ("x",))
    x = jax.ShapeDtypeStruct((8192, 256), jnp.float32,
                             sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    def two_products(x):
        scores = jnp.tanh(x @ x.T)  # [8192, 8192], read by two matmuls: it must be materialised
        return scores @ x + scores.T @ (2 * x)

    compiled, peak = compile_with_buffers(jax.jit(two_products).lower(x))
    temp = compiled.memory_analysis().temp_size_in_bytes
    largest = peak.temporaries[0]
    # The scores (f32, or bf16 when the compiler sees that the matmuls read bf16 anyway) are all
    # of XLA's temporary allocation but a few KiB.
    assert largest.shape.endswith("[8192,8192]") and largest.bytes == array_bytes(largest.shape)
    assert largest.bytes in (8192 * 8192 * 2, 8192 * 8192 * 4)
    assert largest.bytes <= temp < largest.bytes + 2 ** 20
    assert largest.describe().startswith("forward: matmul result")
    assert [a.op_name for a in peak.arguments] == ["x"] and peak.argument_bytes == 8192 * 256 * 4
    assert peak.grouped()[0][1:3] == (1, largest.bytes)


def test_shapes_layouts_and_descriptions():
    assert array_bytes("bf16[16,2048,3072]{2,1,0:T(8,128)(2,1)}") == 16 * 2048 * 3072 * 2
    assert array_bytes("(f32[2], s32[])") == 0
    assert on_chip_memory("f32[4,128]{1,0:T(8,128)S(1)}")
    assert not on_chip_memory("f32[4,128]{1,0:T(8,128)}") and not on_chip_memory("f32[4]")
    assert describe("state.params['embed']", "parameter") == "argument state.params['embed']"
    what = describe("jit(train_step)/transpose(jvp(layer_3))/ffn/checkpoint/dot_general", "fusion")
    assert what == "backward: matmul result (recomputed) [layer_3/ffn]"
