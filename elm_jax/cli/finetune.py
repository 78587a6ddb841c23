"""``elm-finetune``: fine-tune an HF OpenELM or an elm-train run (LoRA, DoRA, full; SFT or DPO).

    elm-finetune                                   # the Shakespeare demo on runs/tiny (elm-train)
    elm-finetune --config experiments/finetune/lora_270m.py \\
        --config.finetune.base=OpenELM-270M --config.data.tokenizer=llama2/tokenizer.model \\
        --config.finetune.train_file=commonsense_170k.json

Resumes ``train.run_dir`` when it holds checkpoints: SIGTERM or Ctrl-C saves the step in progress
and exits 0 (also while it starts: nothing to save then), and the same command continues. Leaves
``hf-step<N>/`` (the merged model, HF layout) and ``adapter-step<N>/`` (what was trained, for
``elm-generate --adapter`` / ``elm-eval --adapter``) in the run directory.
"""

from __future__ import annotations

from elm_jax.cli import common
from elm_jax.cli.stopping import run_until_stopped
from elm_jax.finetune.run import finetune

CONFIG = common.define_config_flag(common.default_experiment("finetune/shakespeare_lora"))


def _main(argv: list[str]) -> None:
    del argv
    config = common.load_config(CONFIG)
    result = run_until_stopped(config, finetune)
    if result is None or result.train.preempted:
        return
    summary = f"done: step {result.train.step}"
    if result.train.train_loss is not None:
        summary += f", train loss {result.train.train_loss:.3f}"
    if result.train.val_loss is not None:
        summary += f", validation loss {result.train.val_loss:.3f}"
    if result.before is not None and result.after is not None:
        summary += (f"; held-out accuracy {result.before.metrics['acc']:.3f} -> "
                    f"{result.after.metrics['acc']:.3f}")
    print(summary)


main = common.entry(_main, stops_cleanly=True)

if __name__ == "__main__":
    main()
