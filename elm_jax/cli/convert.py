"""``elm-convert``: read an OpenELM checkpoint and write it out in HF layout (e.g. change dtype).

``--input`` is an HF directory (``config.json`` + safetensors); the training issue adds our own run
directories as a source.
"""

from __future__ import annotations

from absl import flags

from elm_jax.cli import common
from elm_jax.config import DTYPES

INPUT = flags.DEFINE_string("input", None, "HF OpenELM checkpoint directory to read", required=True)
OUTPUT = flags.DEFINE_string("output", None, "new directory to write (HF layout)", required=True)
DTYPE = flags.DEFINE_enum("param_dtype", None, list(DTYPES), "store parameters in this dtype")
SHARD = flags.DEFINE_integer("max_shard_mb", 5 * 1024, "split safetensors files past this size")


def _main(argv: list[str]) -> None:
    del argv
    from elm_jax.convert.hf import CheckpointError, load_hf, save_hf
    from elm_jax.model import param_count

    try:
        cfg, model = load_hf(INPUT.value, param_dtype=DTYPE.value)
        out = save_hf(cfg, model, OUTPUT.value, max_shard_bytes=SHARD.value * 2**20)
    except (CheckpointError, FileExistsError) as err:
        raise common.UserError(str(err)) from None
    print(f"wrote {out}: {cfg.num_layers} layers, {param_count(cfg):,} parameters, "
          f"{cfg.param_dtype}")


def main() -> None:
    common.run(_main)


if __name__ == "__main__":
    main()
