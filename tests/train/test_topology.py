"""TPU slice names -> chips, torus shape, hosts; libtpu's compile-only devices agree."""

import pytest

from elm_jax.errors import ConfigError
from elm_jax.train import topology


@pytest.mark.parametrize("name,chips,shape,hosts", [
    ("v5e-1", 1, (1, 1), 1),
    ("v5litepod-8", 8, (2, 4), 1),
    ("v5e-16", 16, (4, 4), 4),
    ("v5e-32", 32, (4, 8), 8),
    ("v5p-8", 4, (2, 2, 1), 1),  # v5p names count TensorCores: 2 per chip
    ("v5p-32", 16, (2, 2, 4), 4),
    ("v5p-128", 64, (4, 4, 4), 16),
    ("v6e-8", 8, (2, 4), 1),
])
def test_cloud_names_map_to_slices(name, chips, shape, hosts):
    t = topology.parse(name)
    assert (t.chips, t.shape, t.hosts) == (chips, shape, hosts)


@pytest.mark.parametrize("name,message", [
    ("v5p-12", "power of two"), ("v5p-3", "TensorCores"), ("tpu-8", "unknown TPU topology"),
    ("v5e", "unknown TPU topology"),
])
def test_bad_names_say_what_is_valid(name, message):
    with pytest.raises(ConfigError, match=message):
        topology.parse(name)


def test_libtpu_devices_match_the_slice_and_its_hosts():
    t = topology.parse("v5p-32", slices=2)
    devices = topology.devices(t)
    assert len(devices) == 32 == t.chips
    assert {d.process_index for d in devices} == set(range(t.hosts))
    assert {d.slice_index for d in devices} == {0, 1}
    assert devices[0].device_kind == "TPU v5"
