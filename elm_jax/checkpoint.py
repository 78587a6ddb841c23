"""Orbax checkpoints of a run: params, the training state, the data iterator state and the config.

Each ``run_dir/checkpoints/<step>/`` holds ``params/ train/ data/ config/ checksums/`` (orbax
``CompositeCheckpointHandler``); the run directory's layout is ``elm_jax.rundir``'s and it may be
local or an object-store URI (``gs://...``, ``elm_jax.storage``). ``train`` is
whatever the trainer keeps besides the parameters (step counter, optimizer state), so readers that
only need the weights (``load_model``) never import the training code.

Saves are asynchronous and atomic (orbax writes ``*.orbax-checkpoint-tmp*`` and renames), so a
process killed mid-save leaves no step directory and the previous checkpoint stays the latest. A
step that is damaged afterwards fails to restore and is skipped for the next older one: truncated
or unreadable files, an array whose bytes no longer match the digest saved with it (``checksums``,
``elm_jax.digest``; the message names the array), or a missing or unreadable data-iterator state
(the stream could not continue where the parameters did; ``train.restart_data_stream=True``
restarts the stream instead). The trainer moves such steps to ``run_dir/corrupt_checkpoints/``
(never deleted, with a ``reason.txt``); readers leave them in place. ``report`` says which step was
loaded and which were skipped and why. On several processes every decision is taken together
(``elm_jax.parallel.consensus``): a step damaged as seen by one process only is skipped by all,
and nobody reloads the step list before process 0 has finished moving a damaged step.
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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from elm_jax.common_types import CHECKPOINTS_DIR, CHECKSUMS_ITEM, CORRUPT_DIR
from elm_jax.config import Config, rules_from_config
from elm_jax.digest import mismatches, tree_digests
from elm_jax.errors import CheckpointError
from elm_jax.model import OpenELM, abstract_model, abstract_params
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.parallel.consensus import barrier, first_failure
from elm_jax.rundir import config_json, read_run_config
from elm_jax.storage import as_path, is_uri, write_atomic

log = logging.getLogger(__name__)


class FrozenIteratorState:
    """The iterator state captured at save time, in the shape grain's orbax handler writes.

    The handler may run after ``save`` returns (async), when the live iterator has moved on.
    """

    def __init__(self, iterator: Any):
        self._state = json.dumps(iterator.get_state(), indent=4).encode()

    def get_state(self) -> bytes:
        return self._state


T = TypeVar("T")


class DamagedStep(Exception):  # noqa: N818 (not an error of the user's: a step to skip)
    """A checkpoint step that cannot be used as it is; ``str`` says why."""


@dataclasses.dataclass
class RestoreReport:
    """Which step a restore used, and which newer ones it skipped and why."""

    directory: str
    step: int
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        """One line for a reader's output: ``loaded step 8 of runs/x (skipped step 12: ...)``."""
        text = f"loaded step {self.step} of {self.directory}"
        if self.skipped:
            text += " (skipped " + "; ".join(f"step {s}: {why}" for s, why in self.skipped) + ")"
        return text


def _process_files(step_dir: epath.Path) -> list[str]:
    data = step_dir / "data"
    return sorted(p.name for p in data.glob("process_*-of-*.json")) if data.exists() else []


def _data_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def _move_dir(source: epath.Path, target: epath.Path) -> None:
    """Move a step directory (a rename locally; object stores copy and delete)."""
    if is_uri(source):
        source.rename(target)
    else:
        shutil.move(os.fspath(source), os.fspath(target))


def _agreed(attempt: Callable[[], T]) -> T:
    """``attempt()`` on every process; a failure on any process fails it on all (``DamagedStep``),
    so processes never go on with different steps."""
    reason = None
    try:
        value = attempt()
    except CheckpointError:
        raise
    except Exception as err:  # orbax / tensorstore raise many types for damaged files
        reason = str(err) if isinstance(err, DamagedStep) else _short(err)
    reason = first_failure(reason)
    if reason is not None:
        raise DamagedStep(reason)
    return value


class Checkpointer:
    """An orbax ``CheckpointManager`` over ``run_dir/checkpoints`` with this project's items."""

    def __init__(self, run_dir: str | os.PathLike, config: Config, *, read_only: bool = False):
        self.run_dir = as_path(run_dir)
        self.directory = self.run_dir / CHECKPOINTS_DIR
        self.config = config
        self.report: RestoreReport | None = None
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
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params: Any, train: Mapping[str, Any],
             data_iterator: Any | None = None) -> None:
        """Start an async save of ``params`` and the trainer's ``train`` items at ``step``, with
        the digest of every array; returns once the arrays are copied off the devices, while files
        are written in the background."""
        train = dict(train)
        checksums = {"params": tree_digests(params), "train": tree_digests(train)}
        items = {"params": ocp.args.StandardSave(params),
                 "train": ocp.args.StandardSave(train),
                 "config": ocp.args.JsonSave(json.loads(config_json(self.config))),
                 CHECKSUMS_ITEM: ocp.args.JsonSave(checksums)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(FrozenIteratorState(data_iterator))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def reached_preemption(self, step: int) -> bool:
        """Whether every process agrees that a preemption notice arrived (multi-host runs)."""
        return bool(self.manager.reached_preemption(step))

    def _check_data_state(self, step: int) -> bool:
        """Whether ``step``'s data-iterator state of this process can be restored: False (with a
        warning) when ``train.restart_data_stream`` restarts the stream; ``DamagedStep`` when the
        file is missing or unreadable; ``CheckpointError`` when it was saved by another number of
        processes (every process sees that alike)."""
        files = _process_files(self.directory / str(step))
        if files and not any(f.endswith(f"-of-{jax.process_count()}.json") for f in files):
            raise CheckpointError(
                f"checkpoint step {step} holds the data iterator state of "
                f"{files[0].split('-of-')[1][:-5]} process(es) ({', '.join(files)}), but this run has "
                f"{jax.process_count()}; resume with the same number of processes (the model "
                "state itself reshards onto any mesh)")
        if self.config.train.restart_data_stream:
            log.warning("train.restart_data_stream=True: the data stream starts again from its "
                        "beginning instead of continuing from step %d's position", step)
            return False
        path = self.directory / str(step) / "data" / _data_file()
        if not path.exists():
            raise DamagedStep(f"no data-iterator state (data/{_data_file()}) to continue the data "
                              "stream from; set train.restart_data_stream=True to restart the stream")
        try:
            json.loads(path.read_text())
        except (ValueError, OSError) as err:
            raise DamagedStep(f"data-iterator state data/{_data_file()} is unreadable "
                              f"({_short(err)})") from None
        return True

    def _restore_verified(self, step: int, items: dict[str, Any]) -> dict[str, Any]:
        """Restore ``items`` of ``step`` and check every restored array against its digest."""
        has_checksums = (self.directory / str(step) / CHECKSUMS_ITEM).exists()
        if has_checksums:
            items = items | {CHECKSUMS_ITEM: ocp.args.JsonRestore()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if not has_checksums:
            log.warning("checkpoint step %d has no checksums (saved by an older elm_jax); its "
                        "arrays are not verified", step)
            return restored
        for name in ("params", "train"):
            if name in items:
                bad = mismatches(restored[CHECKSUMS_ITEM].get(name, {}), restored[name])
                if bad:
                    raise DamagedStep(f"checksum mismatch in {name}{bad[0]}"
                                      + (f" and {len(bad) - 1} more array(s)" if len(bad) > 1 else ""))
        return restored

    def _restore_step(self, step: int, abstract_params: Any, abstract_train: Mapping[str, Any],
                      data_iterator: Any | None) -> tuple[Any, dict[str, Any]]:
        items = {"params": ocp.args.StandardRestore(abstract_params),
                 "train": ocp.args.StandardRestore(dict(abstract_train))}
        if data_iterator is not None and _agreed(lambda: self._check_data_state(step)):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = _agreed(lambda: self._restore_verified(step, items))
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
        restore = lambda s: _agreed(lambda: self._restore_verified(  # noqa: E731
            s, {"params": ocp.args.StandardRestore(abstract_params)}))["params"]
        found = self._restore_newest(restore, [step] if step is not None else steps, set_aside=False)
        if found is None:
            raise CheckpointError(f"{self.directory} holds no checkpoint yet")
        return found

    def _restore_newest(self, restore: Callable[[int], T], steps: list[int], *,
                        set_aside: bool) -> tuple[T, int] | None:
        failed: list[tuple[int, str]] = []
        for step in reversed(steps):
            try:
                value = restore(step)
            except DamagedStep as err:
                log.warning("checkpoint step %d in %s cannot be restored (%s); trying an older "
                            "one", step, self.directory, err)
                failed.append((step, str(err)))
                continue
            if set_aside and failed:
                self._set_aside(failed)
            self.report = RestoreReport(str(self.run_dir), step, failed)
            return value, step
        if failed:
            step, why = failed[0]
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores (newest: step {step}: {why}); if the "
                "model config changed, use a new train.run_dir")
        return None

    def _set_aside(self, failed: list[tuple[int, str]]) -> None:
        """Move damaged steps to ``corrupt_checkpoints/`` (process 0; the others wait for it)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for step, why in failed:
            target = self.run_dir / CORRUPT_DIR / f"{step}-{stamp}"
            if jax.process_index() == 0:
                target.parent.mkdir(parents=True, exist_ok=True)
                _move_dir(self.directory / str(step), target)
                write_atomic(target / "reason.txt", why + "\n")
                log.warning("checkpoint step %d is damaged (%s); moved to %s and resumed from an "
                            "older one", step, why, target)
        barrier(f"elm_jax:set_aside:{','.join(str(s) for s, _ in failed)}")
        self.manager.reload()


def load_model(run_dir: str | os.PathLike, *, step: int | None = None,
               mesh: jax.sharding.Mesh | None = None, dtype: str | None = None
               ) -> tuple[Config, OpenELM]:
    """``(Config, OpenELM)`` from a run directory's newest checkpoint (or ``step``).

    Parameters are placed per the mesh's sharding rules (default: one device); ``dtype`` overrides
    the compute dtype (e.g. ``"bfloat16"`` for serving).
    """
    config, model, _ = load_model_reporting(run_dir, step=step, mesh=mesh, dtype=dtype)
    return config, model


def load_model_reporting(run_dir: str | os.PathLike, *, step: int | None = None,
                         mesh: jax.sharding.Mesh | None = None, dtype: str | None = None
                         ) -> tuple[Config, OpenELM, RestoreReport]:
    """``load_model`` plus the ``RestoreReport`` a reader prints (the step loaded, steps skipped)."""
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
    assert ckpt.report is not None
    return config, nnx.merge(graphdef, params), ckpt.report
