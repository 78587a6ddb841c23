"""The embedded demo: LoRA teaches the tiny pretrained model "Which play is this line from?".

    elm-train                  # experiments/tiny.py -> runs/tiny (~5 min on 2 CPU cores)
    elm-finetune               # this file: LoRA on runs/tiny -> runs/tiny-lora

Questions come from the Shakespeare corpus the tiny model was pretrained on (a speaker's line and
four plays to choose from); training lines from the corpus's train scenes, the held-out questions
from its validation scenes. elm-finetune prints the held-out accuracy before and after.
"""

from elm_jax.config import default_config


def get_config(arg=None):
    del arg
    config = default_config()
    config.name = "shakespeare_lora"
    ft = config.finetune
    ft.base = "runs/tiny"
    ft.format = "shakespeare_plays"
    ft.questions = 200
    ft.adapter = "lora"
    ft.targets = ("token_embeddings", "qkv_proj", "out_proj", "proj_1", "proj_2")
    ft.rank = 16
    ft.alpha = 32.0
    ft.dropout = 0.0
    data = config.data
    data.tokenizer = "shakespeare"  # the base run's own tokenizer.model
    data.tokenizer_vocab_size = 4096
    data.pad_id = 4096
    data.seq_len = 128
    data.mode = "pack"
    train = config.train
    train.steps = 200
    train.batch_size = 16
    train.peak_lr = 5e-3
    train.warmup_steps = 20
    train.cosine_period = 180
    train.weight_decay = 0.0
    train.log_every = 25
    train.eval_every = 100
    train.eval_batches = 4
    train.save_every = 100
    train.sample_lines = 0
    train.run_dir = "runs/tiny-lora"
    return config
