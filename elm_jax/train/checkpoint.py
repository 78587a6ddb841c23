"""Orbax checkpoints of a run: params, optimizer state, step, the data iterator state and the config.

Layout of a run directory::

    run_dir/config.json          the experiment (``to_config_dict``), what ``load_model`` reads
    run_dir/tokenizer.model      the SentencePiece model the run was trained with
    run_dir/checkpoints/<step>/  params/ train/ data/ config/  (orbax CompositeCheckpointHandler)

Saves are asynchronous and atomic (orbax writes ``*.orbax-checkpoint-tmp*`` and renames), so a
process killed mid-save leaves no step directory and the previous checkpoint stays the latest. A
step directory that is damaged afterwards (e.g. truncated files) fails to restore: it is moved to
``run_dir/corrupt_checkpoints/`` with a warning (never deleted) and the next older one is used.
Restoring onto another mesh or device count reshards (the abstract target carries the new
shardings). The data iterator's state is per process (grain's orbax handler), so a run resumes with
the same number of processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import jax

from elm_jax.config import Config, ConfigError, from_config_dict, to_config_dict
from elm_jax.train.step import TrainState

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CORRUPT = "corrupt_checkpoints"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not fit this run; the message says what to do."""


class FrozenIteratorState:
    """The iterator state captured at save time, in the shape grain's orbax handler writes.

    The handler may run after ``save`` returns (async), when the live iterator has moved on.
    """

    def __init__(self, iterator: Any):
        self._state = json.dumps(iterator.get_state(), indent=4).encode()

    def get_state(self) -> bytes:
        return self._state


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_json(config: Config) -> str:
    return to_config_dict(config).to_json(indent=2, sort_keys=True)


def read_run_config(run_dir: str | os.PathLike) -> Config:
    """The ``Config`` a run directory was trained with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; is {run_dir} a training run directory "
                                "(written by elm-train)?")
    try:
        return from_config_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); restore it from a checkpoint's "
                          "config/ item") from None


def _train_item(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "opt_state": state.opt_state, "skipped": state.skipped,
            "first_nonfinite": state.first_nonfinite}


def _process_files(step_dir: Path) -> list[str]:
    return sorted(p.name for p in (step_dir / "data").glob("process_*-of-*.json"))


class Checkpointer:
    """An orbax ``CheckpointManager`` over ``run_dir/checkpoints`` with this project's items."""

    def __init__(self, run_dir: str | os.PathLike, config: Config, *, read_only: bool = False):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / CHECKPOINTS
        self.config = config
        train = config.train
        options = ocp.CheckpointManagerOptions(
            max_to_keep=train.keep_checkpoints, keep_period=train.keep_every or None,
            create=not read_only, read_only=read_only, enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only)
        if read_only and not self.directory.exists():
            raise FileNotFoundError(f"{self.directory} not found; {run_dir} holds no checkpoints")
        self.manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, data_iterator: Any | None = None) -> None:
        """Start an async save of ``state`` (at ``step``, its step counter); returns once the arrays
        are copied off the devices, while files are written in the background."""
        import grain

        ocp = self._ocp
        items = {"params": ocp.args.StandardSave(state.params),
                 "train": ocp.args.StandardSave(_train_item(state)),
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

    def _restore_step(self, step: int, abstract: TrainState, data_iterator: Any | None) -> TrainState:
        import grain

        ocp = self._ocp
        items = {"params": ocp.args.StandardRestore(abstract.params),
                 "train": ocp.args.StandardRestore(_train_item(abstract))}
        has_data = bool(_process_files(self.directory / str(step)))
        if data_iterator is not None and has_data:
            self._check_data_state(step)
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        train = restored["train"]
        return TrainState(train["step"], restored["params"], train["opt_state"], train["skipped"],
                          train["first_nonfinite"])

    def restore_latest(self, abstract: TrainState, data_iterator: Any | None = None
                       ) -> TrainState | None:
        """The newest checkpoint that restores, resharded onto ``abstract``'s shardings (None if the
        run has none). Newer ones that fail while an older one works are moved aside as corrupt."""
        found = self._restore_newest(lambda step: self._restore_step(step, abstract, data_iterator),
                                     self.all_steps(), set_aside=True)
        return None if found is None else found[0]

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
        """Parameters only (for inference / export) of the newest restorable checkpoint or ``step``."""
        ocp = self._ocp
        steps = self.all_steps()
        if step is not None and step not in steps:
            raise FileNotFoundError(f"{self.directory} has no checkpoint at step {step}; it has "
                                    f"{steps or 'none'}")
        restore = lambda s: self.manager.restore(  # noqa: E731
            s, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))["params"]
        found = self._restore_newest(restore, [step] if step is not None else steps, set_aside=False)
        if found is None:
            raise FileNotFoundError(f"{self.directory} holds no checkpoint yet")
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
        target = self.run_dir / CORRUPT / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            shutil.move(str(self.directory / str(step)), str(target))
        log.warning("checkpoint step %d is damaged (%s); moved to %s and resumed from an older one",
                    step, type(err).__name__, target)
        self.manager.reload()


def load_model(run_dir: str | os.PathLike, *, step: int | None = None,
               mesh: jax.sharding.Mesh | None = None, dtype: str | None = None):
    """``(Config, OpenELM)`` from a run directory's newest checkpoint (or ``step``).

    Parameters are placed per the mesh's sharding rules (default: one device); ``dtype`` overrides
    the compute dtype (e.g. ``"bfloat16"`` for serving).
    """
    import dataclasses

    from flax import nnx

    from elm_jax.model import abstract_model
    from elm_jax.parallel import mesh as mesh_lib

    config = read_run_config(run_dir)
    if dtype is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype=dtype))
    mesh = mesh or mesh_lib.single_device_mesh()
    graphdef, abstract_state = nnx.split(abstract_model(config.model))
    shardings = mesh_lib.param_shardings(config.model, mesh, mesh_lib.rules_from_config(config.mesh))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nnx.to_pure_dict(abstract_state), shardings)
    ckpt = Checkpointer(run_dir, config, read_only=True)
    try:
        params, _ = ckpt.restore_params(abstract, step)
    finally:
        ckpt.close()
    return config, nnx.merge(graphdef, params)


class PreemptionGuard:
    """SIGTERM (preemption on TPU VMs, SLURM) -> finish the step, save, wait, exit 0.

    On one host our own handler sets a flag; with several processes orbax's ``reached_preemption``
    (jax's preemption sync, after ``jax.distributed.initialize``) makes every process stop at the
    same step.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> PreemptionGuard:
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def reached(self, step: int, checkpointer: Checkpointer) -> bool:
        if jax.process_count() > 1:
            return bool(checkpointer.manager.reached_preemption(step))
        return self.requested

