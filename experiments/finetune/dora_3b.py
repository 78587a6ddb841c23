"""OpenELM-3B + DoRA on LLM-Adapters' commonsense_170k: the paper's PEFT recipe.

    elm-finetune --config experiments/finetune/dora_3b.py \\
        --config.finetune.base=OpenELM-3B --config.data.tokenizer=llama2/tokenizer.model \\
        --config.finetune.train_file=commonsense_170k.json
"""

from elm_jax.finetune.recipes import peft_config


def get_config(arg=None):
    del arg
    return peft_config("3b", "dora")
