"""Start N real processes on localhost that join one jax run (gloo CPU collectives)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

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


def run_processes(args: Sequence[str], envs: Sequence[Mapping[str, str]], *,
                  timeout: float = 150) -> list[dict]:
    """Run the worker once per environment, concurrently; return each one's RESULT JSON."""
    procs = [subprocess.Popen([sys.executable, str(WORKER), *args], env=dict(env), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for env in envs]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, f"worker failed (exit {proc.returncode}):\n{out[-4000:]}"
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert lines, f"worker printed no RESULT:\n{out[-4000:]}"
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results
