"""``elm-generate`` end to end: an HF directory with its tokenizer.model, streamed to stdout."""

import json

import numpy as np
from cli_helpers import VOCAB, run_module, write_tokenizer

from elm_jax.config import ModelConfig
from elm_jax.convert.hf import load_hf
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.infer import generate


def test_generate_streams_the_greedy_completion(random_hf_checkpoint, tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB + 10, num_layers=2, model_dim=64, head_dim=16,
                      num_gqa_groups=2, ffn_dim_divisor=32)
    path, _, _ = random_hf_checkpoint(cfg)
    write_tokenizer(path / "tokenizer.model")  # found next to the weights
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be, or not\n\nthe slings and\n")
    out = run_module("elm_jax.cli.generate", f"--checkpoint={path}", f"--prompts-file={prompts}",
                  "--max-new-tokens=6", f"--output={tmp_path / 'out.jsonl'}")
    assert out.returncode == 0, out.stderr

    _, model = load_hf(path)
    tok = Tokenizer(path / "tokenizer.model")
    expected = []
    for text in ("To be, or not", "the slings and"):
        ids = tok.encode(text, bos=True, eos=False)
        row = np.asarray(generate(model, [ids], 6, eos_id=tok.eos_id))[0].tolist()
        new = row[len(ids):]
        new = new[:new.index(tok.eos_id)] if tok.eos_id in new else new
        expected.append((text, tok.decode(ids + new)[len(tok.decode(ids)):], len(new)))
    assert out.stdout == "".join(f"{t}{c}\n" for t, c, _ in expected)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["completion"], r["new_tokens"]) for r in records] == expected


def test_generate_without_a_tokenizer_says_what_to_pass(random_hf_checkpoint):
    cfg = ModelConfig(vocab_size=64, num_layers=1, model_dim=32, head_dim=16, num_gqa_groups=1,
                      ffn_dim_divisor=32)
    path, _, _ = random_hf_checkpoint(cfg)
    out = run_module("elm_jax.cli.generate", f"--checkpoint={path}", "--prompt=hello")
    assert out.returncode == 2
    assert "--tokenizer" in out.stderr and "Traceback" not in out.stderr
