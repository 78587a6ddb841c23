"""OpenELM-270M + LoRA on LLM-Adapters' commonsense_170k: the paper's PEFT recipe.

    elm-finetune --config experiments/finetune/lora_270m.py \\
        --config.finetune.base=OpenELM-270M --config.data.tokenizer=llama2/tokenizer.model \\
        --config.finetune.train_file=commonsense_170k.json
"""

from elm_jax.finetune.recipes import peft_config


def get_config(arg=None):
    del arg
    return peft_config("270m", "lora")
