"""``elm-data`` end to end in subprocesses: prepare (offline archive), inspect, train-tokenizer."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def elm_data(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "elm_jax.cli.data", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=240)


def experiment(tmp_path, sources):
    """An experiment file: the tiny config with other sources (lists of dicts need a file)."""
    path = tmp_path / "exp.py"
    tiny = str(ROOT / "experiments" / "tiny.py")
    path.write_text("import importlib.util, pathlib\n"
                    f"spec = importlib.util.spec_from_file_location('tiny', {tiny!r})\n"
                    "tiny = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiny)\n"
                    "def get_config(arg=None):\n"
                    "    config = tiny.get_config()\n"
                    f"    config.data.sources = {sources!r}\n"
                    "    config.data.pad_id = 512\n"
                    "    return config\n")
    return path


def test_prepare_inspect_and_train_tokenizer(shakespeare_archive, tmp_path, jsonl_source, documents):
    cache = {"ELM_JAX_CACHE": str(tmp_path / "cache")}
    small = ["--config.data.tokenizer_vocab_size=400", "--config.data.pad_id=400",
             "--config.train.batch_size=2"]
    out = elm_data("prepare", "shakespeare", f"--archive={shakespeare_archive}", *small, env_extra=cache)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cache" / "shakespeare" / "tokenizer_bpe_400.model").is_file()
    out = elm_data("inspect", "--batches=1", "--rows=1", "--split=validation", *small, env_extra=cache)
    assert out.returncode == 0, out.stderr
    assert "batch 0: inputs int32[2, 128]" in out.stdout and "emitted_tokens" in out.stdout

    src = jsonl_source(documents(300, words=(20, 80)))
    out = elm_data("train-tokenizer", f"--config={experiment(tmp_path, [src])}",
                   f"--output={tmp_path / 'mine.model'}", "--model_type=unigram",
                   "--config.data.tokenizer_vocab_size=400")
    assert out.returncode == 0, out.stderr
    import sentencepiece as spm

    model = spm.SentencePieceProcessor(model_file=str(tmp_path / "mine.model"))
    assert model.get_piece_size() == 400 and model.bos_id() == 1 and model.eos_id() == 2


def test_user_errors_are_one_line_with_exit_2(tmp_path, spm_model):
    out = elm_data("prepare", "hamlet", env_extra={"ELM_JAX_CACHE": str(tmp_path)})
    assert out.returncode == 2
    assert out.stderr.strip().endswith("knows one corpus, 'shakespeare'; got ['hamlet']")
    config = experiment(tmp_path, [{"kind": "text", "train": "/nonexistent/x.txt"}])
    out = elm_data("inspect", f"--config={config}", f"--config.data.tokenizer={spm_model}")
    assert out.returncode == 2, out.stderr
    assert "error: data.sources[0].train: no file matches '/nonexistent/x.txt'" in out.stderr
    assert "Traceback" not in out.stderr
