"""The buffers alive at XLA's peak, read from its dumps of a real (libtpu, compile-only) compile."""

import jax
import jax.numpy as jnp

from elm_jax.train import topology
from elm_jax.train.buffers import compile_with_buffers, describe, placements


def _on_one_v5e(*shapes):
    """f32 arguments of these shapes on one (compile-only) v5e chip."""
    mesh = jax.sharding.Mesh(topology.devices(topology.parse("v5e-1")), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding) for shape in shapes]


def test_the_one_large_temporary_is_found_with_its_shape_and_origin():
    (x,) = _on_one_v5e((8192, 256))

    def two_products(x):
        scores = jnp.tanh(x @ x.T)  # [8192, 8192], read by two matmuls: it must be materialised
        return scores @ x + scores.T @ (2 * x)

    compiled, peak = compile_with_buffers(jax.jit(two_products).lower(x))
    temp = compiled.memory_analysis().temp_size_in_bytes
    largest = peak.temporaries[0]
    # The scores (f32, or bf16 when the compiler sees that the matmuls read bf16 anyway) are all
    # of XLA's temporary allocation but a few KiB.
    assert largest.shape.endswith("[8192,8192]")
    assert largest.bytes in (8192 * 8192 * 2, 8192 * 8192 * 4)
    assert largest.bytes <= temp < largest.bytes + 2 ** 20
    assert largest.describe().startswith("forward: matmul result")
    assert [a.op_name for a in peak.arguments] == ["x"] and peak.argument_bytes == 8192 * 256 * 4
    assert peak.grouped()[0][1:3] == (1, largest.bytes)
    # XLA's figure also counts a few KiB of semaphores and flags in other memory spaces
    assert temp - 2 ** 16 <= peak.allocated_bytes <= temp


def test_a_loop_carry_in_the_output_buffer_is_neither_argument_nor_temporary():
    xs, w = _on_one_v5e((4, 4096, 2048), (2048, 8192))

    def accumulate(xs, w):  # a gradient accumulated over a scan, like the train step's microbatches
        def body(total, x):
            return total + jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w) ** 2))(w), None
        return jax.lax.scan(body, jnp.zeros_like(w), xs)[0]

    compiled, peak = compile_with_buffers(jax.jit(accumulate).lower(xs, w))
    temp = compiled.memory_analysis().temp_size_in_bytes
    # XLA keeps the accumulator in the output's buffer: the loop body's parameter is not an
    # argument, and only the [4096, 8192] activation (f32, 128 MiB) is in the temporary allocation.
    assert sorted(a.op_name for a in peak.arguments) == ["w", "xs"]
    assert peak.argument_bytes == (4 * 4096 * 2048 + 2048 * 8192) * 4
    assert peak.temporaries[0].shape == "f32[4096,8192]" and "while" in peak.temporaries[0].op_name
    assert temp - 2 ** 16 <= peak.allocated_bytes <= temp
    assert peak.temporary_bytes <= temp < peak.temporary_bytes + 2 ** 20


ASSIGNMENT = """BufferAssignment:
allocation 0: size 512, constant:
 value: <45 constant.12..sunk @0> (size=512,offset=0): s32[]{:T(128)}
allocation 1: size 1024, parameter 0, shape |f32[256]| at ShapeIndex {}, maybe-live-out:
 value: <52 xs.1 @0> (size=1024,offset=0): f32[256]{0}
allocation 2: size 4096, output shape is |f32[1024]|, maybe-live-out:
 value: <74 while.1{1} (phi) @0> (size=4096,offset=0): f32[1024]{0:T(1024)}
allocation 3: size 8704, preallocated-temp:
 value: <44 fusion.2 @0> (size=8192,offset=512): f32[2048]{0:T(1024)}
 value: <48 tuple.15{} @0> (size=512,offset=0): (s32[]{:T(128)}, f32[1024]{0})
allocation 4: size 2048, color 1, preallocated-temp:
 value: <53 convert.1 @1> (size=2048,offset=0): bf16[1024]{0:T(1024)(128)(2,1)S(1)}
"""


def test_placements_by_allocation_and_memory_space():
    values, temporary = placements(ASSIGNMENT.splitlines())
    assert temporary == 8704  # the VMEM allocation (color 1) is not HBM
    assert values["xs.1{}"] == ("argument", 1024, "f32[256]{0}")  # donated, still an argument
    assert values["while.1{1}"][0] == "output" and values["fusion.2{}"][:2] == ("temporary", 8192)
    assert values["constant.12..sunk{}"][0] == "constant" and "convert.1{}" not in values


def test_descriptions():
    assert describe("state.params['embed']", "parameter") == "argument state.params['embed']"
    what = describe("jit(train_step)/transpose(jvp(layer_3))/ffn/checkpoint/dot_general", "fusion")
    assert what == "backward: matmul result (recomputed) [layer_3/ffn]"
