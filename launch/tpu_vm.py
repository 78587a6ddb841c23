#!/usr/bin/env python3
"""Train on a Cloud TPU slice: create it, install this checkout on every worker, start elm-train
on all workers at once (detached), wait until it has ended, fetch each worker's log, delete the
slice.

    python launch/tpu_vm.py --name elm-3b --zone us-east5-a --accelerator-type v5p-32 --spot \\
        --config experiments/openelm_3b.py --run-dir gs://my-bucket/runs/openelm_3b \\
        -- --config.train.steps=1000

Everything after ``--`` goes to elm-train. ``--dry-run`` prints every gcloud command instead of
running it; ``--steps`` runs a subset (e.g. ``--steps wait,logs,delete`` to watch a run started
earlier). Training runs detached on the workers (``setsid nohup``), so a dropped connection or a
closed laptop does not stop it; the launcher polls each worker for its exit status. The slice is
deleted only once training has ended on every worker (or failed before it started), or when
``delete`` is asked for alone (``--steps delete``); never while training may still be alive.
``--keep`` keeps it anyway. See launch/README.md.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from launchlib import REPO, TRAIN_PROGRAM, Runner, quote, repo_on_path, split_extra

STEPS = ("create", "setup", "train", "wait", "logs", "delete")
# gcloud's accelerator-type names and the TPU VM software images for JAX, per generation.
GCLOUD_PREFIX = {"v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}
RUNTIME_VERSION = {"v5e": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
ARCHIVE = "elm_jax.tar.gz"
REMOTE_DIR = "elm_jax"
REMOTE_LOG = "elm-train.log"
REMOTE_PID = "elm-train.pid"  # the detached training's pid, on each worker
REMOTE_EXIT = "elm-train.exit"  # its exit status, written when it ends
STATUS = re.compile(r"elm-train: (running|exited (-?\d+)|not running)")
# Slice states in which nothing runs on it any more (training ended with the slice).
GONE_STATES = ("PREEMPTED", "TERMINATED", "STOPPED", "STOPPING", "DELETING", "NOT_FOUND")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, train_args = split_extra(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="TPU VM (or queued resource) name")
    p.add_argument("--zone", required=True, help="e.g. us-east5-a (v5p), us-west4-a (v5e)")
    p.add_argument("--accelerator-type", required=True, help="e.g. v5p-32, v5e-16, v6e-8")
    p.add_argument("--project", help="GCP project (default: gcloud's configured project)")
    p.add_argument("--runtime-version", help="TPU software image (default: the JAX image for "
                   "the generation, e.g. v2-alpha-tpuv5)")
    p.add_argument("--spot", action="store_true", help="spot capacity (can be preempted)")
    p.add_argument("--preemptible", action="store_true", help="legacy preemptible TPU VM")
    p.add_argument("--reserved", action="store_true", help="use the project's reservation")
    p.add_argument("--queued", action="store_true",
                   help="request through a queued resource and wait until it is ACTIVE")
    p.add_argument("--config", default="experiments/tiny.py", help="experiment file (repo-relative)")
    p.add_argument("--run-dir", help="checkpoint directory; multi-host runs need shared storage "
                   "(gs://bucket/path)")
    p.add_argument("--install", default="local", help="'local': copy this checkout (committed "
                   "files, git archive HEAD); otherwise a pip requirement, e.g. "
                   "'elm_jax[tpu] @ git+https://github.com/you/elm_jax'")
    p.add_argument("--steps", default=",".join(STEPS), help=f"subset of {','.join(STEPS)}")
    p.add_argument("--keep", action="store_true", help="do not delete the slice at the end")
    p.add_argument("--program", default=shlex.join(TRAIN_PROGRAM),
                   help="what every worker runs (default: elm-train)")
    p.add_argument("--log-dir", default="logs", help="where worker logs are copied")
    p.add_argument("--poll-seconds", type=float, default=30.0)
    p.add_argument("--dry-run", action="store_true", help="print every command, run nothing")
    args = p.parse_args(own)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        p.error(f"unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    args.steps = steps
    if args.spot and args.preemptible:
        p.error("--spot and --preemptible are exclusive (spot is the current form)")
    if args.preemptible and args.queued:
        p.error("queued resources take --spot, not --preemptible")
    repo_on_path()
    from elm_jax.errors import ConfigError
    from elm_jax.train.topology import parse

    try:
        args.topology = parse(args.accelerator_type)
    except ConfigError as err:
        p.error(str(err))
    return args, train_args


def gcloud_accelerator(args: argparse.Namespace) -> str:
    topology = args.topology
    count = topology.chips * topology.chip.cores_per_chip_in_name
    return f"{GCLOUD_PREFIX[topology.chip.name]}-{count}"


def _where(args: argparse.Namespace) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def tpu(args: argparse.Namespace, *words: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", *words]


def ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
    return tpu(args, "ssh", args.name, *_where(args), f"--worker={worker}", f"--command={command}")


def create(run: Runner, args: argparse.Namespace) -> None:
    version = args.runtime_version or RUNTIME_VERSION[args.topology.chip.name]
    capacity = (["--spot"] if args.spot else []) + (["--preemptible"] if args.preemptible else []) \
        + (["--reserved"] if args.reserved else [])
    accel = [f"--accelerator-type={gcloud_accelerator(args)}", f"--runtime-version={version}"]
    if not args.queued:
        run.run(tpu(args, "create", args.name, *_where(args), *accel, *capacity))
        return
    run.run(["gcloud", "compute", "tpus", "queued-resources", "create", args.name,
             f"--node-id={args.name}", *_where(args), *accel, *capacity])
    describe = ["gcloud", "compute", "tpus", "queued-resources", "describe", args.name,
                *_where(args), "--format=value(state.state)"]
    if run.dry_run:
        run.show(describe, note="repeated until ACTIVE")
        return
    while True:
        state = run.run(describe, capture=True).stdout.strip()
        run.say(f"queued resource {args.name}: {state}")
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDED"):
            raise SystemExit(f"queued resource {args.name} is {state}; see "
                             f"gcloud compute tpus queued-resources describe {args.name}")
        time.sleep(args.poll_seconds)


def config_file(args: argparse.Namespace) -> tuple[Path, str]:
    """The local experiment file of ``--config`` (``path.py[:arg]``) and its ``:arg`` suffix."""
    path, sep, arg = args.config.partition(":")
    local = Path(path).expanduser()
    if not local.is_file() and (REPO / path).is_file():
        local = REPO / path
    return local, sep + arg


def remote_config(args: argparse.Namespace) -> str:
    """``--config`` as the workers see it: repo-relative in a copied checkout; with a pip install
    there is no checkout, so the file is copied to ``~/elm_jax/`` (``setup``) and named there."""
    if args.install == "local":
        return args.config
    local, arg = config_file(args)
    return local.name + arg


def setup(run: Runner, args: argparse.Namespace) -> None:
    """Install the project on every worker (same code everywhere, or the run deadlocks)."""
    if args.install == "local":
        if not run.dry_run and subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                              capture_output=True, text=True).stdout.strip():
            run.say("warning: uncommitted changes are not copied (git archive HEAD); commit first")
        archive = Path(args.log_dir) / ARCHIVE
        if not run.dry_run:
            archive.parent.mkdir(parents=True, exist_ok=True)
        run.run(["git", "-C", str(REPO), "archive", "--format=tar.gz", f"--prefix={REMOTE_DIR}/",
                 f"--output={archive.resolve()}", "HEAD"])
        run.run(tpu(args, "scp", str(archive), f"{args.name}:~/{ARCHIVE}", *_where(args),
                    "--worker=all"))
        install = (f"rm -rf ~/{REMOTE_DIR} && tar xzf ~/{ARCHIVE} -C ~ && "
                   f"python3 -m pip install -q -e \"$HOME/{REMOTE_DIR}[tpu]\"")
        run.run(ssh(args, install))
        return
    local, _ = config_file(args)
    if not local.is_file() and not run.dry_run:
        raise SystemExit(f"--config {args.config}: no such file here; it is copied to the workers")
    run.run(ssh(args, f"mkdir -p ~/{REMOTE_DIR} && python3 -m pip install -q "
                      f"{shlex.quote(args.install)}"))
    run.run(tpu(args, "scp", str(local), f"{args.name}:~/{REMOTE_DIR}/{local.name}",
                *_where(args), "--worker=all"))


def train_command(args: argparse.Namespace, train_args: list[str]) -> str:
    """What starts training on a worker, detached: it survives the ssh session, keeps its pid in
    ``~/elm-train.pid``, appends to ``~/elm-train.log`` and writes its exit status to
    ``~/elm-train.exit``. Refused while an earlier training is still alive on the worker. jax finds
    the other workers from the TPU metadata."""
    argv = [*shlex.split(args.program), f"--config={remote_config(args)}"]
    if args.run_dir:
        argv.append(f"--config.train.run_dir={args.run_dir}")
    argv += train_args
    job = (f"echo $$ > ~/{REMOTE_PID}; {quote(argv, {'ELM_DISTRIBUTED': 'tpu'})} "
           f">> ~/{REMOTE_LOG} 2>&1; echo $? > ~/{REMOTE_EXIT}.tmp && "
           f"mv ~/{REMOTE_EXIT}.tmp ~/{REMOTE_EXIT}")
    alive = f"test -s ~/{REMOTE_PID} && kill -0 $(cat ~/{REMOTE_PID}) 2>/dev/null"
    # The last command alone goes to the background: a backgrounded list would keep the ssh
    # session's output open (and the session with it) until training ends.
    return (f"cd ~/{REMOTE_DIR} || exit 1; if {alive} && test ! -e ~/{REMOTE_EXIT}; then "
            f"echo 'elm-train is already running on this worker' >&2; exit 3; fi; "
            f"rm -f ~/{REMOTE_PID} ~/{REMOTE_EXIT}; "
            f"setsid nohup bash -c {shlex.quote(job)} > /dev/null 2>&1 < /dev/null &")


STATUS_COMMAND = (f"if test -e ~/{REMOTE_EXIT}; then echo \"elm-train: exited $(cat ~/{REMOTE_EXIT})\"; "
                  f"elif test -s ~/{REMOTE_PID} && kill -0 $(cat ~/{REMOTE_PID}) 2>/dev/null; then "
                  "echo 'elm-train: running'; else echo 'elm-train: not running'; fi")


def train(run: Runner, args: argparse.Namespace, train_args: list[str]) -> None:
    """Start training on every worker and return at once (``wait`` follows it)."""
    if args.topology.hosts > 1 and not (args.run_dir or "").startswith("gs://"):
        run.say(f"warning: {args.topology.hosts} workers write one checkpoint: --run-dir should be "
                "shared storage (gs://bucket/path), not a worker's local disk")
    run.run(ssh(args, train_command(args, train_args)))


def slice_state(run: Runner, args: argparse.Namespace) -> str:
    """The slice's state (READY, PREEMPTED, ...); NOT_FOUND when it no longer exists."""
    described = run.run(tpu(args, "describe", args.name, *_where(args), "--format=value(state)"),
                        check=False, capture=True, show=False)
    if described.returncode:
        return "NOT_FOUND" if "NOT_FOUND" in described.stderr else "UNKNOWN"
    return described.stdout.strip() or "UNKNOWN"


def wait(run: Runner, args: argparse.Namespace) -> int:
    """Poll the workers until training has ended on every one; its exit status (the first
    nonzero one). A failed poll (dropped connection) is retried; the slice being preempted or
    gone ends the wait (training ended with it)."""
    run.show(ssh(args, STATUS_COMMAND), note=f"every {args.poll_seconds:g} s until every worker "
             "has exited")
    if run.dry_run:
        return 0
    last = None
    while True:
        time.sleep(args.poll_seconds)  # first: a training just started has time to write its pid
        polled = run.run(ssh(args, STATUS_COMMAND), check=False, capture=True, show=False)
        found = [m for m in map(STATUS.search, polled.stdout.splitlines()) if m]
        states = sorted(m.group(0) for m in found)
        if states != last:
            run.say(f"workers: {', '.join(states) or 'no answer'}")
            last = states
        if len(found) >= args.topology.hosts and not any(m.group(1) == "running" for m in found):
            codes = [int(m.group(2)) if m.group(2) else 1 for m in found]  # "not running": lost
            return next((c for c in codes if c), 0)
        if polled.returncode or len(found) < args.topology.hosts:
            state = slice_state(run, args)
            if state in GONE_STATES:
                run.say(f"slice {args.name} is {state}: training ended with it")
                return 1


def logs(run: Runner, args: argparse.Namespace) -> None:
    """One file per worker: logs/<name>-worker<i>.log (existing files are kept)."""
    log_dir = Path(args.log_dir)
    if not run.dry_run:
        log_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for worker in range(args.topology.hosts):
        local = log_dir / f"{args.name}-{stamp}-worker{worker}.log"
        run.run(tpu(args, "scp", f"{args.name}:~/{REMOTE_LOG}", str(local), *_where(args),
                    f"--worker={worker}"), check=False)


def delete(run: Runner, args: argparse.Namespace) -> None:
    if args.queued:
        run.run(["gcloud", "compute", "tpus", "queued-resources", "delete", args.name,
                 *_where(args), "--force", "--quiet"], check=False)
    else:
        run.run(tpu(args, "delete", args.name, *_where(args), "--quiet"), check=False)


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    run = Runner(args.dry_run)
    run.say(f"# {args.topology.chips} {args.topology.chip.name} chips on {args.topology.hosts} "
            f"worker(s); steps: {', '.join(args.steps)}")
    code = 0
    # Whether training may be alive on the slice: started here and not seen to end, or started
    # by an earlier launch that this one only watches. Then the slice is never deleted.
    alive = "wait" in args.steps and "train" not in args.steps
    try:
        if "create" in args.steps:
            create(run, args)
        if "setup" in args.steps:
            setup(run, args)
        if "train" in args.steps:
            alive = True
            train(run, args, train_args)
        if "wait" in args.steps:
            code = wait(run, args)
            alive = False
    finally:
        if "logs" in args.steps:
            logs(run, args)
        if alive:
            run.say(f"training may still run on {args.name}: the slice is kept. Watch it with "
                    "--steps wait,logs,delete (same flags)")
        elif "delete" in args.steps and not args.keep:
            delete(run, args)
    if code:
        run.say(f"elm-train failed on at least one worker (exit {code}); see the logs in {args.log_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
