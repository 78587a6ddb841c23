"""OpenELM-450M instruction tuning: DPO on binarised UltraFeedback (the instruct models' recipe).

    elm-finetune --config experiments/finetune/dpo_450m.py \\
        --config.finetune.base=OpenELM-450M --config.data.tokenizer=llama2/tokenizer.model \\
        --config.finetune.train_file=ultrafeedback_binarized_train_prefs.jsonl
"""

from elm_jax.finetune.recipes import dpo_config


def get_config(arg=None):
    del arg
    return dpo_config("450m")
