"""The run directory: what an ``elm-train`` run leaves on disk, and how to tell it from an HF export.

Layout::

    run_dir/config.json          the experiment (``to_config_dict``), what readers rebuild it from
    run_dir/tokenizer.model      the SentencePiece model the run was trained with
    run_dir/checkpoints/<step>/  orbax checkpoints (``elm_jax.checkpoint``)
    run_dir/corrupt_checkpoints/ damaged steps set aside (never deleted)
    run_dir/metrics.jsonl        one JSON object per logged step; run_dir/tensorboard/ events
    run_dir/hf-step<N>/          the weights exported in HF layout at the end of a run

An HF OpenELM directory holds a ``config.json`` too, with ``model_type: openelm``. This module owns
the names and the files; it reads and writes them atomically and never imports the training code,
so inference, evaluation and conversion can read a run directory.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from elm_jax.common_types import CONFIG_FILE, HF_EXPORT_PREFIX, TOKENIZER_FILE
from elm_jax.config import Config, from_config_dict, to_config_dict
from elm_jax.convert.hf import save_hf
from elm_jax.errors import CheckpointError, ConfigError, TrainingError
from elm_jax.model import abstract_model
from elm_jax.parallel import mesh as mesh_lib

log = logging.getLogger(__name__)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_json(config: Config) -> str:
    """The experiment as the JSON that ``config.json`` and every checkpoint store."""
    return to_config_dict(config).to_json(indent=2, sort_keys=True)


def read_run_config(run_dir: str | os.PathLike) -> Config:
    """The ``Config`` a run directory was trained with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found; is {run_dir} a training run directory "
                              "(written by elm-train)?")
    try:
        return from_config_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); restore it from a checkpoint's "
                          "config/ item") from None


def checkpoint_kind(path: Path) -> str:
    """``"hf"`` (an HF OpenELM export) or ``"run"`` (an elm-train run directory); else an error."""
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
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


def tokenizer_file(run_dir: str | os.PathLike) -> Path:
    """Where a run directory (or an HF export that ships one) keeps its tokenizer."""
    return Path(run_dir) / TOKENIZER_FILE


def prepare_run_dir(config: Config, tokenizer_path: str | None) -> Path:
    """Create the run directory with ``config.json`` and ``tokenizer.model``; refuse one that holds
    a run of a different model or tokenizer (resuming it would mix two runs)."""
    run_dir = Path(config.train.run_dir)
    config_file = run_dir / CONFIG_FILE
    if config_file.exists():
        old = read_run_config(run_dir)
        if old.model != config.model:
            raise TrainingError(
                f"{run_dir} holds a run of a different model ({config_file} differs in its model "
                "section); choose a new --config.train.run_dir or restore the original config")
        if old.data != config.data:
            log.warning("%s: the data config differs from the run's; the resumed data stream will "
                        "not continue the original one", run_dir)
    if jax.process_index() != 0:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_path is not None:
        dest = tokenizer_file(run_dir)
        if dest.exists() and not filecmp.cmp(dest, tokenizer_path, shallow=False):
            raise TrainingError(f"{dest} differs from the configured tokenizer {tokenizer_path}; "
                                "this run directory was trained with another tokenizer")
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(tokenizer_path, tmp)
            tmp.replace(dest)
    write_atomic(config_file, config_json(config))
    return run_dir


def export_hf(config: Config, params: Any, run_dir: Path, step: int) -> Path | None:
    """Write ``params`` as ``run_dir/hf-step<step>`` in HF layout (process 0; None elsewhere)."""
    path = run_dir / f"{HF_EXPORT_PREFIX}{step}"
    if jax.process_count() > 1:  # gather the shards so process 0 can write them
        params = jax.jit(lambda p: p, out_shardings=mesh_lib.replicated(
            jax.tree.leaves(params)[0].sharding.mesh))(params)
    if jax.process_index() != 0 or path.exists():
        return path if path.exists() else None
    graphdef = nnx.split(abstract_model(config.model))[0]
    return save_hf(config.model, nnx.merge(graphdef, params), path)
