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
import numpy as np
from jax.experimental import mesh_utils

from elm_jax.errors import ConfigError

# TPU generations whose meshes may split a physical torus axis (as jax.make_mesh allows).
SPLIT_AXES_KINDS = ("TPU v5 lite", "TPU v5e")


def num_slices(devices: Sequence[jax.Device]) -> int:
    """Distinct TPU slices among ``devices``; 1 for GPUs and CPUs.

    Only TPU slices are joined by the slow data-centre network. XLA also gives GPU devices a
    ``slice_index``, one per host, but GPU hosts are one fabric (NVLink / InfiniBand), so a
    multi-node GPU run is one slice: full FSDP across nodes is a valid layout there.
    """
    if any(getattr(d, "platform", None) != "tpu" for d in devices):
        return 1
    return len({getattr(d, "slice_index", 0) for d in devices})


def device_grid(shape: Sequence[int], devices: Sequence[jax.Device]) -> np.ndarray:
    """``devices`` of one slice arranged as ``shape`` in jax's topology-aware order."""
    return mesh_utils.create_device_mesh(
        tuple(shape), list(devices),
        allow_split_physical_axes=devices[0].device_kind in SPLIT_AXES_KINDS)


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
    grid = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, allow_split_physical_axes=devices[0].device_kind in SPLIT_AXES_KINDS)
    types = tuple(axis_types) if axis_types is not None else (
        (jax.sharding.AxisType.Auto,) * len(shape))
    return jax.sharding.Mesh(grid, tuple(axis_names), axis_types=types)
