"""``elm-describe``: a model's per-layer table, parameter count and FLOPs, from its config alone."""

from __future__ import annotations

import dataclasses

from absl import flags

from elm_jax.cli import common
from elm_jax.config import Config
from elm_jax.model import flops_per_token, param_count

CONFIG = common.define_config_flag(common.default_experiment("openelm_270m"))
VOCAB = flags.DEFINE_integer("vocab_size", None, "override the vocabulary (e.g. 32000, released)")


def describe(config: Config) -> str:
    """A human-readable summary of the model a config builds."""
    cfg = config.model
    rows = [f"{config.name}: {cfg.num_layers} layers, model_dim {cfg.model_dim}, "
            f"head_dim {cfg.head_dim}, vocab {cfg.vocab_size}",
            f"{'layer':>5} {'q_heads':>7} {'kv_heads':>8} {'ffn_dim':>7}"]
    for i, shape in enumerate(cfg.layer_shapes()):
        rows.append(f"{i:>5} {shape.q_heads:>7} {shape.kv_heads:>8} {shape.ffn_dim:>7}")
    seq = config.data.seq_len
    rows.append(f"parameters: {param_count(cfg):,}")
    rows.append(f"training FLOPs per token at seq {seq}: {flops_per_token(cfg, seq):.4g}")
    return "\n".join(rows)


def _main(argv: list[str]) -> None:
    del argv
    config = common.load_config(CONFIG)
    if VOCAB.value is not None:
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, vocab_size=VOCAB.value))
    print(describe(config))


main = common.entry(_main)

if __name__ == "__main__":
    main()
