"""``elm-convert``: read an OpenELM checkpoint and write it out in HF layout (e.g. change dtype).

``--input`` is an HF directory (``config.json`` + safetensors) or an ``elm-train`` run directory
(its newest checkpoint, or ``--step``; one line on stderr names the step loaded and any newer step
skipped as damaged, and why).
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags
from flax import nnx

from elm_jax import rundir
from elm_jax.checkpoint import load_model_reporting
from elm_jax.cli import common
from elm_jax.common_types import DTYPES
from elm_jax.config import ModelConfig
from elm_jax.convert.hf import check_new_output, load_hf, model_from_params, save_hf
from elm_jax.model import OpenELM, param_count

INPUT = flags.DEFINE_string("input", None, "HF OpenELM directory or elm-train run directory to read",
                            required=True)
OUTPUT = flags.DEFINE_string("output", None, "new directory to write (HF layout)", required=True)
DTYPE = flags.DEFINE_enum("param_dtype", None, list(DTYPES), "store parameters in this dtype")
SHARD = flags.DEFINE_integer("max_shard_mb", 5 * 1024, "split safetensors files past this size")
STEP = flags.DEFINE_integer("step", None, "checkpoint step of a run directory (default: newest)")


def _load(path: str, param_dtype: str | None) -> tuple[ModelConfig, OpenELM]:
    """(ModelConfig, OpenELM) from an HF directory or a training run directory."""
    if rundir.checkpoint_kind(path) == "hf":
        return load_hf(path, param_dtype=param_dtype)
    config, model, report = load_model_reporting(path, step=STEP.value)
    print(report.line(), file=sys.stderr, flush=True)
    cfg = config.model
    if param_dtype is not None:
        cfg = dataclasses.replace(cfg, param_dtype=param_dtype)
        model = model_from_params(cfg, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return cfg, model


def _main(argv: list[str]) -> None:
    del argv
    check_new_output(OUTPUT.value)  # before the (possibly long) load
    cfg, model = _load(INPUT.value, DTYPE.value)
    out = save_hf(cfg, model, OUTPUT.value, max_shard_bytes=SHARD.value * 2**20)
    print(f"wrote {out}: {cfg.num_layers} layers, {param_count(cfg):,} parameters, "
          f"{cfg.param_dtype}")


main = common.entry(_main)

if __name__ == "__main__":
    main()
