"""A ``gs://`` run directory stays in the bucket end to end (checkpoints, metrics, TensorBoard
events, config, HF export, lock), against a local GCS emulator: train, SIGKILL, resume, export.
Every GCS client runs in a child process started with the emulator's environment (see
tests/gcs_emulator.py), so none of them can reach for a real endpoint."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gcs_emulator import emulator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

LOCKS = """
import json, os, sys, time
from etils import epath
from elm_jax.errors import TrainingError
from elm_jax.runlock import RunLock
run_dir = epath.Path(sys.argv[1])
first = RunLock(run_dir, settle_seconds=0.1)
first.acquire()
try:
    RunLock(run_dir, settle_seconds=0.1).acquire()
except TrainingError as err:
    print("REFUSED", err)
first.release()
(run_dir / "run.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "x",
                                              "time": time.time() - 3600}))
with RunLock(run_dir, settle_seconds=0.1):
    print("TOOK", json.loads((run_dir / "run.lock").read_text())["pid"] == os.getpid())
print("RELEASED", not (run_dir / "run.lock").exists())
"""


def child_env(emu, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    return env | emu.env | {
        "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": os.environ["ELM_JAX_TEST_COMPILE_CACHE"],
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def train(env, cwd, steps, delay, *extra):
    return subprocess.Popen([sys.executable, str(HERE / "run_synthetic.py"), "gs://bkt/run",
                             str(steps), str(delay), *extra], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_train_kill_resume_and_export_in_a_gs_run_directory(tmp_path):
    with emulator() as emu:
        emu.create_bucket("bkt")
        env = child_env(emu, tmp_path)
        first = train(env, tmp_path, 6, 0.5)
        end = time.time() + 240
        while "run/checkpoints/3/commit_success.txt" not in emu.objects("bkt", "run/checkpoints/3/"):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < end, "no checkpoint at step 3"
            time.sleep(0.2)
        first.kill()
        first.wait()
        second = train(env, tmp_path, 6, 0, "export")
        out, err = second.communicate(timeout=240)
        assert second.returncode == 0, err[-3000:]
        assert "RESULT step=6" in out and "resumed at step" in out, out
        names = set(emu.objects("bkt", "run/"))
        assert {"run/config.json", "run/hf-step6/config.json", "run/hf-step6/model.safetensors",
                "run/checkpoints/6/checksums/metadata", "run/metrics.jsonl"} <= names
        assert any(n.startswith("run/tensorboard/events.out.tfevents.") for n in names)
        assert "run/run.lock" not in names  # released at the end
        logged = [json.loads(line)["step"] for line in
                  emu.read("bkt", "run/metrics.jsonl").decode().splitlines()]
        assert logged[-3:] == [4, 5, 6]

        locks = subprocess.run([sys.executable, "-c", LOCKS, "gs://bkt/locks"], env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert locks.returncode == 0, locks.stderr[-3000:]
        assert "REFUSED gs://bkt/locks is in use by process" in locks.stdout, locks.stdout
        assert "TOOK True" in locks.stdout and "RELEASED True" in locks.stdout
    assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())  # never a local "gs:"
