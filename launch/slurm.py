#!/usr/bin/env python3
"""Multi-host GPU training under SLURM: write an sbatch script that runs elm-train on every node
(one process per node or per GPU) and submit it.

    python launch/slurm.py --nodes 4 --gpus-per-node 8 --per gpu --partition gpu --time 48:00:00 \\
        --setup 'source ~/venvs/elm/bin/activate' -- --config experiments/openelm_1_1b.py

``srun`` starts the processes; each reads its place in the job from SLURM's environment
(``ELM_DISTRIBUTED=slurm``, see ``elm_jax.parallel.distributed``). The script is written to
``--log-dir`` (never over an existing one) and submitted with ``sbatch``; ``--dry-run`` prints the
script and the sbatch command instead. See launch/README.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from launchlib import TRAIN_PROGRAM, Runner, new_path, quote, split_extra


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, train_args = split_extra(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True)
    p.add_argument("--per", choices=("gpu", "node"), default="gpu",
                   help="one process per GPU (jax's SLURM default) or one per node driving all GPUs")
    p.add_argument("--job-name", default="elm-train")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--time", default="24:00:00", help="wall-clock limit, HH:MM:SS")
    p.add_argument("--cpus-per-task", type=int, help="default: SLURM's")
    p.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=True,
                   help="whole nodes (default on)")
    p.add_argument("--coordinator-port", type=int,
                   help="port of process 0 (default: jax derives one from the job id)")
    p.add_argument("--workdir", default=str(Path.cwd()),
                   help="checkout directory on the nodes (default: this directory)")
    p.add_argument("--setup", action="append", default=[], metavar="SHELL",
                   help="shell line run before training on each node (repeatable), e.g. "
                   "'module load cuda' or 'source venv/bin/activate'")
    p.add_argument("--program", default=shlex.join(TRAIN_PROGRAM), help="default: elm-train")
    p.add_argument("--log-dir", default="logs")
    p.add_argument("--dry-run", action="store_true", help="print the script and command only")
    args = p.parse_args(own)
    if args.nodes < 1 or args.gpus_per_node < 1:
        p.error("--nodes and --gpus-per-node must be at least 1")
    return args, train_args


def sbatch_script(args: argparse.Namespace, train_args: list[str]) -> str:
    """The batch script: resources, environment for ``initialize()``, then one srun."""
    tasks = args.gpus_per_node if args.per == "gpu" else 1
    log = Path(args.log_dir).resolve() / "%x-%j.out"
    directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}",
                  f"--ntasks-per-node={tasks}", f"--gpus-per-node={args.gpus_per_node}",
                  f"--time={args.time}", f"--output={log}"]
    directives += [f"--{name}={value}" for name in ("partition", "account", "qos")
                   if (value := getattr(args, name))]
    if args.cpus_per_task:
        directives.append(f"--cpus-per-task={args.cpus_per_task}")
    if args.exclusive:
        directives.append("--exclusive")
    how = ("one process per GPU: jax gives process SLURM_LOCALID its GPU" if args.per == "gpu"
           else "one process per node: it drives every GPU of its node")
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "",
             f"# {args.nodes} nodes x {args.gpus_per_node} GPUs, {how}.",
             "set -euo pipefail", f"cd {shlex.quote(args.workdir)}", *args.setup,
             "# elm_jax.parallel.distributed.initialize() reads SLURM_* itself.",
             "export ELM_DISTRIBUTED=slurm"]
    if args.coordinator_port:
        lines.append(f"export JAX_COORDINATOR_PORT={args.coordinator_port}")
    lines += ["srun --kill-on-bad-exit=1 --label " + quote([*shlex.split(args.program), *train_args]),
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    run = Runner(args.dry_run)
    script = sbatch_script(args, train_args)
    path = new_path(Path(args.log_dir) / f"{args.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch")
    if args.dry_run:
        run.say(f"# would write {path}:")
        run.say(script)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        run.say(f"wrote {path}")
    return run.run(["sbatch", str(path)], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
