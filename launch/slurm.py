#!/usr/bin/env python3
"""Multi-host GPU training under SLURM: write an sbatch script that runs elm-train on every node
(one process per node or per GPU) and submit it.

    python launch/slurm.py --nodes 4 --gpus-per-node 8 --per gpu --partition gpu --time 48:00:00 \\
        --setup 'source ~/venvs/elm/bin/activate' -- --config experiments/openelm_1_1b.py

``srun`` starts the processes; each reads its place in the job from SLURM's environment
(``ELM_DISTRIBUTED=slurm``, see ``elm_jax.parallel.distributed``). The script is written to
``--log-dir`` (never over an existing one) and submitted with ``sbatch``; ``--dry-run`` prints the
script and the sbatch command instead. See launch/README.md.

Before the time limit SLURM sends SIGTERM and, ``KillWait`` (often 30 s) later, SIGKILL: too little
to save a large model. So the job asks for SIGTERM earlier (``--signal=B:TERM@<lead>``): the batch
shell receives it and passes it to srun, which forwards it to every task; the trainer then
finishes its step, saves and exits. The lead is sized from the checkpoint (parameters and AdamW
state, 12 bytes per parameter, of the ``--config`` experiment's model) at ``--write-mb-per-s``,
plus a floor; ``--signal-lead`` sets it directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shlex
import sys
import time
from pathlib import Path

from launchlib import TRAIN_PROGRAM, Runner, new_path, quote, repo_on_path, split_extra

MIN_LEAD_SECONDS = 120  # the step in flight, starting the save, the last metrics, slack
BYTES_PER_PARAMETER = 12  # float32 parameters + AdamW's two float32 moments
DEFAULT_EXPERIMENT = "experiments/tiny.py"  # elm-train's default


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
    p.add_argument("--signal-lead", type=int, metavar="SECONDS",
                   help="SIGTERM this long before the time limit (default: sized from the model)")
    p.add_argument("--write-mb-per-s", type=float, default=200.0,
                   help="checkpoint write bandwidth assumed to size the signal lead (MB/s, all "
                   "processes together)")
    p.add_argument("--log-dir", default="logs")
    p.add_argument("--dry-run", action="store_true", help="print the script and command only")
    args = p.parse_args(own)
    if args.nodes < 1 or args.gpus_per_node < 1:
        p.error("--nodes and --gpus-per-node must be at least 1")
    if args.signal_lead is not None and not 0 < args.signal_lead < 65536:
        p.error("--signal-lead must be between 1 and 65535 seconds (SLURM's limit)")
    if args.write_mb_per_s <= 0:
        p.error("--write-mb-per-s must be positive")
    return args, train_args


def experiment_path(args: argparse.Namespace, train_args: list[str]) -> tuple[Path, str | None]:
    """The ``--config path.py[:arg]`` elm-train will read (its default without one), and arg."""
    value = DEFAULT_EXPERIMENT
    for i, word in enumerate(train_args):
        if word == "--config" and i + 1 < len(train_args):
            value = train_args[i + 1]
        elif word.startswith("--config="):
            value = word.split("=", 1)[1]
    path, _, arg = value.partition(":")
    local = Path(path).expanduser()
    if not local.is_absolute() and not local.is_file():
        local = Path(args.workdir) / path
    return local, arg or None


def checkpoint_bytes(path: Path, arg: str | None) -> int:
    """Bytes of parameters and optimizer state of the experiment's model (its file, without
    command-line overrides). Needs the project's dependencies (ml_collections, jax)."""
    repo_on_path()
    from elm_jax.config import from_config_dict
    from elm_jax.model import param_count

    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = from_config_dict(module.get_config(arg) if arg else module.get_config())
    return BYTES_PER_PARAMETER * param_count(config.model)


def signal_lead(args: argparse.Namespace, train_args: list[str], run: Runner) -> int:
    """Seconds between SIGTERM and the time limit: the floor plus the time to write a checkpoint."""
    if args.signal_lead is not None:
        return args.signal_lead
    path, arg = experiment_path(args, train_args)
    try:
        size = checkpoint_bytes(path, arg)
    except Exception as err:  # noqa: BLE001 (any failure to load: fall back, say so)
        run.say(f"warning: cannot size the checkpoint of {path} ({type(err).__name__}: {err}); "
                f"SIGTERM comes {MIN_LEAD_SECONDS} s before the time limit. Pass --signal-lead "
                "SECONDS for a large model")
        return MIN_LEAD_SECONDS
    lead = MIN_LEAD_SECONDS + math.ceil(size / (args.write_mb_per_s * 1e6))
    run.say(f"# checkpoint ~{size / 1e9:.1f} GB at {args.write_mb_per_s:g} MB/s: SIGTERM {lead} s "
            "before the time limit")
    return min(lead, 65535)


def sbatch_script(args: argparse.Namespace, train_args: list[str], lead: int) -> str:
    """The batch script: resources, environment for ``initialize()``, then one srun that gets
    SIGTERM ``lead`` seconds before the time limit."""
    tasks = args.gpus_per_node if args.per == "gpu" else 1
    log = Path(args.log_dir).resolve() / "%x-%j.out"
    directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}",
                  f"--ntasks-per-node={tasks}", f"--gpus-per-node={args.gpus_per_node}",
                  f"--time={args.time}", f"--output={log}", f"--signal=B:TERM@{lead}"]
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
    lines += [f"# SLURM signals only this shell (B:), {lead} s before the time limit: pass SIGTERM to",
              "# srun, which forwards it to every task; they save a checkpoint and exit.",
              "trap 'echo \"SIGTERM: stopping the training tasks\"; "
              "if [ -n \"${srun_pid:-}\" ]; then kill -TERM \"$srun_pid\"; fi' TERM",
              "srun --kill-on-bad-exit=1 --label "
              + quote([*shlex.split(args.program), *train_args]) + " &",
              "srun_pid=$!",
              "status=0",
              "# a trapped signal ends `wait` early (status > 128): wait again while srun runs",
              'wait "$srun_pid" || status=$?',
              'while kill -0 "$srun_pid" 2>/dev/null; do status=0; wait "$srun_pid" || status=$?; done',
              'exit "$status"', ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    run = Runner(args.dry_run)
    script = sbatch_script(args, train_args, signal_lead(args, train_args, run))
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
