"""Real processes: a SIGKILLed run resumes bit-exactly (parameters and data stream), and SIGTERM
saves the step the run was on and exits 0."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from synthetic import tiny_config

from elm_jax.checkpoint import Checkpointer
from elm_jax.train.loop import restore_state

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def start(run_dir, steps, delay=0.0):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    env |= {"PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "JAX_PLATFORMS": "cpu",
            "JAX_COMPILATION_CACHE_DIR": os.environ["ELM_JAX_TEST_COMPILE_CACHE"],
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen([sys.executable, str(HERE / "run_synthetic.py"), str(run_dir), str(steps),
                             str(delay)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def wait_for(predicate, proc, timeout=240):
    end = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < end, "timed out"
        time.sleep(0.02)


def steps_saved(run_dir):
    ckpts = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def losses(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}  # later lines win: the resumed run


def restore(run_dir, steps):
    config = tiny_config(run_dir, steps=steps)
    ckpt = Checkpointer(run_dir, config, read_only=True)
    state = restore_state(ckpt, _abstract(config))
    ckpt.close()
    return state


def _abstract(config):
    from elm_jax.parallel.mesh import single_device_mesh
    from elm_jax.train.step import state_shardings

    abstract, shardings = state_shardings(config, single_device_mesh())
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    total = 16
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    victim = start(killed, 10**6, delay=0.05)
    ref = start(reference, total)
    wait_for(lambda: any(s >= 6 for s in steps_saved(killed)), victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    resumed_from = max(steps_saved(killed))
    assert 6 <= resumed_from < total
    out = finish(start(killed, total))
    assert f"RESULT step={total} preempted=False" in out
    finish(ref)
    a, b = restore(killed, total), restore(reference, total)
    assert int(a.step) == int(b.step) == total
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # every step after the resume point saw the same batch (same loss, bit for bit) as the reference
    got, want = losses(killed), losses(reference)
    assert [got[s] for s in range(resumed_from + 1, total + 1)] == \
        [want[s] for s in range(resumed_from + 1, total + 1)]


def test_sigterm_saves_the_current_step_and_exits_zero(tmp_path):
    proc = start(tmp_path, 10**6, delay=0.05)
    wait_for(lambda: (tmp_path / "metrics.jsonl").exists()
             and len((tmp_path / "metrics.jsonl").read_text().splitlines()) >= 4, proc)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc)
    step = int(out.split("RESULT step=")[1].split()[0])
    assert "preempted=True" in out and f"saved the checkpoint of step {step}" in out
    assert steps_saved(tmp_path)[-1] == step >= 4
    assert max(losses(tmp_path)) == step  # the step it was on, logged and saved


SECOND_SIGNAL = """
import os, signal, time
from elm_jax.train.preemption import PreemptionGuard

with PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: noted, the loop would save and stop
    print("requested", guard.requested, flush=True)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: gone at once
    time.sleep(60)
print("not aborted", flush=True)
"""


def run_from_a_terminal(script: str) -> subprocess.CompletedProcess:
    """``script`` in a fresh Python whose Ctrl-C is Python's own handler, as started from a shell.

    A child inherits an ignored SIGINT (a pytest-xdist worker may ignore it), and Python then
    leaves it ignored: the test would see SIG_IGN restored instead of ``default_int_handler``.
    """
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
        "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_is_noted_like_sigterm_and_a_second_one_aborts_at_once():
    out = run_from_a_terminal(SECOND_SIGNAL)
    assert out.returncode == -signal.SIGINT, out.stderr[-3000:]
    assert out.stdout == "requested True\n"
    assert out.stderr.strip() == "SIGINT again: aborting without saving"


CTRL_C_ON_SEVERAL_PROCESSES = """
import os, signal
import jax
from elm_jax.train import preemption

jax.process_count = lambda: 2  # as after jax.distributed.initialize with two processes
seen = []
signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # stands in for jax's listener
with preemption.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    print("requested", guard.requested, "sigterm", seen == [signal.SIGTERM], flush=True)
print("sigint restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
"""


def test_ctrl_c_on_several_processes_reaches_jax_as_sigterm():
    """jax's preemption sync (which stops every process at one step) listens to SIGTERM only."""
    out = run_from_a_terminal(CTRL_C_ON_SEVERAL_PROCESSES)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout == "requested True sigterm True\nsigint restored True\n"


def _signal_inside_a_library(config):
    """What jax does when the stop's exception lands in its own code: re-raise it as its error."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises StopRequested here
    except BaseException as error:
        raise ValueError("an error of the library the signal interrupted") from error


def test_a_stop_that_a_library_re_raises_as_its_own_error_still_stops_cleanly(tmp_path, capsys):
    from elm_jax.cli.stopping import run_until_stopped

    before = signal.getsignal(signal.SIGTERM)
    assert run_until_stopped(tiny_config(tmp_path), _signal_inside_a_library) is None
    assert "stopped by SIGTERM outside the training steps" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is before  # the stop's handler is gone again


def test_an_error_without_a_stop_is_not_taken_for_one(tmp_path):
    from elm_jax.cli.stopping import run_until_stopped

    def fails(config):
        raise ValueError("a real error")

    with pytest.raises(ValueError, match="a real error"):
        run_until_stopped(tiny_config(tmp_path), fails)
