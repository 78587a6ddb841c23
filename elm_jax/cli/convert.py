"""``elm-convert``: read an OpenELM checkpoint and write it out in HF layout (e.g. change dtype).

``--input`` is an HF directory (``config.json`` + safetensors) or an ``elm-train`` run directory
(its newest checkpoint, or ``--step``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from absl import flags

from elm_jax.cli import common
from elm_jax.config import DTYPES

INPUT = flags.DEFINE_string("input", None, "HF OpenELM checkpoint directory to read", required=True)
OUTPUT = flags.DEFINE_string("output", None, "new directory to write (HF layout)", required=True)
DTYPE = flags.DEFINE_enum("param_dtype", None, list(DTYPES), "store parameters in this dtype")
SHARD = flags.DEFINE_integer("max_shard_mb", 5 * 1024, "split safetensors files past this size")
STEP = flags.DEFINE_integer("step", None, "checkpoint step of a run directory (default: newest)")


def _load(path: str, param_dtype: str | None):
    """(ModelConfig, OpenELM) from an HF directory or a training run directory."""
    from flax import nnx

    from elm_jax.convert.hf import load_hf, model_from_params
    from elm_jax.train.checkpoint import load_model

    if not (Path(path) / "checkpoints").is_dir():
        return load_hf(path, param_dtype=param_dtype)
    config, model = load_model(path, step=STEP.value)
    cfg = config.model
    if param_dtype is not None:
        cfg = dataclasses.replace(cfg, param_dtype=param_dtype)
        model = model_from_params(cfg, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return cfg, model


def _main(argv: list[str]) -> None:
    del argv
    from elm_jax.convert.hf import CheckpointError, save_hf
    from elm_jax.model import param_count
    from elm_jax.train.checkpoint import CheckpointError as RunCheckpointError

    try:
        cfg, model = _load(INPUT.value, DTYPE.value)
        out = save_hf(cfg, model, OUTPUT.value, max_shard_bytes=SHARD.value * 2**20)
    except (CheckpointError, RunCheckpointError, FileExistsError) as err:
        raise common.UserError(str(err)) from None
    print(f"wrote {out}: {cfg.num_layers} layers, {param_count(cfg):,} parameters, "
          f"{cfg.param_dtype}")


def main() -> None:
    common.run(_main)


if __name__ == "__main__":
    main()
