#!/usr/bin/env python3
"""Multi-host training without SLURM: start elm-train on every host (over ssh, or directly for
localhost) with an explicit coordinator, and wait for all of them.

    python launch/multihost.py --hosts gpu-a,gpu-b --gpus-per-host 8 --per gpu \\
        --workdir ~/elm_jax -- --config experiments/openelm_1_1b.py

Process ``p`` gets ``ELM_COORDINATOR_ADDRESS`` (the first host, ``--port``), ``ELM_NUM_PROCESSES``
and ``ELM_PROCESS_ID=p``, which ``elm_jax.parallel.distributed.initialize`` reads. With
``--per gpu`` each host runs one process per GPU (``ELM_LOCAL_DEVICE_IDS`` picks it); with
``--per node`` one process drives all of a host's devices. Every process writes its own log;
when one fails the others are stopped, remote ones too (through ssh: a signal to the local ssh
client does not reach the remote program). ``--dry-run`` prints the commands. See
launch/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from launchlib import TRAIN_PROGRAM, Runner, new_path, quote, split_extra

LOCAL_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_PORT = 8476
SSH = ("ssh", "-o", "BatchMode=yes")
STOP_GRACE_SECONDS = 30  # from SIGTERM to SIGKILL when the others are stopped


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
    try:
        args.coordinator = coordinator(args)
    except ValueError as err:
        p.error(str(err))
    return args, program_args


def route_address(remote: str) -> str | None:
    """This machine's address on the route to ``remote``; None when ``remote`` does not resolve
    or no route leads there. (A UDP "connect" chooses the route and sends nothing.)"""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((remote, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


def coordinator(args: argparse.Namespace) -> str:
    """host:port of process 0 that every host can reach; ``ValueError`` when none is known."""
    if args.coordinator:
        return args.coordinator
    host = args.hosts[0]
    if host not in LOCAL_HOSTS:
        return f"{host}:{args.port}"
    remote = [h for h in args.hosts if h not in LOCAL_HOSTS]
    if not remote:
        return f"127.0.0.1:{args.port}"
    # 127.0.0.1 would send the remote hosts to themselves: use this machine's routable address.
    address = route_address(remote[0])
    if address is None or address.startswith("127."):
        raise ValueError(
            f"the first host is {host} (process 0 runs here) but {', '.join(remote)} must reach it "
            f"over the network and no route to {remote[0]} was found; pass --coordinator "
            "ADDRESS:PORT with an address of this machine they can reach, or list this machine "
            "by its network name instead of localhost")
    return f"{address}:{args.port}"


def process_table(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """(host, environment) of every process, in process-id order."""
    count = len(args.hosts) * args.processes_per_host
    table = []
    for host_index, host in enumerate(args.hosts):
        for local in range(args.processes_per_host):
            env = dict(e.split("=", 1) for e in args.env)
            env.update(ELM_COORDINATOR_ADDRESS=args.coordinator, ELM_NUM_PROCESSES=str(count),
                       ELM_PROCESS_ID=str(host_index * args.processes_per_host + local))
            if args.per == "gpu":
                env["ELM_LOCAL_DEVICE_IDS"] = str(local)
            table.append((host, env))
    return table


def command(args: argparse.Namespace, host: str, env: dict[str, str], program_args: list[str],
            pid_file: str) -> tuple[list[str], dict[str, str] | None]:
    """argv to start one process, and the environment to add when it runs here.

    A remote program runs in the background of its shell, which keeps its pid in ``pid_file``
    (so ``stop`` can signal it), waits for it and passes on its exit status.
    """
    argv = [*shlex.split(args.program), *program_args]
    if host in LOCAL_HOSTS:
        return argv, env
    workdir = args.workdir  # "~/x" must reach the remote shell unquoted to expand there
    target = f"~/{shlex.quote(workdir[2:])}" if workdir.startswith("~/") else shlex.quote(workdir)
    pid = shlex.quote(pid_file)
    remote = (f"cd {target} && {{ {quote(argv, env)} & echo $! > {pid}; wait $!; code=$?; "
              f"rm -f {pid}; exit $code; }}")
    return [*SSH, host, remote], None


@dataclasses.dataclass
class Process:
    """One started process: its host, the local child (the program or its ssh client) and, for a
    remote one, where its host keeps the program's pid."""

    host: str
    popen: subprocess.Popen
    pid_file: str | None = None

    def signal(self, name: str) -> None:
        """Send SIGTERM or SIGKILL (``name`` "TERM" / "KILL") to the program itself."""
        if self.pid_file is None:
            self.popen.send_signal(getattr(signal, f"SIG{name}"))
            return
        pid = shlex.quote(self.pid_file)
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([*SSH, self.host, f"test -s {pid} && kill -{name} $(cat {pid})"],
                           capture_output=True, timeout=STOP_GRACE_SECONDS)


def stop(processes: list[Process], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM every running process (remote ones through ssh), SIGKILL after ``grace`` seconds."""
    alive = [p for p in processes if p.popen.poll() is None]
    for process in alive:
        process.signal("TERM")
    deadline = time.time() + grace
    for process in alive:
        try:
            process.popen.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.signal("KILL")
            process.popen.kill()


def main(argv: list[str] | None = None) -> int:
    args, program_args = parse_args(sys.argv[1:] if argv is None else argv)
    run = Runner(args.dry_run)
    table = process_table(args)
    run.say(f"# {len(table)} processes on {len(args.hosts)} host(s), coordinator {args.coordinator}")
    log_dir = Path(args.log_dir)
    processes: list[Process] = []
    logs = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        for host, env in table:
            pid_file = f"/tmp/elm-launch-{stamp}-{os.getpid()}-p{env['ELM_PROCESS_ID']}.pid"
            argv_, local_env = command(args, host, env, program_args, pid_file)
            log = new_path(log_dir / f"{stamp}-process{env['ELM_PROCESS_ID']}-{host}.log")
            run.show(argv_, local_env, note=f"log: {log}")
            if run.dry_run:
                continue
            log_dir.mkdir(parents=True, exist_ok=True)
            handle = log.open("w")
            logs.append(handle)
            local = host in LOCAL_HOSTS
            popen = subprocess.Popen(argv_, env={**os.environ, **(local_env or {})},
                                     cwd=args.workdir if local else None, stdout=handle,
                                     stderr=subprocess.STDOUT)
            processes.append(Process(host, popen, None if local else pid_file))
        return wait_all(run, [p.popen for p in processes])
    finally:
        stop(processes)
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
