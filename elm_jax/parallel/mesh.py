"""The device mesh ("data", "fsdp", "tensor"), logical-axis rules, and the shardings they imply.

Every parameter names its dimensions (``logical_axes`` metadata, e.g. ``("embed", "heads",
"head_dim")``) and so does every main activation; the rules table (``elm_jax.parallel.rules``:
``DEFAULT_RULES`` plus the config's ``mesh.rules``) maps those names to mesh axes. Pure data
parallelism, FSDP and FSDP + tensor parallelism are therefore config edits, never a code change.

OpenELM's layers have different head counts, so the tensor axis may divide some layers' heads and not
others. The rule: a module's head dimensions (``heads`` and ``kv_heads`` of one attention block) are
sharded together or not at all; a layer whose query or kv head count the tensor axis does not divide
keeps all its attention weights and attention activations replicated over ``tensor`` (its FFN
stays sharded).
``sharding_report`` lists those layers. Any other dimension that its mesh axes do not divide (e.g. an
odd vocabulary) is replicated likewise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from elm_jax.common_types import AXES, BATCH_AXES, DEFAULT_RULES, HEAD_AXES, Rules
from elm_jax.config import MeshConfig, ModelConfig
from elm_jax.errors import ConfigError
from elm_jax.parallel import multislice
from elm_jax.parallel.rules import axis_size, logical_to_spec, splits_evenly


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes with the -1 axis resolved; raises ``ConfigError`` when they do not fit."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ConfigError(
                f"mesh {dict(zip(AXES, sizes))}: the fixed axes ({fixed} devices) do not divide the "
                f"{num_devices} available devices; change mesh.data / mesh.fsdp / mesh.tensor")
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices but {num_devices} are "
            "available; set one mesh axis to -1 (= the remaining devices) or fix the sizes")
    return sizes[0], sizes[1], sizes[2]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """The ("data", "fsdp", "tensor") mesh over ``devices`` (default: all of them).

    Axes are ``Auto`` (the compiler propagates shardings from the ones we pin on parameters and
    batches), so model code needs no sharding annotations to be correct. Devices are laid out in
    jax's topology-aware order (torus position on TPU, device id elsewhere, which is
    process-major), so "tensor", the innermost axis, stays inside a host whenever it fits. Devices
    of several TPU slices get a hybrid mesh whose ``data`` axis alone crosses slices
    (``multislice``).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(AXES)
    if multislice.num_slices(devices) > 1:
        return multislice.hybrid_mesh(shape, AXES, devices, axis_types)
    # Not jax.make_mesh: it takes the per-host slice_index of GPU devices for TPU slices.
    return jax.sharding.Mesh(multislice.device_grid(shape, devices), AXES, axis_types=axis_types)


def single_device_mesh(device: jax.Device | None = None) -> jax.sharding.Mesh:
    """A 1x1x1 mesh (a one-device run is still a mesh run)."""
    return make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), [device or jax.devices()[0]])


def _head_groups_to_replicate(flat: Sequence[tuple[tuple, Any]], mesh: jax.sharding.Mesh,
                              rules: Rules) -> set[tuple]:
    """Parent modules (path prefixes) with a head dimension their tensor axes do not divide."""
    bad = set()
    for path, var in flat:
        for name, size in zip(var.get_metadata()["logical_axes"], var.shape):
            if name in HEAD_AXES and not splits_evenly(name, size, mesh, rules):
                bad.add(path[:-1])
    return bad


def _param_specs_flat(params: nnx.State, mesh: jax.sharding.Mesh, rules: Rules):
    flat = list(nnx.to_flat_state(params))
    bad = _head_groups_to_replicate(flat, mesh, rules)
    specs = {}
    for path, var in flat:
        replicate = HEAD_AXES if path[:-1] in bad else ()
        specs[path] = logical_to_spec(var.get_metadata()["logical_axes"], var.shape, mesh, rules,
                                      replicate=replicate)
    return specs, bad


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def param_specs(params: nnx.State, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> dict:
    """PartitionSpecs as a nested dict shaped like the pure parameter dict of ``params``.

    ``params`` is the model's (abstract) parameter state, whose variables carry ``logical_axes``
    metadata (``elm_jax.model.abstract_params``); this floor never builds a model itself.
    """
    return _unflatten(_param_specs_flat(params, mesh, rules)[0])


def param_shardings(params: nnx.State, mesh: jax.sharding.Mesh,
                    rules: Rules = DEFAULT_RULES) -> dict:
    """NamedShardings shaped like the pure parameter dict of ``params`` (see ``param_specs``)."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(params, mesh, rules),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def sharding_report(model_cfg: ModelConfig, params: nnx.State, mesh: jax.sharding.Mesh,
                    rules: Rules = DEFAULT_RULES) -> list[str]:
    """Human-readable notes on layers whose heads stay replicated over the tensor axis."""
    _, bad = _param_specs_flat(params, mesh, rules)
    shapes = model_cfg.layer_shapes()
    notes = []
    for path in sorted(bad, key=str):
        layer = path[1] if len(path) > 1 and path[0] == "layers" else None
        what = "/".join(map(str, path))
        if layer is not None:
            s = shapes[layer]
            what += f" ({s.q_heads} query / {s.kv_heads} kv heads)"
        notes.append(f"{what}: heads replicated, tensor axis of size {mesh.shape['tensor']} "
                     "does not divide them")
    return notes


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> NamedSharding:
    """Rows over ("data", "fsdp"), everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divides(mesh: jax.sharding.Mesh, global_batch: int, microbatches: int = 1) -> None:
    """Every microbatch must split evenly over the batch axes; say how to fix it otherwise."""
    shards = axis_size(mesh, BATCH_AXES)
    if global_batch % (shards * microbatches):
        raise ConfigError(
            f"train.batch_size={global_batch} with train.microbatches={microbatches} does not split "
            f"over the {shards} devices of the mesh's data x fsdp axes; make the batch size a "
            f"multiple of {shards * microbatches} or change mesh.data / mesh.fsdp")


class DataShard(NamedTuple):
    """The part of every global batch one process loads: shard ``index`` of ``count`` equal,
    disjoint sets of rows (what the data pipeline takes as process index and count)."""

    index: int
    count: int


def _rows_per_process(mesh: jax.sharding.Mesh) -> dict[int, tuple[int, ...]]:
    """The row blocks (positions along the flattened batch axes) each process's devices hold."""
    batch = [mesh.axis_names.index(a) for a in BATCH_AXES]
    grid = np.moveaxis(mesh.devices, batch, list(range(len(batch))))
    blocks = grid.reshape(math.prod(grid.shape[:len(batch)]), -1)
    held: dict[int, set[int]] = {}
    for block, devices in enumerate(blocks):
        for device in devices:
            held.setdefault(device.process_index, set()).add(block)
    return {process: tuple(sorted(rows)) for process, rows in held.items()}


@functools.lru_cache(maxsize=16)
def data_shard(mesh: jax.sharding.Mesh, process_index: int | None = None) -> DataShard:
    """Which rows of each global batch ``process_index`` (default: this process) loads.

    A batch's rows are split in blocks over the ("data", "fsdp") devices; a process holds the
    blocks of its devices, which need not be neighbours (on TPU pods jax's torus order interleaves
    hosts; ``make_array_from_process_local_data`` takes them in order). Processes whose devices
    differ only along "tensor" hold the same blocks: with a tensor axis across processes (one
    process per GPU, a tensor group wider than a TPU host) there are fewer data shards than
    processes, and the processes of one tensor group load the same shard. Raises
    ``ConfigError`` when the processes' blocks are not equal, disjoint shares of the batch.
    """
    process = jax.process_index() if process_index is None else process_index
    held = _rows_per_process(mesh)
    if process not in held:
        raise ConfigError(f"process {process} has no device in the mesh {dict(mesh.shape)}; build "
                          "the mesh over every process's devices")
    shards = sorted(set(held.values()))
    blocks = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if (len({len(s) for s in shards}) != 1
            or sorted(b for s in shards for b in s) != list(range(blocks))):
        raise ConfigError(
            f"mesh {dict(mesh.shape)}: the processes hold batch rows {sorted(held.items())} (row "
            "blocks along data x fsdp), not equal, disjoint shares that each process can load; "
            "give every process the same number of devices, or change the mesh axes")
    return DataShard(shards.index(held[process]), len(shards))


def global_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's rows (its ``data_shard``) -> one global array per field, sharded over the
    batch axes."""
    shards = data_shard(mesh).count
    out = {}
    for name, local in batch.items():
        local = np.asarray(local)
        shape = (local.shape[0] * shards, *local.shape[1:])
        out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, local.ndim), local,
                                                           shape)
    return out
