"""For command-line tests: a tiny LLaMA-convention SentencePiece model and a module runner."""

import io
import os
import subprocess
import sys
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[1]

TEXT = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;""".splitlines()
VOCAB = 150


def write_tokenizer(path, text=TEXT, **options):
    """Train (in well under a second) on ``text`` and write ``path``; returns it. ``options`` go
    to the SentencePiece trainer."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text * 5), model_writer=model, vocab_size=VOCAB, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2, **options)
    path.write_bytes(model.getvalue())
    return path


def run_module(module, *args, timeout=300):
    """``python -m module args`` with this checkout first on the path (CPU only)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def tiny_run_config(tmp_path, **train):
    """A validated Config: a 2-layer model over JSONL train / validation splits of ``TEXT``,
    tokenized with ``write_tokenizer``'s model, run directory ``tmp_path / "run"``."""
    import json

    from elm_jax.config import default_config, from_config_dict

    def jsonl(name, lines):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": " ".join(lines[i:] + lines[:i])}) + "\n"
                                for i in range(len(lines))))
        return str(path)

    cd = default_config()
    cd.model.update(vocab_size=VOCAB + 10, num_layers=2, model_dim=64, head_dim=16)
    cd.data.update(sources=[{"kind": "jsonl", "train": jsonl("train.jsonl", TEXT[:6]),
                             "validation": jsonl("val.jsonl", TEXT[6:])}],
                   tokenizer=str(write_tokenizer(tmp_path / "tok.model")), pad_id=VOCAB,
                   seq_len=16, mode="pack", words_per_piece=64, min_chars=10, min_tokens=4,
                   cache_dir=str(tmp_path / "cache"))
    cd.train.update(batch_size=2, eval_batches=2, run_dir=str(tmp_path / "run"), **train)
    return from_config_dict(cd)


def write_run_dir(config):
    """An elm-train run directory (config.json, tokenizer.model, one orbax checkpoint at step 0)
    holding ``build(config.model, config.train.seed)``, without training."""
    from elm_jax.checkpoint import Checkpointer
    from elm_jax.parallel.mesh import single_device_mesh
    from elm_jax.rundir import prepare_run_dir
    from elm_jax.train.step import make_train_step

    run_dir = prepare_run_dir(config, config.data.tokenizer)
    state = make_train_step(config, single_device_mesh()).init()
    checkpointer = Checkpointer(run_dir, config)
    checkpointer.save(0, *state.checkpoint_items())
    checkpointer.wait()
    checkpointer.close()
    return run_dir
