"""Orbax checkpoints of a run: params, the training state, the data iterator state and the config.

Each ``run_dir/checkpoints/<step>/`` holds ``params/ train/ data/ config/`` (orbax
``CompositeCheckpointHandler``); the run directory's layout is ``elm_jax.rundir``'s. ``train`` is
whatever the trainer keeps besides the parameters (step counter, optimizer state), so readers that
only need the weights (``load_model``) never import the training code.

Saves are asynchronous and atomic (orbax writes ``*.orbax-checkpoint-tmp*`` and renames), so a
process killed mid-save leaves no step directory and the previous checkpoint stays the latest. A
step directory that is damaged afterwards (e.g. truncated files) fails to restore: it is moved to
``run_dir/corrupt_checkpoints/`` with a warning (never deleted) and the next older one is used.
Restoring onto another mesh or device count reshards (the abstract target carries the new
shardings). The data iterator's state is per process (grain's orbax handler), so a run resumes with
the same number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from elm_jax.common_types import CHECKPOINTS_DIR, CORRUPT_DIR
from elm_jax.config import Config, rules_from_config
from elm_jax.errors import CheckpointError
from elm_jax.model import OpenELM, abstract_model, abstract_params
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.rundir import config_json, read_run_config

log = logging.getLogger(__name__)


class FrozenIteratorState:
    """The iterator state captured at save time, in the shape grain's orbax handler writes.

    The handler may run after ``save`` returns (async), when the live iterator has moved on.
    """

    def __init__(self, iterator: Any):
        self._state = json.dumps(iterator.get_state(), indent=4).encode()

    def get_state(self) -> bytes:
        return self._state


def _process_files(step_dir: Path) -> list[str]:
    return sorted(p.name for p in (step_dir / "data").glob("process_*-of-*.json"))


class Checkpointer:
    """An orbax ``CheckpointManager`` over ``run_dir/checkpoints`` with this project's items."""

    def __init__(self, run_dir: str | os.PathLike, config: Config, *, read_only: bool = False):
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / CHECKPOINTS_DIR
        self.config = config
        train = config.train
        if read_only:  # a reader: never creates, cleans or deletes anything (and orbax's own
            # read_only mode would warn about every option it overrides)
            options = ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=train.keep_checkpoints, keep_period=train.keep_every or None,
                create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True)
        if read_only and not self.directory.exists():
            raise CheckpointError(f"{self.directory} not found; {run_dir} holds no checkpoints")
        self.manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params: Any, train: Mapping[str, Any],
             data_iterator: Any | None = None) -> None:
        """Start an async save of ``params`` and the trainer's ``train`` items at ``step``; returns
        once the arrays are copied off the devices, while files are written in the background."""
        items = {"params": ocp.args.StandardSave(params),
                 "train": ocp.args.StandardSave(dict(train)),
                 "config": ocp.args.JsonSave(json.loads(config_json(self.config)))}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(FrozenIteratorState(data_iterator))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def _check_data_state(self, step: int) -> None:
        files = _process_files(self.directory / str(step))
        want = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if files and want not in files:
            raise CheckpointError(
                f"checkpoint step {step} holds the data iterator state of "
                f"{files[0].split('-of-')[1][:-5]} process(es) ({', '.join(files)}), but this run has "
                f"{jax.process_count()}; resume with the same number of processes (the model "
                "state itself reshards onto any mesh)")

    def reached_preemption(self, step: int) -> bool:
        """Whether every process agrees that a preemption notice arrived (multi-host runs)."""
        return bool(self.manager.reached_preemption(step))

    def _restore_step(self, step: int, abstract_params: Any, abstract_train: Mapping[str, Any],
                      data_iterator: Any | None) -> tuple[Any, dict[str, Any]]:
        items = {"params": ocp.args.StandardRestore(abstract_params),
                 "train": ocp.args.StandardRestore(dict(abstract_train))}
        has_data = bool(_process_files(self.directory / str(step)))
        if data_iterator is not None and has_data:
            self._check_data_state(step)
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["params"], dict(restored["train"])

    def restore_latest(self, abstract_params: Any, abstract_train: Mapping[str, Any],
                       data_iterator: Any | None = None) -> tuple[Any, dict[str, Any]] | None:
        """``(params, train)`` of the newest checkpoint that restores, resharded onto the abstract
        targets' shardings (None if the run has none); ``data_iterator`` is restored in place.
        Newer steps that fail while an older one works are moved aside as corrupt."""
        found = self._restore_newest(
            lambda step: self._restore_step(step, abstract_params, abstract_train, data_iterator),
            self.all_steps(), set_aside=True)
        return None if found is None else found[0]

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """Parameters only (for inference / export) of the newest restorable checkpoint or ``step``."""
        steps = self.all_steps()
        if step is not None and step not in steps:
            raise CheckpointError(f"{self.directory} has no checkpoint at step {step}; it has "
                                  f"{steps or 'none'}")
        restore = lambda s: self.manager.restore(  # noqa: E731
            s, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))["params"]
        found = self._restore_newest(restore, [step] if step is not None else steps, set_aside=False)
        if found is None:
            raise CheckpointError(f"{self.directory} holds no checkpoint yet")
        return found

    def _restore_newest(self, restore, steps: list[int], *, set_aside: bool):
        failed: list[tuple[int, Exception]] = []
        for step in reversed(steps):
            try:
                value = restore(step)
            except CheckpointError:
                raise
            except Exception as err:  # orbax / tensorstore raise many types for damaged files
                log.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying an older "
                            "one", step, self.directory, type(err).__name__, str(err)[:300])
                failed.append((step, err))
                continue
            if set_aside:
                for bad, err in failed:
                    self._set_aside(bad, err)
            return value, step
        if failed:
            step, err = failed[0]
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores (newest: step {step}: "
                f"{type(err).__name__}: {str(err)[:300]}); if the model config changed, use a new "
                "train.run_dir") from err
        return None

    def _set_aside(self, step: int, err: Exception) -> None:
        target = self.run_dir / CORRUPT_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            shutil.move(str(self.directory / str(step)), str(target))
        log.warning("checkpoint step %d is damaged (%s); moved to %s and resumed from an older one",
                    step, type(err).__name__, target)
        self.manager.reload()


def load_model(run_dir: str | os.PathLike, *, step: int | None = None,
               mesh: jax.sharding.Mesh | None = None, dtype: str | None = None
               ) -> tuple[Config, OpenELM]:
    """``(Config, OpenELM)`` from a run directory's newest checkpoint (or ``step``).

    Parameters are placed per the mesh's sharding rules (default: one device); ``dtype`` overrides
    the compute dtype (e.g. ``"bfloat16"`` for serving).
    """
    config = read_run_config(run_dir)
    if config.finetune.base:
        raise CheckpointError(f"{run_dir} is an elm-finetune run: its checkpoints hold what it "
                              "trained, not a whole model; use its hf-step<N> export, or the base "
                              f"{config.finetune.base} with --adapter {run_dir}/adapter-step<N>")
    if dtype is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype=dtype))
    mesh = mesh or mesh_lib.single_device_mesh()
    graphdef = nnx.split(abstract_model(config.model))[0]
    params_state = abstract_params(config.model)
    shardings = mesh_lib.param_shardings(params_state, mesh, rules_from_config(config.mesh))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nnx.to_pure_dict(params_state), shardings)
    ckpt = Checkpointer(run_dir, config, read_only=True)
    try:
        params, _ = ckpt.restore_params(abstract, step)
    finally:
        ckpt.close()
    return config, nnx.merge(graphdef, params)
