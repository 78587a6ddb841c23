"""Kill elm-sweep in the middle of its second cell, rerun it: the finished cell is not trained again,
the killed one resumes from its checkpoint, and the results table covers both."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

from cli_helpers import ROOT, TEXT, VOCAB, write_tokenizer

from elm_jax.config import default_config, from_config_dict, to_config_dict

SWEEP = """
import json
import ml_collections

def get_config(arg=None):
    sweep = ml_collections.ConfigDict()
    sweep.name = "resume"
    sweep.base = json.load(open({base!r}))
    sweep.axes = [{{"field": "train.seed", "values": [0, 1]}}]
    return sweep
"""


def write_sweep(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(TEXT[i:] + TEXT[:i])}) + "\n"
                              for i in range(len(TEXT))))
    cd = default_config()
    cd.model.update(vocab_size=VOCAB + 10, num_layers=1, model_dim=32, head_dim=16, num_gqa_groups=1,
                    ffn_multipliers=(1.0, 2.0), ffn_dim_divisor=32)
    cd.data.update(sources=[{"kind": "jsonl", "train": str(corpus), "validation": str(corpus)}],
                   tokenizer=str(write_tokenizer(tmp_path / "tok.model")), pad_id=VOCAB, seq_len=16,
                   mode="pack", words_per_piece=64, min_chars=10, min_tokens=4,
                   cache_dir=str(tmp_path / "cache"))
    cd.train.update(steps=8, batch_size=2, eval_batches=1, eval_every=4, log_every=2, save_every=2,
                    warmup_steps=2, cosine_period=6, sample_lines=0)
    (tmp_path / "base.json").write_text(to_config_dict(from_config_dict(cd)).to_json())
    (tmp_path / "sweep.py").write_text(SWEEP.format(base=str(tmp_path / "base.json")))
    return tmp_path / "sweep.py"


def checkpoints(run_dir):
    path = run_dir / "checkpoints"
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


def test_killed_sweep_resumes_without_retraining_finished_cells(tmp_path):
    sweep, out = write_sweep(tmp_path), tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", JAX_PLATFORMS="cpu",
               SLOW_SAVE_SECONDS="1.5", SLOW_SAVE_CELL="seed1-",
               XLA_FLAGS="")  # one CPU device, not the tests' eight
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/explore/slow_saves.py"), f"--sweep={sweep}",
                             f"--out={out}"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            second = [d for d in out.glob("seed1-*") if d.is_dir()]
            if second and checkpoints(second[0]):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "elm-sweep ended before the test could kill it:\n" + proc.stdout.read()
        proc.send_signal(signal.SIGKILL)  # no chance to save: the newest checkpoint is what remains
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    first, second = next(out.glob("seed0-*")), next(out.glob("seed1-*"))
    finished = (first / "metrics.jsonl").read_bytes()
    assert json.loads(finished.splitlines()[-1])["step"] == 8
    killed_at = checkpoints(second)[-1]
    assert killed_at < 8

    rerun = subprocess.run([sys.executable, "-m", "elm_jax.cli.sweep", f"--sweep={sweep}", f"--out={out}"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    lines = rerun.stdout.splitlines()
    assert "seed0: finished before, skipped" in lines
    assert any(line.startswith("seed1: resuming (8 steps)") for line in lines)
    assert (first / "metrics.jsonl").read_bytes() == finished  # not a step of it was trained again
    assert f"resumed at step {killed_at}" in (second / "sweep.log").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["cell"], r["status"], r["tokens"]) for r in rows] == [("seed0", "done", str(8 * 32)),
                                                                     ("seed1", "done", str(8 * 32))]
    assert all(float(r["val_loss"]) > 0 for r in rows)
