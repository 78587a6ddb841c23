#!/usr/bin/env python3
"""Train on a Cloud TPU slice: create it, install this checkout on every worker, run elm-train on
all workers at once, fetch each worker's log, delete the slice.

    python launch/tpu_vm.py --name elm-3b --zone us-east5-a --accelerator-type v5p-32 --spot \\
        --config experiments/openelm_3b.py --run-dir gs://my-bucket/runs/openelm_3b \\
        -- --config.train.steps=1000

Everything after ``--`` goes to elm-train. ``--dry-run`` prints every gcloud command instead of
running it; ``--steps`` runs a subset (e.g. ``--steps train,logs`` on a slice that exists). The
slice is deleted at the end, even when training fails, unless ``--keep``. See launch/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from launchlib import REPO, TRAIN_PROGRAM, Runner, quote, repo_on_path, split_extra

STEPS = ("create", "setup", "train", "logs", "delete")
# gcloud's accelerator-type names and the TPU VM software images for JAX, per generation.
GCLOUD_PREFIX = {"v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}
RUNTIME_VERSION = {"v5e": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
ARCHIVE = "elm_jax.tar.gz"
REMOTE_DIR = "elm_jax"
REMOTE_LOG = "elm-train.log"


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
    else:
        install = f"mkdir -p ~/{REMOTE_DIR} && python3 -m pip install -q {shlex.quote(args.install)}"
    run.run(ssh(args, install))


def train_command(args: argparse.Namespace, train_args: list[str]) -> str:
    """The command every worker runs: jax finds the other workers from the TPU metadata."""
    argv = [*TRAIN_PROGRAM, f"--config={args.config}"]
    if args.run_dir:
        argv.append(f"--config.train.run_dir={args.run_dir}")
    argv += train_args
    return (f"set -o pipefail; cd ~/{REMOTE_DIR} && "
            f"{quote(argv, {'ELM_DISTRIBUTED': 'tpu'})} 2>&1 | tee -a ~/{REMOTE_LOG}")


def train(run: Runner, args: argparse.Namespace, train_args: list[str]) -> int:
    if args.topology.hosts > 1 and not (args.run_dir or "").startswith("gs://"):
        run.say(f"warning: {args.topology.hosts} workers write one checkpoint: --run-dir should be "
                "shared storage (gs://bucket/path), not a worker's local disk")
    return run.run(ssh(args, train_command(args, train_args)), check=False).returncode


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
    try:
        if "create" in args.steps:
            create(run, args)
        if "setup" in args.steps:
            setup(run, args)
        if "train" in args.steps:
            code = train(run, args, train_args)
    finally:
        if "logs" in args.steps:
            logs(run, args)
        if "delete" in args.steps and not args.keep:
            delete(run, args)
    if code:
        run.say(f"elm-train failed on at least one worker (exit {code}); see the logs in {args.log_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
