#!/usr/bin/env python3
"""Multi-host training without SLURM: start elm-train on every host (over ssh, or directly for
localhost) with an explicit coordinator, and wait for all of them.

    python launch/multihost.py --hosts gpu-a,gpu-b --gpus-per-host 8 --per gpu \\
        --workdir ~/elm_jax -- --config experiments/openelm_1_1b.py

Process ``p`` gets ``ELM_COORDINATOR_ADDRESS`` (the first host, ``--port``), ``ELM_NUM_PROCESSES``
and ``ELM_PROCESS_ID=p``, which ``elm_jax.parallel.distributed.initialize`` reads. With
``--per gpu`` each host runs one process per GPU (``ELM_LOCAL_DEVICE_IDS`` picks it); with
``--per node`` one process drives all of a host's devices. Every process writes its own log;
when one fails the others are stopped. ``--dry-run`` prints the commands. See launch/README.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from launchlib import TRAIN_PROGRAM, Runner, new_path, quote, split_extra

LOCAL_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_PORT = 8476


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, program_args = split_extra(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", required=True,
                   help="comma-separated hosts reachable by ssh; the first is the coordinator")
    p.add_argument("--coordinator", help="host:port of process 0 (default: first host, --port)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--per", choices=("node", "gpu"), default="node",
                   help="one process per host driving all its devices, or one per GPU")
    p.add_argument("--gpus-per-host", type=int, default=0, help="needed with --per gpu")
    p.add_argument("--processes-per-host", type=int, default=0,
                   help="processes per host without GPUs (e.g. CPU tests); default 1")
    p.add_argument("--workdir", default=".", help="directory of the checkout on every host")
    p.add_argument("--program", default=shlex.join(TRAIN_PROGRAM),
                   help="what each process runs (default: elm-train)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for every process (repeatable)")
    p.add_argument("--log-dir", default="logs")
    p.add_argument("--dry-run", action="store_true", help="print every command, run nothing")
    args = p.parse_args(own)
    args.hosts = [h for h in args.hosts.split(",") if h]
    if not args.hosts:
        p.error("--hosts needs at least one host")
    if args.per == "gpu":
        if args.gpus_per_host < 1:
            p.error("--per gpu needs --gpus-per-host")
        if args.processes_per_host:
            p.error("--processes-per-host is implied by --per gpu --gpus-per-host")
        args.processes_per_host = args.gpus_per_host
    args.processes_per_host = args.processes_per_host or 1
    bad_env = [e for e in args.env if "=" not in e]
    if bad_env:
        p.error(f"--env takes KEY=VALUE, got {bad_env}")
    return args, program_args


def coordinator(args: argparse.Namespace) -> str:
    if args.coordinator:
        return args.coordinator
    host = args.hosts[0]
    return f"{'127.0.0.1' if host in LOCAL_HOSTS else host}:{args.port}"


def process_table(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """(host, environment) of every process, in process-id order."""
    count = len(args.hosts) * args.processes_per_host
    table = []
    for host_index, host in enumerate(args.hosts):
        for local in range(args.processes_per_host):
            env = dict(e.split("=", 1) for e in args.env)
            env.update(ELM_COORDINATOR_ADDRESS=coordinator(args), ELM_NUM_PROCESSES=str(count),
                       ELM_PROCESS_ID=str(host_index * args.processes_per_host + local))
            if args.per == "gpu":
                env["ELM_LOCAL_DEVICE_IDS"] = str(local)
            table.append((host, env))
    return table


def command(args: argparse.Namespace, host: str, env: dict[str, str],
            program_args: list[str]) -> tuple[list[str], dict[str, str] | None]:
    """argv to start one process, and the environment to add when it runs here."""
    argv = [*shlex.split(args.program), *program_args]
    if host in LOCAL_HOSTS:
        return argv, env
    workdir = args.workdir  # "~/x" must reach the remote shell unquoted to expand there
    target = f"~/{shlex.quote(workdir[2:])}" if workdir.startswith("~/") else shlex.quote(workdir)
    remote = f"cd {target} && {quote(argv, env)}"
    return ["ssh", "-o", "BatchMode=yes", host, remote], None


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    args, program_args = parse_args(sys.argv[1:] if argv is None else argv)
    run = Runner(args.dry_run)
    table = process_table(args)
    run.say(f"# {len(table)} processes on {len(args.hosts)} host(s), coordinator {coordinator(args)}")
    log_dir = Path(args.log_dir)
    procs, logs = [], []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        for host, env in table:
            argv_, local_env = command(args, host, env, program_args)
            log = new_path(log_dir / f"{stamp}-process{env['ELM_PROCESS_ID']}-{host}.log")
            run.show(argv_, local_env, note=f"log: {log}")
            if run.dry_run:
                continue
            log_dir.mkdir(parents=True, exist_ok=True)
            handle = log.open("w")
            logs.append(handle)
            cwd = args.workdir if host in LOCAL_HOSTS else None
            procs.append(subprocess.Popen(argv_, env={**os.environ, **(local_env or {})}, cwd=cwd,
                                          stdout=handle, stderr=subprocess.STDOUT))
        return wait_all(run, procs)
    finally:
        stop(procs)
        for handle in logs:
            handle.close()


def wait_all(run: Runner, procs: list[subprocess.Popen]) -> int:
    """Wait for every process; the first failure stops the rest (they would hang in collectives)."""
    while procs:
        codes = [proc.poll() for proc in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c]
        if failed:
            index, code = failed[0]
            run.say(f"process {index} exited with {code}; stopping the others")
            return code
        if all(c == 0 for c in codes):
            run.say("all processes finished")
            return 0
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
