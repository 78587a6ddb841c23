"""The run directory: what an ``elm-train`` run leaves on disk, and how to tell it from an HF export.

Layout (local, or an object-store URI such as ``gs://bucket/runs/x``: see ``elm_jax.storage``)::

    run_dir/config.json          the experiment (``to_config_dict``), what readers rebuild it from
    run_dir/tokenizer.model      the SentencePiece model the run was trained with
    run_dir/run.lock             who is training here (``elm_jax.runlock``)
    run_dir/checkpoints/<step>/  orbax checkpoints (``elm_jax.checkpoint``), each with its config
    run_dir/corrupt_checkpoints/ damaged steps set aside (never deleted)
    run_dir/metrics.jsonl        one JSON object per logged step; run_dir/tensorboard/ events
    run_dir/hf-step<N>/          the weights exported in HF layout at the end of a run

A run's identity is its checkpoints: ``config.json`` and ``tokenizer.model`` are written only once
a run has started (``record_identity``, after its first step), so a start that failed leaves
nothing that could refuse the next one, and a directory without checkpoints belongs to no run.
When ``config.json`` is missing the newest checkpoint's stored config stands in for it.

An HF OpenELM directory holds a ``config.json`` too, with ``model_type: openelm``. This module owns
the names and the files; it reads and writes them atomically and never imports the training code,
so inference, evaluation and conversion can read a run directory.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
from etils import epath
from flax import nnx

from elm_jax.common_types import CHECKPOINTS_DIR, CONFIG_FILE, HF_EXPORT_PREFIX, TOKENIZER_FILE
from elm_jax.config import Config, from_config_dict, to_config_dict
from elm_jax.convert.hf import save_hf
from elm_jax.errors import CheckpointError, ConfigError, TrainingError
from elm_jax.model import abstract_model
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.storage import as_path, copy_atomic, write_atomic

log = logging.getLogger(__name__)
STORED_CONFIG = "config/metadata"  # where a checkpoint step keeps its ``config`` item


def config_json(config: Config) -> str:
    """The experiment as the JSON that ``config.json`` and every checkpoint store."""
    return to_config_dict(config).to_json(indent=2, sort_keys=True)


def checkpoint_steps(run_dir: str | os.PathLike) -> list[int]:
    """The finished checkpoint steps of a run directory (unfinished saves have other names)."""
    directory = as_path(run_dir) / CHECKPOINTS_DIR
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _parse_config(path: epath.Path) -> Config:
    try:
        return from_config_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); restore it from a checkpoint's "
                          "config/ item") from None


def stored_config(run_dir: str | os.PathLike) -> Config | None:
    """The config stored in the newest checkpoint step that has one (None without checkpoints)."""
    for step in reversed(checkpoint_steps(run_dir)):
        path = as_path(run_dir) / CHECKPOINTS_DIR / str(step) / STORED_CONFIG
        if path.exists():
            return _parse_config(path)
    return None


def read_run_config(run_dir: str | os.PathLike) -> Config:
    """The ``Config`` a run directory was trained with: ``config.json``, else the config stored in
    its newest checkpoint."""
    path = as_path(run_dir) / CONFIG_FILE
    if path.exists():
        return _parse_config(path)
    stored = stored_config(run_dir)
    if stored is None:
        raise CheckpointError(f"{path} not found; is {run_dir} a training run directory "
                              "(written by elm-train)?")
    return stored


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"hf"`` (an HF OpenELM export) or ``"run"`` (an elm-train run directory); else an error."""
    path = as_path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        if checkpoint_steps(path):
            return "run"
        raise CheckpointError(
            f"{config_file} not found: expected an elm-train run directory or an HF OpenELM "
            "directory (config.json + model.safetensors)")
    try:
        raw: dict[str, Any] = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err})") from None
    if raw.get("model_type") == "openelm":
        return "hf"
    if isinstance(raw.get("model"), dict):
        return "run"
    raise CheckpointError(f"{config_file} is neither an OpenELM HF config (model_type 'openelm') "
                          "nor an elm_jax experiment config (with a 'model' section)")


def tokenizer_file(run_dir: str | os.PathLike) -> epath.Path:
    """Where a run directory (or an HF export that ships one) keeps its tokenizer."""
    return as_path(run_dir) / TOKENIZER_FILE


def vocabulary(model_proto: bytes) -> tuple[Any, ...]:
    """What decides how a SentencePiece model tokenizes: its pieces (text, score, type) and its
    normalisation rules, without the trainer's settings (which hold paths of the training host,
    so a model retrained on another machine has other bytes but the same vocabulary)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_proto)
    return (tuple((p.piece, p.score, p.type) for p in model.pieces),
            model.normalizer_spec.SerializeToString(deterministic=True),
            model.denormalizer_spec.SerializeToString(deterministic=True))


def check_run_dir(config: Config, tokenizer_path: str | None) -> epath.Path:
    """Refuse to resume a run directory whose checkpoints belong to a different model or whose
    tokenizer has another vocabulary (resuming would mix two runs); writes nothing.

    The run's identity is ``config.json`` or, when that is missing, the newest checkpoint's own
    config; a directory without checkpoints is nobody's run, whatever files it holds.
    """
    run_dir = as_path(config.train.run_dir)
    if not checkpoint_steps(run_dir):
        return run_dir
    old = read_run_config(run_dir)
    where = run_dir / CONFIG_FILE if (run_dir / CONFIG_FILE).exists() else "its newest checkpoint"
    if old.model != config.model:
        raise TrainingError(
            f"{run_dir} holds a run of a different model ({where} differs in its model "
            "section); choose a new --config.train.run_dir or restore the original config")
    if old.data != config.data:
        log.warning("%s: the data config differs from the run's; the resumed data stream will "
                    "not continue the original one", run_dir)
    dest = tokenizer_file(run_dir)
    if tokenizer_path is not None and dest.exists() and (
            vocabulary(dest.read_bytes()) != vocabulary(as_path(tokenizer_path).read_bytes())):
        raise TrainingError(f"{dest} has another vocabulary than the configured tokenizer "
                                f"{tokenizer_path}; this run directory was trained with another "
                                "tokenizer")
    return run_dir


def record_identity(config: Config, tokenizer_path: str | None) -> None:
    """Write ``config.json`` and, unless the run has one already, ``tokenizer.model`` (process 0;
    call once the run has started, i.e. after its first step)."""
    if jax.process_index() != 0:
        return
    run_dir = as_path(config.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_path is not None and not tokenizer_file(run_dir).exists():
        copy_atomic(tokenizer_path, tokenizer_file(run_dir))
    write_atomic(run_dir / CONFIG_FILE, config_json(config))


def prepare_run_dir(config: Config, tokenizer_path: str | None) -> epath.Path:
    """``check_run_dir`` then ``record_identity``: a run directory ready for a run that is known
    to start (tests and tools that write a checkpoint without training)."""
    run_dir = check_run_dir(config, tokenizer_path)
    record_identity(config, tokenizer_path)
    return run_dir


def clean_stale_exports(run_dir: epath.Path) -> None:
    """Remove the temporary folders of HF exports that were interrupted (process 0)."""
    if jax.process_index() != 0 or not run_dir.exists():
        return
    for tmp in run_dir.glob(f".{HF_EXPORT_PREFIX}*.tmp*"):
        log.warning("removing %s, left by an interrupted HF export", tmp)
        tmp.rmtree()


def export_hf(config: Config, params: Any, run_dir: epath.Path, step: int) -> epath.Path | None:
    """Write ``params`` as ``run_dir/hf-step<step>`` in HF layout (process 0; None elsewhere)."""
    path = run_dir / f"{HF_EXPORT_PREFIX}{step}"
    if jax.process_count() > 1:  # gather the shards so process 0 can write them
        params = jax.jit(lambda p: p, out_shardings=mesh_lib.replicated(
            jax.tree.leaves(params)[0].sharding.mesh))(params)
    done = (path / CONFIG_FILE).exists()  # written last: without it an export is unfinished
    if jax.process_index() != 0 or done:
        return path if done else None
    graphdef = nnx.split(abstract_model(config.model))[0]
    return save_hf(config.model, nnx.merge(graphdef, params), path, overwrite=True)
