"""The kernels build for real accelerators from this CPU-only machine.

- The Triton GPU kernels lower for CUDA (forward, dQ and dK/dV) with ``lowering_platforms``.
- The Mosaic TPU kernels compile through libtpu for TPU topologies, inside a sharded ``jit``
  where ``elm_jax.kernels.attention`` wraps them in ``shard_map`` (forward and backward).
  CI installs libtpu (the ``tpu`` extra), so there this test fails rather than skip.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from elm_jax.kernels import attention
from elm_jax.kernels.flash_gpu import flash_attention_gpu

# Several pytest-xdist workers (and other test processes) load libtpu for AOT compiles at once;
# without this, every process but the first fails on libtpu's lockfile. Set at collection, before
# any test loads libtpu in this process.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

TRITON_CALL = "__gpu$xla.gpu.triton"
MOSAIC_CALL = "tpu_custom_call"
H100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132,
                                   platform="gpu")


def _loss_and_grads(kernel, segments: bool):
    def loss(q, k, v, segment_ids):
        out = kernel(q, k, v, segment_ids if segments else None)
        return out.astype(jnp.float32).sum()

    return jax.value_and_grad(loss, argnums=(0, 1, 2))


@pytest.mark.parametrize("head_dim,heads,kv_heads,seq,causal,segments", [
    (64, 12, 3, 2048, True, False),
    (128, 8, 8, 1000, False, True),
])
def test_gpu_kernel_lowers_for_cuda(head_dim, heads, kv_heads, seq, causal, segments):
    q = jax.ShapeDtypeStruct((2, seq, heads, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, seq, kv_heads, head_dim), jnp.bfloat16)
    ids = jax.ShapeDtypeStruct((2, seq), jnp.int32)
    step = _loss_and_grads(lambda q, k, v, s: flash_attention_gpu(q, k, v, s, causal=causal),
                           segments)
    # jax >= 0.11 reads the target GPU off the abstract mesh when no GPU is attached.
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("gpu",),
                                                                  abstract_device=H100)):
        lowered = jax.jit(step).trace(q, kv, kv, ids).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert text.count(TRITON_CALL) == 3  # forward, dQ, dK/dV


def _libtpu_or_skip():
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("CI"):
            pytest.fail("libtpu is missing in CI: install the 'tpu' extra (pip install -e '.[tpu]')")
        pytest.skip("libtpu is not installed (pip install -e '.[tpu]'); TPU compile not checked")


TOPOLOGIES = {"v5e:2x2": (2, 2, 1), "v5p:2x2x1": (2, 2, 1)}


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("heads,kv_heads,head_dim,seq,segments", [
    (16, 4, 128, 1024, False),  # heads split over "tensor"
    (12, 3, 64, 1000, True),  # 3 kv heads do not split over tensor=2: heads replicated
])
def test_tpu_kernel_compiles_sharded(topology, heads, kv_heads, head_dim, seq, segments):
    _libtpu_or_skip()
    from jax.experimental import topologies

    topo = topologies.get_topology_desc(
        platform="tpu", topology_name=topology, chip_config_name="default",
        chips_per_host_bounds=TOPOLOGIES[topology], num_slices=1)
    devices = np.asarray(topo.devices)
    mesh = jax.sharding.Mesh(devices.reshape(len(devices) // 2, 1, 2), ("data", "fsdp", "tensor"))
    batch = 2 * len(devices)
    shard = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    q = jax.ShapeDtypeStruct((batch, seq, heads, head_dim), jnp.bfloat16, sharding=shard)
    kv_shard = shard if kv_heads % 2 == 0 else NamedSharding(mesh, P(("data", "fsdp")))
    kv = jax.ShapeDtypeStruct((batch, seq, kv_heads, head_dim), jnp.bfloat16, sharding=kv_shard)
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32,
                               sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    step = _loss_and_grads(
        lambda q, k, v, s: attention(q, k, v, segment_ids=s, impl="pallas"), segments)
    with jax.set_mesh(mesh):
        lowered = jax.jit(step).trace(q, kv, kv, ids).lower()
    text = lowered.as_text()
    assert text.count(MOSAIC_CALL) == 3  # forward, dQ, dK/dV
    assert "sdy.manual_computation" in text or "shard_map" in text
    compiled = lowered.compile()
    assert compiled.memory_analysis() is not None


def test_tpu_softmax_statistics_are_not_lane_padded():
    """The log-sum-exp kept from the forward to the backward (and ``delta``) are ``[1, seq]`` rows.

    As ``[seq, 1]`` columns, TPU tiling ``T(8,128)`` pads every float32 to 128 lanes: 128x the
    statistics' size, held across the whole backward (two 128 MiB buffers per layer at batch 8,
    seq 2048, 16 heads). The compiled program must keep no such column.
    """
    _libtpu_or_skip()
    import re

    from jax.experimental import topologies

    topo = topologies.get_topology_desc(
        platform="tpu", topology_name="v5e:1x1", chip_config_name="default",
        chips_per_host_bounds=(1, 1, 1), num_slices=1)
    mesh = jax.sharding.Mesh(np.asarray(topo.devices).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    batch, seq, heads = 2, 1024, 8
    replicated = NamedSharding(mesh, P())
    q = jax.ShapeDtypeStruct((batch, seq, heads, 64), jnp.bfloat16, sharding=replicated)
    kv = jax.ShapeDtypeStruct((batch, seq, 2, 64), jnp.bfloat16, sharding=replicated)
    step = _loss_and_grads(lambda q, k, v, s: attention(q, k, v, impl="pallas"), segments=False)
    with jax.set_mesh(mesh):
        text = jax.jit(step).trace(q, kv, kv, None).lower().compile().as_text()
    tiled_f32 = set(re.findall(r"f32\[([0-9,]+)\]\{[^}]*T\(", text))
    assert f"{batch},{heads},1,{seq}" in tiled_f32  # the statistics, as rows
    assert f"{batch},{heads},{seq},1" not in tiled_f32, "a lane-padded statistics column"
