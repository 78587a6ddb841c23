"""The paper's fine-tuning recipes (docs/OPENELM.md, "Fine-tuning") as configs, per size and method.

- LoRA / DoRA (CoreNet's ``peft_configs``): r 32, alpha 32, dropout 0.1, no rsLoRA, on the token
  embedding, qkv_proj, out_proj, proj_1 and proj_2, base and norms frozen; AdamW (0.9, 0.95, 1e-8)
  without weight decay, clip 1.0, z-loss, bf16; cosine 3e-4 -> 3e-5 after 1,000 warmup steps from
  1e-6; 4,375 steps: three epochs of LLM-Adapters' commonsense_170k at a batch of 120 records.
- DPO (the alignment-handbook recipe of the instruct models): full fine-tuning on the binarised
  UltraFeedback preferences, beta 0.01, cosine to 0 after a 10 % warmup, sequences of 1,024 tokens
  with prompts of at most 512, global batch 128; epochs / learning rate / loss per size.

Pure Python, like ``elm_jax.presets``: ``experiments/finetune/*.py`` call ``peft_config`` and
``dpo_config``. Starting models are the released HF checkpoints (vocabulary 32,000, LLaMA-2's
tokenizer): ``finetune.base`` defaults to ``OpenELM-<SIZE>`` in the working directory; set it and
``data.tokenizer`` on the command line.
"""

from __future__ import annotations

import math

import ml_collections

from elm_jax.presets import openelm_config

COMMONSENSE_RECORDS = 170_420  # LLM-Adapters' commonsense_170k.json
PEFT_STEPS = 4_375
PEFT_BATCH = 120  # 3 epochs of commonsense_170k in PEFT_STEPS (divisible by 8 devices)
ULTRAFEEDBACK_PAIRS = 61_135  # train_prefs of HuggingFaceH4/ultrafeedback_binarized
DPO_BATCH = 128
# size -> (epochs, peak learning rate, loss), CoreNet's projects/openelm/README-instruct.md
DPO_SETTINGS = {"270m": (5, 2e-5, "hinge"), "450m": (8, 3e-5, "hinge"),
                "1_1b": (5, 5e-5, "sigmoid"), "3b": (10, 1e-4, "hinge")}


def _released(size: str, name: str) -> ml_collections.ConfigDict:
    """A size's config shaped like the released checkpoint, to fine-tune (not pretrain)."""
    config = openelm_config(size)
    config.name = f"openelm_{size}_{name}"
    # a download of apple/OpenELM-<SIZE> into the working directory (override to start elsewhere);
    # set here so that elm-plan plans the fine-tuning state (frozen base, adapters' optimizer state)
    config.finetune.base = f"OpenELM-{size.replace('_', '.').upper()}"
    config.model.vocab_size = 32000  # the released checkpoints (CoreNet trains with 32128)
    config.data.pad_id = 0  # padding is masked and attends to nothing; the vocabulary has no spare id
    config.train.run_dir = f"runs/openelm_{size}_{name}"
    config.train.sample_lines = 0
    return config


def peft_config(size: str, adapter: str) -> ml_collections.ConfigDict:
    """LoRA (``adapter='lora'``) or DoRA (``'dora'``) on commonsense_170k."""
    config = _released(size, adapter)
    ft = config.finetune
    ft.method, ft.adapter, ft.format = "sft", adapter, "alpaca"
    ft.targets = ("token_embeddings", "qkv_proj", "out_proj", "proj_1", "proj_2")
    ft.rank, ft.alpha, ft.dropout, ft.rslora = 32, 32.0, 0.1, False
    ft.train_file = "commonsense_170k.json"
    config.data.seq_len = 256  # LLM-Adapters' cutoff length
    config.data.mode = "pad"
    train = config.train
    train.steps = PEFT_STEPS
    train.batch_size = PEFT_BATCH
    train.peak_lr, train.min_lr_ratio = 3e-4, 0.1
    train.warmup_steps, train.warmup_init_lr = 1000, 1e-6
    train.cosine_period = PEFT_STEPS - 1000
    train.b1, train.b2, train.eps, train.weight_decay, train.grad_clip = 0.9, 0.95, 1e-8, 0.0, 1.0
    train.z_loss = 1e-4
    train.eval_batches = 0  # commonsense_170k has no validation split
    train.log_every, train.save_every = 25, 500
    return config


def dpo_config(size: str) -> ml_collections.ConfigDict:
    """Full-parameter DPO on UltraFeedback with the size's epochs, learning rate and loss."""
    epochs, lr, loss = DPO_SETTINGS[size]
    config = _released(size, "dpo")
    ft = config.finetune
    ft.method, ft.adapter, ft.format = "dpo", "none", "preference"
    ft.trainable = ()  # with adapter 'none': every parameter
    ft.dpo_loss, ft.dpo_beta = loss, 0.01
    ft.max_prompt_tokens = 512
    ft.train_file = "ultrafeedback_binarized_train_prefs.jsonl"
    ft.chat_template = "auto"
    config.data.seq_len = 2048  # a chosen and a rejected sequence of up to 1,024 tokens per row
    steps = math.ceil(epochs * ULTRAFEEDBACK_PAIRS / DPO_BATCH)
    train = config.train
    train.steps, train.batch_size = steps, DPO_BATCH
    train.peak_lr, train.min_lr_ratio = lr, 0.0
    train.warmup_steps, train.warmup_init_lr = math.ceil(0.1 * steps), 0.0
    train.cosine_period = steps - train.warmup_steps
    train.b1, train.b2, train.eps, train.weight_decay, train.grad_clip = 0.9, 0.999, 1e-8, 0.0, 1.0
    train.z_loss = 0.0
    train.eval_batches = 0
    train.log_every, train.save_every = 10, 500
    return config
