"""Which rows each process loads, and which devices form one slice, on clusters we can only fake.

The devices below are plain objects with the attributes XLA gives real ones (``platform``,
``process_index``, ``slice_index``, ``device_kind``); the expected shards are hand-computed tables.
"""

import jax
import numpy as np
import pytest

from elm_jax.config import MeshConfig, from_config_dict
from elm_jax.errors import ConfigError
from elm_jax.parallel.mesh import DataShard, data_shard, make_mesh
from elm_jax.parallel.multislice import num_slices
from elm_jax.presets import openelm_config
from elm_jax.train import topology


class FakeDevice:
    def __init__(self, id, process_index, *, platform="gpu", slice_index=None,
                 device_kind="NVIDIA H100 80GB HBM3"):
        self.id, self.process_index, self.platform = id, process_index, platform
        # XLA numbers GPU "slices" by host: every device of a host shares its host's index.
        self.slice_index = process_index if slice_index is None else slice_index
        self.device_kind = device_kind

    def __repr__(self):
        return f"{self.platform}{self.id}@p{self.process_index}"


def gpus(hosts, per_host, processes_per_host=1):
    """``hosts`` nodes of ``per_host`` GPUs, each node's GPUs split among its processes."""
    per_process = per_host // processes_per_host
    return [FakeDevice(i, i // per_process, slice_index=i // per_host)
            for i in range(hosts * per_host)]


def shards(mesh, processes):
    return [tuple(data_shard(mesh, p)) for p in range(processes)]


def test_two_gpu_nodes_are_one_slice_so_the_3b_presets_full_fsdp_works():
    devices = gpus(hosts=2, per_host=8)
    assert len({d.slice_index for d in devices}) == 2 and num_slices(devices) == 1
    mesh_cfg = from_config_dict(openelm_config("3b")).mesh  # data=1, fsdp=-1
    mesh = make_mesh(mesh_cfg, devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 16, "tensor": 1}
    assert [d.id for d in mesh.devices.flat] == list(range(16))  # node 0's GPUs, then node 1's
    assert shards(mesh, 2) == [(0, 2), (1, 2)]  # each node loads the rows of its 8 GPUs


def test_tpu_slices_are_still_told_apart():
    devices = [FakeDevice(i, i // 4, platform="tpu", slice_index=i // 8, device_kind="TPU v5")
               for i in range(16)]
    assert num_slices(devices) == 2


@pytest.mark.parametrize("mesh_cfg, expected", [
    # one process per GPU, 2 nodes x 8: pure data parallelism, every process its own rows
    (MeshConfig(data=-1, fsdp=1, tensor=1), [(p, 16) for p in range(16)]),
    # tensor pairs: processes 2k and 2k+1 hold the same rows (the crash of issue 18 item 3)
    (MeshConfig(data=-1, fsdp=1, tensor=2), [(p // 2, 8) for p in range(16)]),
    # fsdp 4 x tensor 4: the 4 processes of a tensor group share one of 4 row blocks
    (MeshConfig(data=1, fsdp=4, tensor=4), [(p // 4, 4) for p in range(16)]),
    # a tensor axis as wide as a node: each node's 8 processes load one shard
    (MeshConfig(data=2, fsdp=1, tensor=8), [(p // 8, 2) for p in range(16)]),
])
def test_one_process_per_gpu_loads_the_rows_its_device_holds(mesh_cfg, expected):
    mesh = make_mesh(mesh_cfg, gpus(hosts=2, per_host=8, processes_per_host=8))
    assert shards(mesh, 16) == expected


def test_a_tensor_axis_across_all_processes_means_one_shard():
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=-1), gpus(hosts=2, per_host=8))
    assert shards(mesh, 2) == [(0, 1), (0, 1)]


def hand_mesh(devices, shape, order=None):
    """A mesh of ``devices`` (in ``order``) laid out as ``shape`` by hand, not in jax's order."""
    order = range(len(devices)) if order is None else order
    grid = np.array([devices[i] for i in order], dtype=object).reshape(shape)
    return jax.sharding.Mesh(grid, ("data", "fsdp", "tensor"))


def test_a_process_may_hold_rows_that_are_not_neighbours():
    """As on TPU pods, where jax's torus order interleaves the hosts along the batch axes."""
    devices = gpus(hosts=1, per_host=4, processes_per_host=2)  # process 0: GPUs 0, 1
    mesh = hand_mesh(devices, (1, 4, 1), [0, 2, 1, 3])  # process 0 holds row blocks 0 and 2
    assert shards(mesh, 2) == [(0, 2), (1, 2)]


def test_shards_follow_the_mesh_order_not_the_process_index():
    devices = gpus(hosts=2, per_host=2, processes_per_host=2)  # processes 0..3, one GPU each
    assert shards(hand_mesh(devices, (1, 4, 1), [0, 2, 1, 3]), 4) == [(0, 4), (2, 4), (1, 4), (3, 4)]


def test_unequal_shares_of_the_rows_are_refused():
    # process 0 has two GPUs, processes 1 and 2 one each; fsdp=2 x tensor=2: process 0 holds
    # both row blocks, the others one each
    devices = [FakeDevice(0, 0), FakeDevice(1, 0), FakeDevice(2, 1), FakeDevice(3, 2)]
    mesh = hand_mesh(devices, (1, 2, 2), [0, 2, 1, 3])
    with pytest.raises(ConfigError, match="not equal, disjoint shares"):
        data_shard(mesh, 0)


def test_tpu_pod_hosts_each_load_their_own_quarter():
    """A v5p-32 (4 hosts x 4 chips, libtpu's topology): jax's torus order gives each host rows
    that are not neighbours; still four equal, disjoint shards, one per host."""
    devices = topology.devices(topology.parse("v5p-32"))
    mesh = make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1), devices)
    hosts = sorted({d.process_index for d in devices})
    assert hosts == [0, 1, 2, 3]
    assert sorted(shards(mesh, 4)) == [(0, 4), (1, 4), (2, 4), (3, 4)]
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=4), devices)  # a tensor group per host
    assert sorted(shards(mesh, 4)) == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_one_process_with_every_device_loads_everything():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert data_shard(mesh) == DataShard(0, 1)
