"""Meshes over several TPU slices: only the ``data`` axis crosses the slow data-centre network.

Inside a slice chips talk over ICI (fast torus links); between slices over DCN (an order of
magnitude less bandwidth). Data parallelism exchanges gradients once per step, FSDP and tensor
parallelism exchange parameters and activations in every layer, so the ``data`` axis is split into
(slices x data per slice) and ``fsdp`` / ``tensor`` stay inside each slice. ``jax.make_mesh``
refuses multi-slice device lists; ``create_hybrid_device_mesh`` builds the layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.experimental import mesh_utils

from elm_jax.errors import ConfigError


def num_slices(devices: Sequence[jax.Device]) -> int:
    """Distinct TPU slices among ``devices`` (1 for GPUs / CPUs, which have no slice index)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def hybrid_mesh(shape: Sequence[int], axis_names: Sequence[str], devices: Sequence[jax.Device],
                axis_types: Sequence[jax.sharding.AxisType] | None = None) -> jax.sharding.Mesh:
    """A mesh of ``shape`` whose first axis (``data``) spans the slices, the others stay inside one.

    Raises ``ConfigError`` when the data axis is not a multiple of the slice count.
    """
    slices = num_slices(devices)
    data = shape[0]
    if data % slices:
        raise ConfigError(
            f"{len(devices)} devices in {slices} slices: mesh.{axis_names[0]}={data} must be a "
            f"multiple of {slices} (only data parallelism crosses slices); e.g. set "
            f"mesh.{axis_names[0]}={slices} and use the chips of each slice for fsdp / tensor")
    ici = (data // slices, *shape[1:])
    dcn = (slices,) + (1,) * (len(shape) - 1)
    kind = devices[0].device_kind
    grid = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, allow_split_physical_axes=kind in ("TPU v5 lite", "TPU v5e"))
    types = tuple(axis_types) if axis_types is not None else (
        (jax.sharding.AxisType.Auto,) * len(shape))
    return jax.sharding.Mesh(grid, tuple(axis_names), axis_types=types)
