"""The host-RAM estimate elm-plan warns with, against the compiles measured in docs/PLANNING.md."""

import pytest

from elm_jax.config import from_config_dict
from elm_jax.presets import openelm_config
from elm_jax.train import compile_host
from elm_jax.train.topology import GIB

# Peak host RAM of the preset compiles (libtpu AOT on the 2-core CI machine, docs/PLANNING.md).
MEASURED_GIB = {"270m": 7.1, "450m": 10.0, "1_1b": 14.2, "3b": 18.6}


@pytest.mark.parametrize("size", sorted(MEASURED_GIB))
def test_estimate_is_near_the_measured_compiles(size):
    estimate = compile_host.compile_host_bytes(from_config_dict(openelm_config(size))) / GIB
    assert abs(estimate - MEASURED_GIB[size]) / MEASURED_GIB[size] < 0.2


def test_available_memory_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    2097152 kB\n")
    assert compile_host.available_host_bytes(meminfo) == 2 * GIB
    assert compile_host.available_host_bytes(tmp_path / "missing") is None
    meminfo.write_text("MemTotal: 1 kB\n")
    assert compile_host.available_host_bytes(meminfo) is None


def test_warns_only_when_the_compile_would_not_fit_the_host():
    config = from_config_dict(openelm_config("3b"))
    need = compile_host.compile_host_bytes(config)
    assert compile_host.host_memory_warning(config, need + GIB) is None
    assert compile_host.host_memory_warning(config, None) is None
    warning = compile_host.host_memory_warning(config, 8 * GIB)
    assert "36-layer" in warning and "8.0 GiB available" in warning
    assert f"about {need / GIB:.0f} GiB" in warning
    assert "--config.mesh.fsdp=16" in warning  # the remedy on a large slice
