"""OpenELM-450M + DoRA on LLM-Adapters' commonsense_170k: the paper's PEFT recipe.

    elm-finetune --config experiments/finetune/dora_450m.py \\
        --config.finetune.base=OpenELM-450M --config.data.tokenizer=llama2/tokenizer.model \\
        --config.finetune.train_file=commonsense_170k.json
"""

from elm_jax.finetune.recipes import peft_config


def get_config(arg=None):
    del arg
    return peft_config("450m", "dora")
