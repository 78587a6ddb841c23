"""Start N real processes on localhost that join one jax run (gloo CPU collectives)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "parallel" / "multiprocess_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(devices_per_process: int) -> dict[str, str]:
    """This checkout first on the path, CPU only, ``devices_per_process`` simulated devices."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ELM_", "TPU_", "JAX_COORDINATOR"))}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    return env


def explicit_envs(count: int, devices_per_process: int, **extra: str) -> list[dict[str, str]]:
    """Environments of ``count`` processes that join one run through the ``ELM_*`` variables."""
    address = f"127.0.0.1:{free_port()}"
    return [{**base_env(devices_per_process), **extra, "ELM_COORDINATOR_ADDRESS": address,
             "ELM_NUM_PROCESSES": str(count), "ELM_PROCESS_ID": str(i)} for i in range(count)]


@dataclasses.dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def run_commands(argvs: Sequence[Sequence[str]], envs: Sequence[Mapping[str, str]], *,
                 timeout: float = 150) -> list[Finished]:
    """Run ``argvs[i]`` with ``envs[i]``, all at once (they wait for each other in collectives, so
    their output goes to files, never to a pipe that could fill up); every one's result."""
    with tempfile.TemporaryDirectory() as tmp:
        files = [(Path(tmp) / f"{i}.out", Path(tmp) / f"{i}.err") for i in range(len(argvs))]
        procs = []
        try:
            for argv, env, (out, err) in zip(argvs, envs, files):
                with out.open("w") as stdout, err.open("w") as stderr:
                    procs.append(subprocess.Popen(list(argv), env=dict(env), cwd=REPO,
                                                  stdout=stdout, stderr=stderr, text=True))
            for proc in procs:
                proc.wait(timeout=timeout)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return [Finished(proc.returncode, out.read_text(), err.read_text())
                for proc, (out, err) in zip(procs, files)]


def run_processes(args: Sequence[str], envs: Sequence[Mapping[str, str]], *,
                  timeout: float = 150) -> list[dict]:
    """Run the worker once per environment, concurrently; return each one's RESULT JSON."""
    finished = run_commands([[sys.executable, str(WORKER), *args]] * len(envs), envs,
                            timeout=timeout)
    results = []
    for done in finished:
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"worker failed (exit {done.returncode}):\n{out[-4000:]}"
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert lines, f"worker printed no RESULT:\n{out[-4000:]}"
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results


def largest_difference(a, b) -> float:
    """The largest absolute difference between two parameter trees of the same structure."""
    import jax

    flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    assert len(flat_a) == len(flat_b)
    return max(float(np.max(np.abs(np.asarray(v) - np.asarray(flat_b[k])))) for k, v in flat_a)
