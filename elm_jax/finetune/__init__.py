"""Fine-tuning on the training loop: LoRA / DoRA adapters, full or partial unfreezing, SFT and DPO.

``paths`` names and selects parameters, ``adapters`` builds and merges adapters, ``objective`` turns
a fine-tuning config into the train step's ``Objective``, ``data`` feeds it instruction / chat /
preference records, ``run`` is ``elm-finetune``, ``export`` writes merged models and adapters.
"""
