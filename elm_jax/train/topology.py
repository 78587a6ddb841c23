"""TPU slices by their Cloud name (``v5p-32``, ``v5e-8``, ``v6e-8``): chips, torus shape, hosts, HBM.

``devices(topology)`` returns compile-only TPU devices from libtpu (no TPU needed), so a train step
can be compiled ahead of time on a CPU for a pod it will later run on. Chip figures: peak dense
bf16 FLOP/s as published; HBM capacity in GiB, consistent with the "available HBM" libtpu's
compiler reports (15.75 / 95.74 / 31.25 GiB usable of 16 / 96 / 32 on v5e / v5p / v6e).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from elm_jax.common_types import peak_flops_of
from elm_jax.errors import ConfigError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation."""

    name: str
    libtpu_name: str  # the prefix libtpu's topology names use
    hbm_bytes: int
    peak_bf16_flops: float
    cores_per_chip_in_name: int  # v5p-32 counts TensorCores (2 per chip); v5e-32 counts chips
    torus_dims: int
    max_chips_per_host: int  # a slice this small is one host with all its chips


CHIPS = {
    "v5e": Chip("v5e", "v5e", 16 * GIB, peak_flops_of("TPU v5e"), 1, 2, 8),
    "v5p": Chip("v5p", "v5p", 96 * GIB, peak_flops_of("TPU v5p"), 2, 3, 4),
    "v6e": Chip("v6e", "v6e", 32 * GIB, peak_flops_of("TPU v6e"), 1, 2, 8),
}
ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}
CHIPS_PER_HOST = 4  # every multi-host slice of these generations: 2x2 chips per host


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice (or several, over DCN) to plan for."""

    name: str
    chip: Chip
    shape: tuple[int, ...]  # chips along each torus axis
    slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.slices

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """Chips per host along each axis (what libtpu needs to number processes)."""
        if self.chips_per_slice <= self.chip.max_chips_per_host:
            return tuple((*self.shape, 1, 1)[:3])  # type: ignore[return-value]
        return (2, 2, 1)

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.host_bounds)

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.libtpu_name}:{'x'.join(map(str, self.shape))}"

    def __str__(self) -> str:
        return self.name if self.slices == 1 else f"{self.slices}x{self.name}"


def torus_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The standard slice shape for a power-of-two chip count: as square / cubic as possible,
    e.g. 16 chips -> (4, 4) on a 2D torus, (2, 2, 4) on a 3D torus; 4 chips in 3D -> (2, 2, 1)."""
    shape = [1] * dims
    while math.prod(shape) < chips:
        shape[shape.index(min(shape))] *= 2
    ordered = sorted(s for s in shape if s > 1) + [1] * shape.count(1)
    return tuple(ordered)


def parse(name: str, slices: int = 1) -> Topology:
    """``v5p-32`` / ``v5e-8`` / ``v5litepod-16`` / ``v6e-8`` -> the slice it names.

    As in Cloud TPU names, the number counts TensorCores for v5p (two per chip) and chips for v5e
    and v6e. ``slices`` > 1 plans a multi-slice run (data parallel over DCN).
    """
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    generation = ALIASES.get(match.group(1), match.group(1)) if match else None
    if not match or generation not in CHIPS:
        raise ConfigError(f"unknown TPU topology {name!r}: expected <generation>-<size> with "
                          f"generation one of {', '.join(CHIPS)} (e.g. v5p-32, v5e-8, v6e-8)")
    chip = CHIPS[generation]
    count, rest = divmod(int(match.group(2)), chip.cores_per_chip_in_name)
    if rest or count < 1 or count & (count - 1):
        unit = "TensorCores (2 per chip)" if chip.cores_per_chip_in_name == 2 else "chips"
        examples = ", ".join(f"{generation}-{chip.cores_per_chip_in_name * 2 ** k}" for k in range(1, 6))
        raise ConfigError(f"{name!r}: the size counts {unit} and must be a power of two chips, "
                          f"e.g. {examples}")
    if slices < 1:
        raise ConfigError(f"number of slices must be at least 1, got {slices}")
    return Topology(f"{generation}-{int(match.group(2))}", chip,
                    torus_shape(count, chip.torus_dims), slices)


def for_chips(chip: Chip, chips: int) -> Topology:
    """The slice of ``chip`` with ``chips`` chips (``chips`` a power of two)."""
    return parse(f"{chip.name}-{chips * chip.cores_per_chip_in_name}")


def devices(topology: Topology) -> list:
    """Compile-only devices of the slice(s), from libtpu (installed with the ``tpu`` extra).

    Several processes may plan at once: libtpu is told not to lock the (absent) TPU.
    """
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topology.libtpu_name, chip_config_name="default",
            chips_per_host_bounds=topology.host_bounds, num_slices=topology.slices)
    except RuntimeError as err:
        if "not installed" in str(err):
            raise ConfigError("planning for TPUs needs libtpu: pip install 'elm_jax[tpu]' "
                              "(jax[tpu] at the installed jax version)") from err
        raise
    return list(desc.devices)
