"""A small OpenELM (layer-wise scaled, 4 layers) that trains in minutes on 2 CPU cores.

The default of ``elm-train``: Shakespeare, our own 4k SentencePiece model, short sequences.
"""

from elm_jax.config import default_config


def get_config(arg=None):
    del arg
    config = default_config()
    config.name = "tiny"
    model = config.model
    model.num_layers = 4
    model.model_dim = 256
    model.head_dim = 32
    model.num_gqa_groups = 2
    model.qkv_multipliers = (0.5, 1.0)
    model.ffn_multipliers = (1.0, 3.0)
    model.ffn_dim_divisor = 64
    model.vocab_size = 4224  # tokenizer 4096 + pad 4096, rounded up to a multiple of 128
    data = config.data
    data.tokenizer = "shakespeare"
    data.tokenizer_vocab_size = 4096
    data.pad_id = 4096
    data.seq_len = 128
    data.mode = "pack"
    data.words_per_piece = 256
    data.min_chars = 20
    data.min_tokens = 8
    train = config.train
    train.steps = 300  # <= ~5 minutes on 2 CPU cores, to a validation loss well below unigram entropy
    train.batch_size = 16
    train.peak_lr = 3e-3
    train.warmup_steps = 30
    train.cosine_period = 270
    train.log_every = 25
    train.eval_every = 150
    train.eval_batches = 4
    train.save_every = 150
    train.run_dir = "runs/tiny"
    return config
