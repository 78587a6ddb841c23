"""``elm-eval``: zero-shot accuracy (lm-eval-harness's definitions), held-out perplexity, or the
lm-eval-harness itself on our model.

    elm-eval --checkpoint runs/tiny --perplexity
    elm-eval --checkpoint OpenELM-270M --tokenizer llama2/tokenizer.model \\
        --tasks arc_easy,arc_challenge,boolq,hellaswag,piqa,sciq,winogrande --data-dir evals/
    elm-eval --checkpoint OpenELM-270M --adapter runs/lora/adapter-step4375 ... (a LoRA / DoRA run)
    elm-eval --checkpoint OpenELM-270M --tokenizer llama2/tokenizer.model --harness \\
        --tasks hellaswag,arc_easy [--num_fewshot 0] [--include_path my_tasks/]

Task ``T`` reads ``DATA_DIR/T.jsonl``: the public dataset's documents, one JSON object per line, in
their own field layout (ARC: question / choices / answerKey, PIQA: goal / sol1 / sol2 / label, ...).
With ``--harness`` the tasks are lm-eval-harness's own (its datasets, prompts and metrics; the
``lmeval`` extra), scored by ``elm_jax.eval.harness.ElmJaxLM``. On several processes
(``--num_processes`` ..., see ``model_flags``) every process evaluates and process 0 prints and
writes the results.
"""

from __future__ import annotations

import json
import time

import jax
from absl import flags

from elm_jax.cli import common, model_flags
from elm_jax.errors import UsageError
from elm_jax.eval.perplexity import held_out_loss
from elm_jax.eval.tasks import get_task
from elm_jax.eval.zeroshot import evaluate_tasks

TASKS = flags.DEFINE_list("tasks", [], "comma-separated zero-shot tasks: arc_easy, arc_challenge, "
                          "boolq, hellaswag, openbookqa, piqa, sciq, siqa, winogrande (any lm-eval "
                          "task with --harness)")
DATA_DIR = flags.DEFINE_string("data_dir", None, "directory holding <task>.jsonl files")
LIMIT = flags.DEFINE_integer("limit", None, "evaluate only the first N documents of each task",
                             lower_bound=1)
BATCH = flags.DEFINE_integer("batch_size", 16, "sequences scored together", lower_bound=1)
ADD_BOS = flags.DEFINE_bool("add_bos", True, "prefix BOS to every context (as OpenELM's own "
                            "lm-eval runs did with add_bos_token=True)")
PERPLEXITY = flags.DEFINE_bool("perplexity", False, "also report loss / perplexity on the run's "
                               "validation split (run directories only)")
EVAL_BATCHES = flags.DEFINE_integer("eval_batches", None, "validation batches for --perplexity "
                                    "(default: the run's train.eval_batches; 0 = all)",
                                    lower_bound=0)
HARNESS = flags.DEFINE_bool("harness", False, "run --tasks through lm-eval-harness "
                            "(lm_eval.simple_evaluate; pip install 'elm_jax[lmeval]')")
FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "--harness: few-shot examples per question",
                               lower_bound=0)
INCLUDE = flags.DEFINE_string("include_path", None, "--harness: directory of extra lm-eval task "
                              "YAML files")
OUTPUT = flags.DEFINE_string("output", None, "also write the results as JSON to this new file")
common.hyphen_aliases(DATA_DIR, BATCH, ADD_BOS, EVAL_BATCHES, FEWSHOT, INCLUDE)


def _say(text: str) -> None:
    """Print a result line (process 0 only: every process computes the same results)."""
    if model_flags.lead():
        print(text, flush=True)


def _evaluate(opened: model_flags.Opened) -> dict[str, dict]:
    """Perplexity and / or the tasks, printed as they finish; the results by name."""
    loaded = opened.loaded
    results: dict[str, dict] = {}
    if PERPLEXITY.value:
        start = time.perf_counter()
        loss = held_out_loss(loaded.model, loaded.config, max_batches=EVAL_BATCHES.value)
        results["validation"] = loss._asdict()
        _say(f"validation: loss {loss.loss:.4f}, perplexity {loss.perplexity:.2f} "
             f"({loss.tokens} tokens, {loss.batches} batches, {time.perf_counter() - start:.1f}s)")
    if TASKS.value and HARNESS.value:
        results |= _harness(opened)
    elif TASKS.value:
        for result in evaluate_tasks(loaded.model, opened.tokenizer(), TASKS.value, DATA_DIR.value,
                                     add_bos=ADD_BOS.value, batch_size=BATCH.value,
                                     limit=LIMIT.value):
            _say(result.line())
            results[result.task] = {"count": result.count, **result.metrics}
    return results


def _harness(opened: model_flags.Opened) -> dict[str, dict]:
    """lm-eval-harness's tasks on our model; prints its results table."""
    try:  # the optional lmeval extra
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table

        from elm_jax.eval.harness import ElmJaxLM
    except ImportError as err:
        raise UsageError(f"--harness needs lm-eval-harness ({err}); pip install "
                         "'elm_jax[lmeval]'") from None
    lm = ElmJaxLM(model=opened.loaded.model, tokenizer=opened.tokenizer(),
                  add_bos_token=ADD_BOS.value, batch_size=BATCH.value)
    manager = TaskManager(include_path=INCLUDE.value)
    unknown = [t for t in TASKS.value if not manager.match_tasks([t])]
    if unknown:
        raise UsageError(f"lm-eval-harness knows no task(s) {unknown}; see `lm_eval ls tasks`"
                         + ("" if INCLUDE.value else " or pass --include_path DIR of task YAMLs"))
    out = lm_eval.simple_evaluate(model=lm, tasks=TASKS.value, num_fewshot=FEWSHOT.value,
                                  limit=LIMIT.value, task_manager=manager)
    _say(make_table(out))
    return out["results"]


def _main(argv: list[str]) -> None:
    del argv
    if not TASKS.value and not PERPLEXITY.value:
        raise UsageError("nothing to evaluate: give --tasks arc_easy,... and/or --perplexity")
    if TASKS.value and not (DATA_DIR.value or HARNESS.value):
        raise UsageError("--tasks needs --data-dir DIR holding <task>.jsonl files (or --harness "
                         "for lm-eval-harness's own tasks)")
    output = common.new_output(OUTPUT.value)
    if not HARNESS.value:
        for name in TASKS.value:
            get_task(name)  # a typo fails before the model loads
    opened = model_flags.open_model()
    if PERPLEXITY.value and opened.loaded.config is None:
        raise UsageError("--perplexity needs an elm-train run directory (its config names "
                         "the validation data); an HF directory has none")
    with jax.set_mesh(opened.mesh):
        results = _evaluate(opened)
    if output is not None and model_flags.lead():
        common.write_new_file(output, json.dumps(
            {"checkpoint": str(opened.loaded.path), "results": results}, indent=2,
            default=str) + "\n")


main = common.entry(_main)

if __name__ == "__main__":
    main()
