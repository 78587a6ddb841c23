"""OpenELM-3B instruction tuning: DPO on binarised UltraFeedback (the instruct models' recipe).

    elm-finetune --config experiments/finetune/dpo_3b.py \\
        --config.finetune.base=OpenELM-3B --config.data.tokenizer=llama2/tokenizer.model \\
        --config.finetune.train_file=ultrafeedback_binarized_train_prefs.jsonl
"""

from elm_jax.finetune.recipes import dpo_config


def get_config(arg=None):
    del arg
    return dpo_config("3b")
