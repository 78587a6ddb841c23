"""``elm-train`` as a user runs it: the real data pipeline (JSONL corpus, our own SentencePiece
model), a finished run with its report, automatic resume, a one-line error for a bad run dir, and
the process side: Ctrl-C saves, SIGTERM during start-up exits 0, a killed trainer leaves no worker."""

import json
import os
import re
import signal
import subprocess
import sys
import time
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


def train_env():
    return os.environ | {  # one CPU device; quick XLA compiles (as the in-process tests' FAST_COMPILE)
        "XLA_FLAGS": "--xla_backend_optimization_level=0", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": os.environ["ELM_JAX_TEST_COMPILE_CACHE"]}


def elm_train(*args):
    return subprocess.run([sys.executable, "-m", "elm_jax.cli.train", *args], capture_output=True,
                          text=True, cwd=ROOT, env=train_env(), timeout=300)


def test_elm_train_runs_reports_and_resumes(experiment):
    config, run_dir, tokenizer = experiment
    out = elm_train("--config", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "starting from scratch" in out.stdout and out.stdout.count("sample: ") == 2
    assert "batch 8 x 32: 1 microbatch(es) of 8 sequence(s) per device" in out.stdout
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
    # Resumed with gradient accumulation chosen from the per-device limit (same global batch).
    more = elm_train("--config", str(config), "--config.train.steps=8",
                     "--config.train.microbatches=auto", "--config.train.max_sequences_per_device=3")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resumed at step 6" in more.stdout and "done: step 8" in more.stdout
    assert ("batch 8 x 32: 4 microbatch(es) of 2 sequence(s) per device (train.microbatches=auto: "
            "at most 3 per device)") in more.stdout


def test_elm_train_refuses_a_run_dir_of_another_model_in_one_line(experiment):
    config, run_dir, _ = experiment
    out = elm_train("--config", str(config), "--config.model.model_dim=96",
                    f"--config.train.run_dir={run_dir}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "different model" in out.stderr and "Traceback" not in out.stderr


class Trainer:
    """``elm-train`` in the background, in its own process group (as a shell job: Ctrl-C in a
    terminal reaches the whole group), its output unbuffered into files to watch."""

    def __init__(self, logs: Path, *args, python: tuple[str, ...] = ()):
        self.out, self.err = logs.with_suffix(".out"), logs.with_suffix(".err")
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *python, "-m", "elm_jax.cli.train", *args], stdout=out, stderr=err,
                cwd=ROOT,
                env=train_env() | {"PYTHONUNBUFFERED": "1"}, start_new_session=True)

        self.seen: set[tuple[int, str]] = set()

    def below(self) -> list[tuple[int, str]]:
        """The trainer's descendants now (and remembered, to clean up after the test)."""
        found = processes_below(self.proc.pid)
        self.seen.update(found)
        return found

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        """Whatever the test's outcome, leave nothing of this trainer running."""
        self.below()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid, _ in [p for p in self.seen if running(p)]:
            os.kill(pid, signal.SIGKILL)

    def wait_for(self, predicate, timeout=240):
        end = time.time() + timeout
        while not predicate():
            self.below()
            assert self.proc.poll() is None, self.err.read_text()[-3000:]
            assert time.time() < end, "timed out"
            time.sleep(0.05)

    def finish(self, timeout=240) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        return code, self.out.read_text(), self.err.read_text()


def processes_below(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every descendant of ``pid`` (from /proc)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def running(process: tuple[int, str]) -> bool:
    """Whether that process (same pid and start time) still runs (a zombie holds nothing)."""
    try:
        fields = Path(f"/proc/{process[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == process[1] and fields[0] != "Z"


def still_running(processes: list[tuple[int, str]], grace: float = 10.0) -> list[tuple[int, str]]:
    """Those of ``processes`` still running after up to ``grace`` seconds."""
    end = time.time() + grace
    while (alive := [p for p in processes if running(p)]) and time.time() < end:
        time.sleep(0.1)
    return alive


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(r)["step"] for r in path.read_text().splitlines()] if path.exists() else []


def grain_workers(processes: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Those of ``processes`` that are multiprocessing ``spawn`` children (grain's workers)."""
    def spawned(pid: int) -> bool:
        try:
            return b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    return [p for p in processes if spawned(p[0])]


def ready(worker: tuple[int, str]) -> bool:
    """Whether a grain worker has started (imports done, bound to the trainer: it then ignores
    SIGTERM, which a starting Python process does not)."""
    try:
        status = Path(f"/proc/{worker[0]}/status").read_text()
    except OSError:
        return False
    ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(ignored >> (signal.SIGTERM - 1) & 1)


def test_a_killed_trainer_leaves_no_worker(experiment, tmp_path):
    config, _, _ = experiment
    with Trainer(tmp_path / "log", "--config", str(config), "--config.data.num_workers=2",
                 f"--config.train.run_dir={tmp_path / 'run'}") as trainer:
        # during start-up (the unigram entropy pass reads through the workers)
        trainer.wait_for(lambda: sum(map(ready, grain_workers(trainer.below()))) >= 2)
        below = trainer.below()  # the workers and multiprocessing's resource tracker
        trainer.proc.kill()  # kill -9: the trainer cannot close anything
        trainer.proc.wait()
        survivors = still_running(below)
        assert not survivors, f"still running after the trainer was killed: {survivors}"


def test_ctrl_c_saves_the_step_and_exits_zero(experiment, tmp_path):
    config, _, _ = experiment
    run_dir = tmp_path / "run"
    with Trainer(tmp_path / "log", "--config", str(config), f"--config.train.run_dir={run_dir}",
                 "--config.data.num_workers=1", "--config.train.steps=100000",
                 "--config.train.log_every=1", "--config.train.eval_every=1000") as trainer:
        trainer.wait_for(lambda: len(logged_steps(run_dir)) >= 2)
        below = trainer.below()
        assert grain_workers(below)
        os.killpg(trainer.proc.pid, signal.SIGINT)  # as Ctrl-C does: the workers get it too
        code, out, err = trainer.finish()
        assert not still_running(below)  # the workers were closed on the way out
    assert code == 0 and "Traceback" not in err, err[-3000:]
    step = int(re.search(r"saved the checkpoint of step (\d+)", out).group(1))
    assert (run_dir / "checkpoints" / str(step)).is_dir() and max(logged_steps(run_dir)) == step


def test_sigterm_during_start_up_exits_zero(experiment, tmp_path):
    config, _, _ = experiment
    with Trainer(tmp_path / "log", "--config", str(config),
                 f"--config.train.run_dir={tmp_path / 'run'}") as trainer:
        # start-up goes on after this line: the sharding report, the unigram entropy of 1M tokens
        trainer.wait_for(lambda: "starting from scratch" in trainer.out.read_text())
        trainer.proc.send_signal(signal.SIGTERM)
        code, out, err = trainer.finish()
    assert code == 0, err[-3000:]
    assert "stopped by SIGTERM outside the training steps" in out and "Traceback" not in err
    assert logged_steps(tmp_path / "run") == []


def test_sigterm_while_the_modules_import_exits_zero(experiment, tmp_path):
    config, _, _ = experiment
    # -X importtime: one stderr line per finished import, so the signal can be sent right after
    # elm_jax.cli has loaded, while jax, flax and orbax are still to come
    with Trainer(tmp_path / "log", "--config", str(config), f"--config.train.run_dir={tmp_path / 'run'}",
                 python=("-X", "importtime")) as trainer:
        trainer.wait_for(lambda: re.search(r"\| elm_jax\.cli$", trainer.err.read_text(), re.M), timeout=120)
        trainer.proc.send_signal(signal.SIGTERM)
        code, out, err = trainer.finish()
    assert code == 0, err[-3000:]
    assert "stopped by SIGTERM before the run started" in err and "Traceback" not in err
    assert not re.search(r"\| +elm_jax\.train\.loop$", err, re.M)  # it stopped during the imports
    assert not (tmp_path / "run").exists()
