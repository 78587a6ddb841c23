"""``elm-eval`` and ``elm-generate`` on two processes (one device each, so every batch is split
across the processes): they join the run, give the results of one process, and only process 0
prints and writes them."""

import json
import re
import sys

import numpy as np
from cli_helpers import tiny_run_config, write_run_dir
from localhost import explicit_envs, run_commands

PIQA = [{"goal": "To sleep", "sol1": "perchance to dream", "sol2": "the slings and arrows",
         "label": 0},
        {"goal": "To be", "sol1": "or not to be", "sol2": "a sea of troubles", "label": 1},
        {"goal": "The heart-ache", "sol1": "and the thousand natural shocks", "sol2": "no more",
         "label": 0}]
PROMPTS = ["To be, or not", "the slings and", "Whether"]
NEW_TOKENS = 5


def _on_two_processes(module, *args):
    finished = run_commands([[sys.executable, "-m", module, *args]] * 2, explicit_envs(2, 1),
                            timeout=600)
    for done in finished:
        assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    # gloo (CPU collectives only) announces its connections on stdout
    lead, other = ("".join(line for line in done.stdout.splitlines(keepends=True)
                           if not line.startswith("[Gloo]")) for done in finished)
    assert other == ""  # process 1 computes but prints nothing
    return lead


def test_eval_and_generate_on_two_processes_match_one_process(tmp_path):
    from elm_jax.data.pipeline import make_iterator
    from elm_jax.data.tokenizer import Tokenizer
    from elm_jax.eval.perplexity import evaluate_loss
    from elm_jax.eval.zeroshot import evaluate_tasks
    from elm_jax.infer import generate
    from elm_jax.model import build

    config = tiny_run_config(tmp_path)
    run_dir = write_run_dir(config)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "piqa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in PIQA))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    evaluated = _on_two_processes(
        "elm_jax.cli.eval", f"--checkpoint={run_dir}", "--perplexity", "--tasks=piqa",
        f"--data-dir={tasks}", "--batch_size=4", f"--output={tmp_path / 'eval.json'}")
    generated = _on_two_processes(
        "elm_jax.cli.generate", f"--checkpoint={run_dir}", f"--prompts-file={prompts}",
        "--batch_size=2", f"--max-new-tokens={NEW_TOKENS}", f"--output={tmp_path / 'gen.jsonl'}")

    # One process, no mesh: the model the checkpoint holds, scored and decoded directly. Each of
    # the two processes loads its data shard of the validation split: here both, side by side.
    model = build(config.model, seed=config.train.seed)
    tokenizer = Tokenizer(run_dir / "tokenizer.model")
    shards = [make_iterator(config, "validation", process_index=i, process_count=2)
              for i in range(2)]
    held_out = []
    for _ in range(config.train.eval_batches):
        parts = [next(shard) for shard in shards]
        held_out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    loss = evaluate_loss(model, held_out)
    (piqa,) = evaluate_tasks(model, tokenizer, ["piqa"], tasks, batch_size=4)

    shown = re.search(r"validation: loss ([\d.]+), perplexity [\d.]+ \((\d+) tokens, (\d+) batches",
                      evaluated)
    assert shown and int(shown[2]) == loss.tokens and int(shown[3]) == loss.batches
    assert abs(float(shown[1]) - loss.loss) < 1e-4
    assert piqa.line() in evaluated
    written = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert np.isclose(written["validation"]["loss"], loss.loss, rtol=1e-5)
    assert written["piqa"]["acc"] == piqa.metrics["acc"] and written["piqa"]["count"] == 3

    expected = []
    for text in PROMPTS:
        ids = tokenizer.encode(text, bos=True, eos=False)
        row = np.asarray(generate(model, [ids], NEW_TOKENS, eos_id=tokenizer.eos_id))[0].tolist()
        new = row[len(ids):]
        new = new[:new.index(tokenizer.eos_id)] if tokenizer.eos_id in new else new
        expected.append(text + tokenizer.decode(ids + new)[len(tokenizer.decode(ids)):])
    assert generated == "".join(f"{text}\n\n" for text in expected[:2]) + f"{expected[2]}\n"
    records = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert [r["prompt"] + r["completion"] for r in records] == expected
