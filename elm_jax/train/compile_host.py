"""How much host RAM ``elm-plan``'s ahead-of-time compile needs, to warn before it is killed for it.

Every OpenELM layer has its own shapes, so the train step cannot loop over the layers: XLA compiles
each layer's forward, recompute and backward on its own (about 26 MiB of TPU code per 450M layer),
and libtpu's compile holds host memory in proportion to the layer count. It does not grow with the
batch, the microbatch loop or the attention implementation (measured with
``bench/compile_memory.py``; the figures are in docs/PLANNING.md). The line below fits the presets
compiled there: 270M 7.1 GiB, 450M 10.0-10.3 GiB, 1.1B 14.2 GiB, 3B 18.6 GiB (v5p-32). The slice
moves it too at the 3B's size (15.4 GiB for v5e-32, more than 21.5 for v5p-128), which this line
does not model: for the largest slices it is a low estimate.
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
            f"compile may be killed for memory. Free memory or plan on a larger machine.")
