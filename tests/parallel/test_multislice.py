"""Multi-slice meshes: data parallelism across slices, fsdp and tensor inside each slice."""

import jax
import numpy as np
import pytest

from elm_jax.errors import ConfigError
from elm_jax.parallel.multislice import hybrid_mesh, num_slices
from elm_jax.train import topology

AXES = ("data", "fsdp", "tensor")


def test_only_the_data_axis_crosses_slices():
    devices = topology.devices(topology.parse("v5p-8", slices=2))  # 2 x 4 chips
    mesh = hybrid_mesh((4, 2, 1), AXES, devices)
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert mesh.shape == {"data": 4, "fsdp": 2, "tensor": 1}
    # Every fsdp / tensor group sits in one slice; the data axis holds slice 0 then slice 1.
    assert (slice_of == slice_of[:, :1, :1]).all()
    assert slice_of[:, 0, 0].tolist() == [0, 0, 1, 1]
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3


def test_a_data_axis_smaller_than_the_slice_count_is_refused():
    devices = topology.devices(topology.parse("v5p-8", slices=2))
    with pytest.raises(ConfigError, match="mesh.data=1 must be a multiple of 2"):
        hybrid_mesh((1, 8, 1), AXES, devices)


def test_cpu_devices_are_one_slice():
    assert num_slices(jax.devices()) == 1


def test_make_mesh_uses_the_hybrid_layout_for_several_slices():
    from elm_jax.config import MeshConfig
    from elm_jax.parallel.mesh import make_mesh

    devices = topology.devices(topology.parse("v5e-4", slices=2))
    mesh = make_mesh(MeshConfig(data=-1, fsdp=2, tensor=1), devices)
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert mesh.shape == {"data": 4, "fsdp": 2, "tensor": 1}
    assert slice_of[:, 0, 0].tolist() == [0, 0, 1, 1] and (slice_of == slice_of[:, :1, :1]).all()
    # Full FSDP across two slices would put per-layer all-gathers on DCN: refused with the fix.
    with pytest.raises(ConfigError, match="mesh.data=1 must be a multiple of 2"):
        make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1), devices)
