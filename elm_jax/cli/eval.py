"""``elm-eval``: zero-shot accuracy (lm-eval-harness's definitions) and held-out perplexity.

    elm-eval --checkpoint runs/tiny --perplexity
    elm-eval --checkpoint OpenELM-270M --tokenizer llama2/tokenizer.model \\
        --tasks arc_easy,arc_challenge,boolq,hellaswag,piqa,sciq,winogrande --data-dir evals/

Task ``T`` reads ``DATA_DIR/T.jsonl``: the public dataset's documents, one JSON object per line, in
their own field layout (ARC: question / choices / answerKey, PIQA: goal / sol1 / sol2 / label, ...).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from absl import flags

from elm_jax.cli import common

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "elm-train run directory or HF OpenELM "
                                 "directory", required=True)
TOKENIZER = flags.DEFINE_string("tokenizer", None, "SentencePiece tokenizer.model (default: the "
                                "one in the checkpoint directory)")
TASKS = flags.DEFINE_list("tasks", [], "comma-separated zero-shot tasks: arc_easy, arc_challenge, "
                          "boolq, hellaswag, piqa, sciq, winogrande")
DATA_DIR = flags.DEFINE_string("data_dir", None, "directory holding <task>.jsonl files")
LIMIT = flags.DEFINE_integer("limit", None, "evaluate only the first N documents of each task",
                             lower_bound=1)
BATCH = flags.DEFINE_integer("batch_size", 16, "sequences scored together", lower_bound=1)
ADD_BOS = flags.DEFINE_bool("add_bos", True, "prefix BOS to every context (as OpenELM's own "
                            "lm-eval runs did with add_bos_token=True)")
DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                          "compute dtype (default: the checkpoint's)")
PERPLEXITY = flags.DEFINE_bool("perplexity", False, "also report loss / perplexity on the run's "
                               "validation split (run directories only)")
EVAL_BATCHES = flags.DEFINE_integer("eval_batches", None, "validation batches for --perplexity "
                                    "(default: the run's train.eval_batches; 0 = all)",
                                    lower_bound=0)
OUTPUT = flags.DEFINE_string("output", None, "also write the results as JSON to this new file")
TENSOR = flags.DEFINE_integer("tensor_parallel", 1, "devices that split each layer's heads and "
                             "FFN (the rest split the batch)", lower_bound=1)
common.hyphen_aliases(TENSOR, DATA_DIR, BATCH, ADD_BOS, EVAL_BATCHES)


def _evaluate(loaded) -> dict[str, dict]:
    """Perplexity and / or the tasks, printed as they finish; the results by name."""
    from elm_jax.infer.loading import load_tokenizer

    results: dict[str, dict] = {}
    if PERPLEXITY.value:
        from elm_jax.eval.perplexity import held_out_loss

        start = time.perf_counter()
        loss = held_out_loss(loaded.model, loaded.config, max_batches=EVAL_BATCHES.value)
        results["validation"] = loss._asdict()
        print(f"validation: loss {loss.loss:.4f}, perplexity {loss.perplexity:.2f} "
              f"({loss.tokens} tokens, {loss.batches} batches, {time.perf_counter() - start:.1f}s)")
    if TASKS.value:
        from elm_jax.eval.zeroshot import evaluate_tasks

        try:
            tokenizer = load_tokenizer(loaded, TOKENIZER.value)
            for result in evaluate_tasks(loaded.model, tokenizer, TASKS.value, DATA_DIR.value,
                                         add_bos=ADD_BOS.value, batch_size=BATCH.value,
                                         limit=LIMIT.value):
                print(result.line(), flush=True)
                results[result.task] = {"count": result.count, **result.metrics}
        except ValueError as err:
            raise common.UserError(str(err)) from None
    return results


def _main(argv: list[str]) -> None:
    del argv
    from elm_jax.eval.tasks import get_task
    from elm_jax.infer.loading import inference_mesh, load_checkpoint
    from elm_jax.train.checkpoint import CheckpointError as RunCheckpointError

    if not TASKS.value and not PERPLEXITY.value:
        raise common.UserError("nothing to evaluate: give --tasks arc_easy,... and/or --perplexity")
    if TASKS.value and not DATA_DIR.value:
        raise common.UserError("--tasks needs --data-dir DIR holding <task>.jsonl files")
    output = Path(OUTPUT.value) if OUTPUT.value else None
    if output is not None and output.exists():
        raise common.UserError(f"--output {output} exists; choose a new file")
    try:
        for name in TASKS.value:
            get_task(name)  # a typo fails before the model loads
        mesh = inference_mesh(TENSOR.value)
        loaded = load_checkpoint(CHECKPOINT.value, dtype=DTYPE.value, mesh=mesh)
    except (KeyError, ValueError, RunCheckpointError) as err:
        raise common.UserError(str(err).strip("'\"")) from None
    if PERPLEXITY.value and loaded.config is None:
        raise common.UserError("--perplexity needs an elm-train run directory (its config names "
                               "the validation data); an HF directory has none")
    import jax

    with jax.set_mesh(mesh):
        results = _evaluate(loaded)
    if output is not None:
        common.write_new_file(output, json.dumps(
            {"checkpoint": str(loaded.path), "results": results}, indent=2) + "\n")


def main() -> None:
    common.run(_main)


if __name__ == "__main__":
    main()
