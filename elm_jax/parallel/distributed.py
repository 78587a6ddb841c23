"""Join a multi-host run before any array exists: TPU VM, SLURM, explicit coordinator, or nothing.

``initialize()`` is the first thing every entry point does. It decides *how* this process joins
(``resolve``, a pure function of the config and the environment, so it is testable anywhere) and
then hands the arguments to ``jax.distributed.initialize``, which does the joining. jax already
knows how to read SLURM and the TPU metadata server; this module only chooses which of them
applies, fills the gaps jax leaves (one process per *node* under SLURM, CPU collectives), and
does nothing at all for a single process.

Environment variables for the explicit mode (what ``launch/multihost.py`` exports):
``ELM_COORDINATOR_ADDRESS`` (or jax's ``JAX_COORDINATOR_ADDRESS``), ``ELM_NUM_PROCESSES``,
``ELM_PROCESS_ID``, ``ELM_LOCAL_DEVICE_IDS`` (comma-separated), ``ELM_DISTRIBUTED`` (the mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elm_jax.common_types import DISTRIBUTED_MODES
from elm_jax.config import DistributedConfig
from elm_jax.errors import ConfigError

log = logging.getLogger(__name__)

# Set by Cloud TPU VMs (GCE and GKE) or by a queued-resource / multislice launch.
TPU_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "TPU_ACCELERATOR_TYPE",
                "MEGASCALE_COORDINATOR_ADDRESS")
# What jax's own SLURM detection needs (jax/_src/clusters/slurm_cluster.py).
SLURM_ENV_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                  "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins: the mode chosen and the keyword arguments for jax."""

    mode: str  # "single", "explicit", "slurm" or "tpu"
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reason: str = ""

    @property
    def multi_process(self) -> bool:
        return self.mode != "single"


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    if not value.lstrip("-").isdigit():
        raise ConfigError(f"environment variable {name}={value!r} is not an integer")
    return int(value)


def _env_ids(environ: Mapping[str, str], name: str) -> tuple[int, ...]:
    value = environ.get(name, "").strip()
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={value!r} must be comma-separated device ids, e.g. 0,1,2,3"
        ) from None


def _explicit(cfg: DistributedConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    """Coordinator / count / id / device ids from the config, else from the ``ELM_*`` variables."""
    address = (cfg.coordinator_address or environ.get("ELM_COORDINATOR_ADDRESS")
               or environ.get("JAX_COORDINATOR_ADDRESS") or "")
    count = cfg.num_processes or _env_int(environ, "ELM_NUM_PROCESSES") or 0
    index = cfg.process_id if cfg.process_id >= 0 else _env_int(environ, "ELM_PROCESS_ID")
    ids = cfg.local_device_ids or _env_ids(environ, "ELM_LOCAL_DEVICE_IDS")
    return dict(coordinator_address=address, num_processes=count, process_id=index,
                local_device_ids=ids)


def _check_explicit(values: Mapping[str, Any]) -> None:
    """All three of address, count and id, consistent; else name what is missing."""
    unset = {"coordinator_address": "", "num_processes": 0, "process_id": None}
    missing = [name for name, empty in unset.items() if values[name] == empty]
    if missing:
        raise ConfigError(
            "explicit multi-process launch needs " + ", ".join(missing) + ": set "
            + ", ".join(f"--config.distributed.{m}" for m in missing)
            + " or the matching ELM_* environment variables (ELM_COORDINATOR_ADDRESS=host:port, "
            "ELM_NUM_PROCESSES, ELM_PROCESS_ID)"
        )
    host, _, port = values["coordinator_address"].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"coordinator address {values['coordinator_address']!r} must be "
                          "host:port of process 0, e.g. 10.0.0.2:8476")
    if not 0 <= values["process_id"] < values["num_processes"]:
        raise ConfigError(f"process id {values['process_id']} is outside "
                          f"[0, {values['num_processes']}) processes")


def slurm_tasks_per_node(environ: Mapping[str, str]) -> list[int]:
    """Task counts per node from SLURM's compressed form, e.g. ``"8(x2),4"`` -> [8, 8, 4]."""
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "")
    counts: list[int] = []
    for part in filter(None, spec.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ConfigError(f"cannot parse SLURM tasks per node {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _node_device_ids(environ: Mapping[str, str]) -> tuple[int, ...]:
    """Every accelerator of this node, for one process per node (jax would take only one)."""
    for name in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        visible = [v for v in environ.get(name, "").split(",") if v.strip()]
        if visible:  # jax numbers the visible devices 0..n-1
            return tuple(range(len(visible)))
    gpus = _env_int(environ, "SLURM_GPUS_ON_NODE")
    return tuple(range(gpus)) if gpus else ()


def _slurm(cfg: DistributedConfig, environ: Mapping[str, str]) -> Launch:
    """jax reads SLURM itself; one task per node means that task drives all the node's devices."""
    missing = [v for v in SLURM_ENV_VARS if v not in environ]
    if missing:
        raise ConfigError(f"distributed.mode='slurm' but {', '.join(missing)} are not set: run "
                          "under srun (launch/slurm.sbatch), not plain sbatch or salloc")
    kwargs: dict[str, Any] = dict(cluster_detection_method="slurm")
    per_node = slurm_tasks_per_node(environ)
    ids = cfg.local_device_ids or _env_ids(environ, "ELM_LOCAL_DEVICE_IDS")
    if ids:
        kwargs["local_device_ids"] = list(ids)
        how = f"devices {list(ids)} per process (configured)"
    elif per_node and max(per_node) == 1:
        ids = _node_device_ids(environ)
        if ids:
            kwargs["local_device_ids"] = list(ids)
        how = "one process per node driving all its devices"
        if not ids:
            log.warning("one SLURM task per node but no CUDA_VISIBLE_DEVICES / SLURM_GPUS_ON_NODE: "
                        "jax will give each process one GPU; request GPUs with --gpus-per-node")
    else:
        how = "one process per device (SLURM_LOCALID picks the device)"
    return Launch("slurm", kwargs, f"SLURM job {environ['SLURM_JOB_ID']}, "
                  f"{environ['SLURM_NTASKS']} tasks, {how}")


GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips appear as PCI devices of this vendor


def _on_tpu_vm(environ: Mapping[str, str]) -> bool:
    """A Cloud TPU VM: its environment variables, or a TPU chip on the PCI bus."""
    if any(environ.get(v) for v in TPU_ENV_VARS):
        return True
    for vendor in Path("/sys/bus/pci/devices").glob("*/vendor"):
        with contextlib.suppress(OSError):
            if vendor.read_text().strip() == GOOGLE_PCI_VENDOR:
                return True
    return False


def _tpu_single_host(environ: Mapping[str, str]) -> bool:
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return bool(hosts) and "," not in hosts and not environ.get("MEGASCALE_COORDINATOR_ADDRESS")


def resolve(cfg: DistributedConfig | None = None,
            environ: Mapping[str, str] | None = None) -> Launch:
    """Choose how to join, from the config and the environment; starts nothing."""
    cfg = cfg or DistributedConfig()
    environ = os.environ if environ is None else environ
    mode = environ.get("ELM_DISTRIBUTED", "") if cfg.mode == "auto" else cfg.mode
    mode = mode or "auto"
    if mode not in DISTRIBUTED_MODES:
        raise ConfigError(f"ELM_DISTRIBUTED={mode!r} is invalid: expected one of "
                          f"{', '.join(DISTRIBUTED_MODES)}")
    values = _explicit(cfg, environ)
    timeout = dict(initialization_timeout=cfg.initialization_timeout)

    if mode == "single":
        return Launch("single", reason="distributed.mode='single'")
    explicit_given = bool(values["num_processes"] or values["coordinator_address"])
    if mode == "explicit" or (mode == "auto" and explicit_given):
        if mode == "auto" and values["num_processes"] == 1:
            return Launch("single", reason="num_processes=1")
        _check_explicit(values)
        kwargs = {k: v for k, v in values.items() if k != "local_device_ids"}
        # Every value is known: jax must not let a cluster it detects override them.
        kwargs.update(cluster_detection_method="deactivate", **timeout)
        if values["local_device_ids"]:
            kwargs["local_device_ids"] = list(values["local_device_ids"])
        return Launch("explicit", kwargs, f"coordinator {values['coordinator_address']}, process "
                      f"{values['process_id']} of {values['num_processes']}")
    if mode == "slurm" or (mode == "auto" and all(v in environ for v in SLURM_ENV_VARS)):
        if mode == "auto" and int(environ["SLURM_NTASKS"]) == 1:
            return Launch("single", reason="SLURM job with one task")
        launch = _slurm(cfg, environ)
        return dataclasses.replace(launch, kwargs={**launch.kwargs, **timeout})
    if mode == "tpu" or (mode == "auto" and _on_tpu_vm(environ)):
        if mode == "auto" and _tpu_single_host(environ):
            return Launch("single", reason="TPU VM with one worker")
        # jax reads the worker list, this worker's id and the slices from the TPU metadata.
        return Launch("tpu", timeout, "Cloud TPU VM (workers from the TPU metadata server)")
    return Launch("single", reason="no coordinator, SLURM job or TPU VM found")


def _use_cpu_collectives() -> None:
    """Cross-process CPU collectives need gloo (the default on recent jax; set it to be sure)."""
    import jax

    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # option renamed or removed on a newer jax
        log.info("jax_cpu_collectives_implementation not available; using jax's default")


def initialize(cfg: DistributedConfig | None = None,
               environ: Mapping[str, str] | None = None) -> Launch:
    """Join the run this process belongs to (no-op for a single process); call before any array.

    Safe to call twice: a second call sees jax already initialised and returns.
    """
    import jax

    launch = resolve(cfg, environ)
    if not launch.multi_process:
        log.info("single process: %s", launch.reason)
        return launch
    if jax.distributed.is_initialized():
        return launch
    _use_cpu_collectives()
    log.info("joining multi-process run (%s): %s", launch.mode, launch.reason)
    jax.distributed.initialize(**launch.kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return launch

