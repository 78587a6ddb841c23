"""OpenELM's layer-wise scaling against uniform, reverse and tapered layers at equal parameters.

    elm-sweep --sweep experiments/ablations/layerwise_vs_uniform.py --dry-run
    elm-sweep --sweep experiments/ablations/layerwise_vs_uniform.py     # into runs/sweeps/<name>

A small 8-layer OpenELM (d 64, 4 to 8 query heads of 8, GQA 2) on the embedded Shakespeare corpus
with a 1024-piece tokenizer, small enough for all 12 cells to run on a 2-core CPU. Every schedule is
solved (FFN widths stretched, attention left as the family draws it) to the base's non-embedding
parameter count within 1 %, and every cell sees the same tokens in the same order: the seed changes
only the initialisation. docs/ABLATIONS.md has the outcome.
"""

from pathlib import Path

import ml_collections

from elm_jax.explore.sweep import load_config_file

LINEAR = {"qkv": (0.5, 1.0), "ffn": (0.5, 4.0)}  # OpenELM's ranges (first layer, last layer)


def base():
    """experiments/tiny.py (Shakespeare, packed 128-token rows) with a deeper, narrower model."""
    config = load_config_file(str(Path(__file__).parents[1] / "tiny.py"))
    config.name = "layerwise_vs_uniform"
    config.model.update(num_layers=8, model_dim=64, head_dim=8, num_gqa_groups=2,
                        qkv_multipliers=LINEAR["qkv"], ffn_multipliers=LINEAR["ffn"],
                        ffn_dim_divisor=2,  # fine enough to match a uniform model within 1 % here
                        vocab_size=1152)  # the 1024-piece tokenizer + pad, rounded up to 128
    config.data.update(tokenizer_vocab_size=1024, pad_id=1024)
    config.train.update(steps=200, batch_size=8, warmup_steps=20, cosine_period=180, eval_every=25,
                        eval_batches=8, save_every=50, sample_lines=0)
    return config


def get_config(arg=None):
    del arg
    sweep = ml_collections.ConfigDict()
    sweep.name = "layerwise_vs_uniform"
    sweep.description = __doc__.split("\n\n")[0]
    sweep.base = base()
    sweep.axes = [
        {"field": "schedule", "values": [
            {"family": "openelm_linear", **LINEAR},
            {"family": "uniform", "qkv": 0.75, "ffn": 2.25},  # the linear ranges' midpoints
            {"family": "reverse", **LINEAR},
            {"family": "tapered", "qkv": (1.0, 0.5), "ffn": (4.0, 0.5)},
        ]},
        {"field": "train.seed", "values": [0, 1, 2]},
    ]
    sweep.match = {"cost": "params", "convention": "non_embedding", "tolerance": 0.01,
                   "knob": "ffn_scale"}
    sweep.compare = {"pair_by": "train.seed", "reference": "openelm_linear"}
    return sweep
