"""How much host RAM ``elm-plan``'s ahead-of-time compile needs, to warn before it is killed for it.

libtpu's compile holds about 19x the size of the TPU program it generates (14.2 GiB for the 1.1B's
0.75 GiB of code, 15.4 / 18.6 / 26.0 GiB for the 3B's 0.80 / 0.99 / 1.33 GiB on v5e-32, v5p-32 and
v5p-128). Every OpenELM layer has its own shapes, so the train step cannot loop over the layers:
XLA compiles each layer's forward, recompute and backward on its own, and the program grows with
the layer count (measured with ``bench/compile_memory.py``; figures in docs/PLANNING.md). The batch,
the microbatch loop and the attention implementation barely move it. The line below fits
the presets compiled with FSDP over at most 16 chips: 270M 7.1 GiB, 450M 10.0-10.3 GiB, 1.1B
14.2 GiB, 3B 18.6 GiB (v5p-32). On one kind of chip a wider FSDP group makes every layer's
collectives, and so the program, larger (the 3B on v5p-128, FSDP over 64 chips: 26.0 GiB),
which this line does not model; FSDP over 16 of those 64 chips with 4 data-parallel groups
compiles in 14.8 GiB.
"""

from __future__ import annotations

from pathlib import Path

from elm_jax.config import Config
from elm_jax.train.topology import GIB

COMPILE_BASE_BYTES = int(0.9 * GIB)  # jax, libtpu and a one-layer step
COMPILE_BYTES_PER_LAYER = int(0.47 * GIB)


def compile_host_bytes(config: Config) -> int:
    """About what the compile of ``config``'s train step holds in host RAM at its peak."""
    return COMPILE_BASE_BYTES + config.model.num_layers * COMPILE_BYTES_PER_LAYER


def available_host_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The memory the kernel says a new process can use (``MemAvailable``); None where unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_memory_warning(config: Config, available: int | None) -> str | None:
    """A warning when the compile likely needs more host RAM than ``available``; else None."""
    need = compile_host_bytes(config)
    if available is None or need <= available:
        return None
    return (f"warning: compiling the {config.model.num_layers}-layer train step needs about "
            f"{need / GIB:.0f} GiB of host RAM ({COMPILE_BYTES_PER_LAYER / GIB:.2f} GiB per layer, "
            f"docs/PLANNING.md) and this machine has {available / GIB:.1f} GiB available: the "
            f"compile may be killed for memory. Free memory, plan on a larger machine, or on a "
            f"large slice shard over fewer chips (e.g. --config.mesh.fsdp=16 "
            f"--config.mesh.data=-1): the per-chip program, and its compile, shrink with the "
            f"FSDP group.")
