"""OpenELM's layer-wise scaling against uniform, reverse and tapered layers at equal parameters.

    elm-sweep --sweep experiments/ablations/layerwise_vs_uniform.py --dry-run
    elm-sweep --sweep experiments/ablations/layerwise_vs_uniform.py     # into runs/sweeps/<name>

A small 8-layer OpenELM (d 96, 4 to 8 query heads of 12, GQA 2) on the embedded Shakespeare corpus
with a 1024-piece tokenizer, small enough for all 12 cells to run on a 2-core CPU. Every schedule is
solved (FFN widths stretched, attention left as the family draws it) to the base's non-embedding
parameter count within 1 %, and every cell sees the same tokens in the same order: the seed changes
only the initialisation. docs/ABLATIONS.md has the outcome.
"""

import ml_collections

from elm_jax.config import default_config

LINEAR = {"qkv": (0.5, 1.0), "ffn": (0.5, 4.0)}  # OpenELM's ranges (first layer, last layer)


def base():
    config = default_config()
    config.name = "layerwise_vs_uniform"
    model = config.model
    model.num_layers = 8
    model.model_dim = 96
    model.head_dim = 12
    model.num_gqa_groups = 2
    model.qkv_multipliers = LINEAR["qkv"]
    model.ffn_multipliers = LINEAR["ffn"]
    model.ffn_dim_divisor = 4  # fine enough to match a uniform model within 1 % at this width
    model.vocab_size = 1152  # the 1024-piece Shakespeare tokenizer + pad, rounded up to 128
    data = config.data
    data.tokenizer = "shakespeare"
    data.tokenizer_vocab_size = 1024
    data.pad_id = 1024
    data.seq_len = 128
    data.mode = "pack"
    data.words_per_piece = 256
    data.min_chars = 20
    data.min_tokens = 8
    train = config.train
    train.steps = 200
    train.batch_size = 8
    train.peak_lr = 3e-3
    train.warmup_steps = 20
    train.cosine_period = 180
    train.log_every = 25
    train.eval_every = 25
    train.eval_batches = 8
    train.save_every = 50
    train.sample_lines = 0
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
