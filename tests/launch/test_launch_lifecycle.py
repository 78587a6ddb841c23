"""What the launchers do to a live run: with stand-in gcloud / ssh on PATH (tests/fake_commands.py)
the launchers' own commands really run, so detaching, polling, stopping and deleting are observed,
not just printed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_commands import install, tpu_calls

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"

# A stand-in for elm-train on a TPU worker: runs a few seconds, then leaves when it ended and exits
# with the code in ./exit_code (0 without one).
TRAINER = """\
import pathlib, sys, time
time.sleep(3)
here = pathlib.Path(".")
(here / "done").write_text(repr(time.time()))
print("trained", flush=True)
sys.exit(int((here / "exit_code").read_text()) if (here / "exit_code").exists() else 0)
"""


@pytest.fixture
def slice_(tmp_path):
    """A fake two-worker v5p-16 slice: (root, environment for the launcher)."""
    root = tmp_path / "tpu"
    for worker in range(2):
        (root / f"worker{worker}" / "elm_jax").mkdir(parents=True)
        (root / f"worker{worker}" / "elm_jax" / "trainer.py").write_text(TRAINER)
    bin_dir = install(tmp_path / "bin", "gcloud")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_TPU_ROOT": str(root),
           "FAKE_TPU_WORKERS": "2"}
    return root, env


def tpu_vm_args(tmp_path, *steps):
    return [sys.executable, str(LAUNCH / "tpu_vm.py"), "--name", "elm", "--zone", "z",
            "--accelerator-type", "v5p-16", "--run-dir", "gs://b/r", "--poll-seconds", "0.3",
            "--program", f"{sys.executable} trainer.py", "--log-dir", str(tmp_path / "logs"),
            "--steps", ",".join(steps)]


def calls_of(root, verb):
    return [c for c in tpu_calls(root) if c["argv"][3] == verb]


def done_times(root):
    return [float((root / f"worker{w}" / "elm_jax" / "done").read_text()) for w in range(2)]


def test_tpu_vm_training_runs_detached_and_the_slice_is_deleted_only_after_it_ended(slice_, tmp_path):
    root, env = slice_
    (root / "drop_polls").write_text("2")  # the laptop's connection drops twice while waiting
    (root / "worker1" / "elm_jax" / "exit_code").write_text("3")
    done = subprocess.run(tpu_vm_args(tmp_path, "train", "wait", "logs", "delete"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr  # worker 1's exit status
    finished = done_times(root)
    start, *polls = calls_of(root, "ssh")
    assert start["end"] < min(finished)  # the start returned while training was running
    assert [p["code"] for p in polls[:2]] == [255, 255]  # dropped polls were retried
    (deleted,) = calls_of(root, "delete")
    assert deleted["start"] > max(finished)
    assert "elm-train failed on at least one worker (exit 3)" in done.stdout
    logs = sorted((tmp_path / "logs").glob("elm-*-worker*.log"))
    assert len(logs) == 2 and all("trained" in log.read_text() for log in logs)


def test_an_interrupted_launcher_leaves_training_and_slice_alone(slice_, tmp_path):
    root, env = slice_
    launcher = subprocess.Popen(tpu_vm_args(tmp_path, "train", "wait", "delete"), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in launcher.stdout:  # wait until the launcher watches a running training
        if "elm-train: running" in line:
            break
    launcher.send_signal(signal.SIGINT)  # the laptop's session ends
    out = launcher.communicate(timeout=60)[0]
    assert launcher.returncode != 0
    assert "the slice is kept" in out and not calls_of(root, "delete")
    deadline = time.time() + 30
    while not all((root / f"worker{w}" / "elm_jax" / "done").exists() for w in range(2)):
        assert time.time() < deadline, "training did not survive the launcher"
        time.sleep(0.2)
    # Watching again (same flags) finds it ended and deletes the slice.
    again = subprocess.run(tpu_vm_args(tmp_path, "wait", "delete"), env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(calls_of(root, "delete")) == 1


def test_a_preempted_slice_ends_the_wait(slice_, tmp_path):
    root, env = slice_
    (root / "drop_polls").write_text("1000")  # the workers are gone: every poll fails
    (root / "state").write_text("PREEMPTED")
    done = subprocess.run(tpu_vm_args(tmp_path, "wait", "delete"), env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "slice elm is PREEMPTED" in done.stdout
    assert len(calls_of(root, "delete")) == 1


def test_tpu_vm_without_train_keeps_a_slice_it_started_training_on(slice_, tmp_path):
    root, env = slice_
    done = subprocess.run(tpu_vm_args(tmp_path, "train", "delete"), env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not calls_of(root, "delete")
    assert "the slice is kept" in done.stdout
    # Asked for alone, delete is an explicit request: it runs.
    explicit = subprocess.run(tpu_vm_args(tmp_path, "delete"), env=env, capture_output=True,
                              text=True, timeout=60)
    assert explicit.returncode == 0 and len(calls_of(root, "delete")) == 1


# multihost.py: a remote program is stopped through ssh, not just its local ssh client.
PROGRAM = """\
import os, pathlib, sys, time
markers = pathlib.Path(sys.argv[1])
(markers / f"p{os.environ['ELM_PROCESS_ID']}").write_text(str(os.getpid()))
if os.environ["ELM_PROCESS_ID"] == "0":  # fails once the remote process runs
    while not (markers / "p1").exists():
        time.sleep(0.1)
    sys.exit(3)
time.sleep(120)
"""


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_multihost_stops_the_remote_processes_too(tmp_path):
    bin_dir = install(tmp_path / "bin", "ssh")
    (tmp_path / "program.py").write_text(PROGRAM)
    markers = tmp_path / "markers"
    markers.mkdir()
    done = subprocess.run(
        [sys.executable, str(LAUNCH / "multihost.py"), "--hosts", "localhost,remote-a",
         "--coordinator", "127.0.0.1:1", "--log-dir", str(tmp_path / "logs"),
         "--workdir", str(tmp_path), "--program", f"{sys.executable} {tmp_path / 'program.py'}",
         "--", str(markers)],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, capture_output=True,
        text=True, timeout=90)
    assert done.returncode == 3, done.stdout + done.stderr
    remote = int((markers / "p1").read_text())
    deadline = time.time() + 10
    while alive(remote):
        assert time.time() < deadline, "the remote process outlived the launcher"
        time.sleep(0.2)


def test_multihost_gives_remote_hosts_a_coordinator_they_can_reach():
    refused = subprocess.run([sys.executable, str(LAUNCH / "multihost.py"), "--hosts",
                              "localhost,no-such-host.invalid", "--dry-run"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "pass --coordinator ADDRESS:PORT" in refused.stderr
    # A remote host this machine has a route to (TEST-NET-1, never reached): process 0's address
    # on that route, one this machine can listen on, not the loopback address.
    out = subprocess.run([sys.executable, str(LAUNCH / "multihost.py"), "--hosts",
                          "localhost,192.0.2.1", "--dry-run"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    address = out.stdout.split("coordinator ")[1].split()[0].rsplit(":", 1)[0]
    assert not address.startswith("127.")
    import socket

    with socket.socket() as sock:
        sock.bind((address, 0))  # an address of this machine
    assert f"ELM_COORDINATOR_ADDRESS={address}:8476" in out.stdout
