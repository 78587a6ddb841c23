"""``elm-eval`` on a run directory, and with ``--harness`` (lm-eval-harness) on an HF directory."""

import json

import pytest
from cli_helpers import VOCAB, run_module, tiny_run_config, write_run_dir, write_tokenizer

from elm_jax.config import ModelConfig
from elm_jax.convert.hf import load_hf
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.eval.perplexity import held_out_loss
from elm_jax.eval.zeroshot import evaluate_tasks
from elm_jax.infer.loading import load_checkpoint
from elm_jax.model import build

DOCS = [{"goal": "To sleep", "sol1": "perchance to dream", "sol2": "the slings and arrows",
         "label": 0},
        {"goal": "To be", "sol1": "or not to be", "sol2": "a sea of troubles", "label": 1},
        {"goal": "The heart-ache", "sol1": "and the thousand natural shocks", "sol2": "no more",
         "label": 0}]


@pytest.fixture
def checkpoint(random_hf_checkpoint, tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB + 10, num_layers=2, model_dim=64, head_dim=16,
                      num_gqa_groups=2, ffn_dim_divisor=32)
    path, _, _ = random_hf_checkpoint(cfg)
    tokenizer = write_tokenizer(tmp_path / "tok.model")
    data = tmp_path / "data"
    data.mkdir()
    (data / "piqa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path, tokenizer, data


def test_elm_eval_on_a_run_directory_reports_perplexity_and_tasks(checkpoint, tmp_path):
    _, _, data = checkpoint
    config = tiny_run_config(tmp_path)
    run_dir = write_run_dir(config)  # its tokenizer.model is found there
    result_file = tmp_path / "results.json"
    args = [f"--checkpoint={run_dir}", "--perplexity", "--tasks=piqa", f"--data-dir={data}",
            f"--output={result_file}"]
    out = run_module("elm_jax.cli.eval", *args)
    assert out.returncode == 0, out.stderr
    assert f"loaded step 0 of {run_dir}\n" in out.stderr  # the step it read, not on stdout

    loaded = load_checkpoint(run_dir)
    assert loaded.config == config
    model = build(config.model, seed=config.train.seed)  # what the checkpoint holds
    loss = held_out_loss(model, config)
    (want,) = evaluate_tasks(model, Tokenizer(run_dir / "tokenizer.model"), ["piqa"], data)
    assert f"validation: loss {loss.loss:.4f}, perplexity {loss.perplexity:.2f}" in out.stdout
    assert want.line() in out.stdout
    written = json.loads(result_file.read_text())["results"]
    assert written["piqa"]["count"] == 3 and written["piqa"]["acc"] == want.metrics["acc"]
    assert written["validation"]["loss"] == pytest.approx(loss.loss, rel=1e-5)
    again = run_module("elm_jax.cli.eval", *args)
    assert again.returncode == 2 and "exists" in again.stderr  # results are never overwritten


def test_elm_eval_harness_runs_lm_eval_tasks_on_our_model(checkpoint, tmp_path):
    """``elm-eval --harness``: lm-eval-harness's own task machinery (a local YAML task here, as no
    dataset can be downloaded) scores our model; its accuracy equals our own zero-shot scoring."""
    path, tokenizer, data = checkpoint
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_piqa.yaml").write_text(
        "task: tiny_piqa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {data / 'piqa.jsonl'}\noutput_type: multiple_choice\n"
        "validation_split: validation\ndoc_to_text: \"Question: {{goal}}\\nAnswer:\"\n"
        "doc_to_target: label\ndoc_to_choice: \"{{[sol1, sol2]}}\"\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    result_file = tmp_path / "harness.json"
    out = run_module("elm_jax.cli.eval", f"--checkpoint={path}", f"--tokenizer={tokenizer}",
                     "--harness", "--tasks=tiny_piqa", f"--include_path={tasks}",
                     "--batch_size=4", f"--output={result_file}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tiny_piqa" in out.stdout  # lm-eval's results table
    theirs = json.loads(result_file.read_text())["results"]["tiny_piqa"]
    _, model = load_hf(path)
    (ours,) = evaluate_tasks(model, Tokenizer(tokenizer), ["piqa"], data)
    assert theirs["acc,none"] == pytest.approx(ours.metrics["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"])
    unknown = run_module("elm_jax.cli.eval", f"--checkpoint={path}", f"--tokenizer={tokenizer}",
                         "--harness", "--tasks=no_such_task")
    assert unknown.returncode == 2 and "no_such_task" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
