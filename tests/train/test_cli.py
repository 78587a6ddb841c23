"""``elm-train`` as a user runs it: the real data pipeline (JSONL corpus, our own SentencePiece
model), a finished run with its report, automatic resume, and a one-line error for a bad run dir."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["the", "king", "queen", "lord", "lady", "night", "day", "love", "death", "sword", "crown",
         "heart", "blood", "fair", "sweet", "noble", "thou", "thee", "thy", "my", "speak", "hear"]

EXPERIMENT = """
from elm_jax.config import default_config

def get_config(arg=None):
    c = default_config()
    c.name = "cli"
    c.model.vocab_size, c.model.num_layers, c.model.model_dim = 512, 2, 64
    c.model.head_dim, c.model.num_gqa_groups, c.model.ffn_dim_divisor = 16, 2, 32
    c.data.sources = [{{"kind": "jsonl", "train": "{train}", "validation": "{validation}"}}]
    c.data.tokenizer, c.data.pad_id, c.data.seq_len, c.data.mode = "{tokenizer}", 384, 32, "pack"
    c.data.words_per_piece, c.data.min_chars, c.data.min_tokens = 64, 10, 4
    c.train.steps, c.train.batch_size, c.train.log_every, c.train.eval_every = 6, 8, 2, 3
    c.train.save_every, c.train.eval_batches, c.train.sample_lines = 3, 2, 2
    c.train.warmup_steps, c.train.cosine_period, c.train.run_dir = 2, 10, "{run_dir}"
    c.mesh.data = 1
    return c
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from elm_jax.data.tokenizer import train_sentencepiece

    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    docs = {split: [" ".join(rng.choice(WORDS, 80)) + "." for _ in range(n)]
            for split, n in (("train", 300), ("validation", 40))}
    for split, texts in docs.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = train_sentencepiece(docs["train"], root / "tok.model", vocab_size=384)
    path = root / "experiment.py"
    path.write_text(EXPERIMENT.format(train=root / "train.jsonl", validation=root / "validation.jsonl",
                                      tokenizer=tokenizer, run_dir=root / "run"))
    return path, root / "run", tokenizer


def elm_train(*args):
    env = os.environ | {  # one CPU device; quick XLA compiles (as the in-process tests' FAST_COMPILE)
        "XLA_FLAGS": "--xla_backend_optimization_level=0", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": os.environ["ELM_JAX_TEST_COMPILE_CACHE"]}
    return subprocess.run([sys.executable, "-m", "elm_jax.cli.train", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def test_elm_train_runs_reports_and_resumes(experiment):
    config, run_dir, tokenizer = experiment
    out = elm_train("--config", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "starting from scratch" in out.stdout and out.stdout.count("sample: ") == 2
    done = [line for line in out.stdout.splitlines() if line.startswith("done: step 6")]
    assert done and "validation loss" in done[0] and "unigram entropy of the data" in done[0]
    assert (run_dir / "tokenizer.model").read_bytes() == Path(tokenizer).read_bytes()
    assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 6
    assert (run_dir / "hf-step6" / "model.safetensors").exists()
    logged = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2, 3, 4, 6]
    # stdout is no terminal here: one plain progress line per logged step, the loss as recorded
    plain = [line for line in out.stdout.splitlines() if line.startswith("step ") and "/6: " in line]
    assert [line.split("/")[0] for line in plain] == ["step 2", "step 3", "step 4", "step 6"]
    assert f"loss {logged[0]['loss']:.4g}" in plain[0] and "tokens/s, ETA 0:" in plain[0]
    assert "INFO" not in out.stderr  # quiet by default: no orbax / absl INFO lines
    more = elm_train("--config", str(config), "--config.train.steps=8")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resumed at step 6" in more.stdout and "done: step 8" in more.stdout


def test_elm_train_refuses_a_run_dir_of_another_model_in_one_line(experiment):
    config, run_dir, _ = experiment
    out = elm_train("--config", str(config), "--config.model.model_dim=96",
                    f"--config.train.run_dir={run_dir}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "different model" in out.stderr and "Traceback" not in out.stderr
