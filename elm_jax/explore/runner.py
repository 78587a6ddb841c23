"""Run a sweep's cells: here, one after another, or through the launchers in ``launch/``.

Locally each cell is an ordinary ``elm_jax.train.loop.train`` run in its own run directory, so a
killed sweep resumes like any run: finished cells (their last step logged) are skipped, the cell
that was cut off restarts from its newest checkpoint. A launched cell runs ``elm-train`` with
``experiments/sweep_cell.py``, which rebuilds the same cell config from the committed sweep file.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from elm_jax.explore.sweep import Cell, Sweep, status
from elm_jax.train.loop import TrainResult, train

REPO = Path(__file__).resolve().parents[2]
LAUNCHERS = {"tpu_vm": "launch/tpu_vm.py", "slurm": "launch/slurm.py", "ssh": "launch/multihost.py"}
CELL_EXPERIMENT = "experiments/sweep_cell.py"
CELL_LOG = "sweep.log"


def run_cell(cell: Cell, *, quiet: bool = True) -> TrainResult:
    """Train (or resume) one cell; with ``quiet`` the loop's messages go to ``<run_dir>/sweep.log``."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if quiet:
            log = stack.enter_context((cell.run_dir / CELL_LOG).open("a"))
            stack.enter_context(contextlib.redirect_stdout(log))
        return train(cell.config, export=False, entropy_tokens=0, show_progress=False)


def use_compilation_cache(directory: str | Path) -> None:
    """Keep compiled steps on disk: cells that differ only in seed (or learning rate) then compile
    once per shape instead of once per cell. An explicit JAX_COMPILATION_CACHE_DIR wins."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(directory))


def run_locally(cells: Sequence[Cell], *, say: Callable[[str], None], quiet: bool = True) -> bool:
    """Every cell in order; False when one was preempted (SIGTERM: saved, rerun to resume)."""
    for cell in cells:
        state = status(cell)
        if state == "done":
            say(f"{cell.name}: finished before, skipped")
            continue
        say(f"{cell.name}: {'resuming' if state == 'partial' else 'training'} "
            f"({cell.config.train.steps} steps) in {cell.run_dir}")
        result = run_cell(cell, quiet=quiet)
        if result.preempted:
            say(f"{cell.name}: preempted at step {result.step}, checkpoint saved; rerun the same "
                "command to resume")
            return False
        loss = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
        say(f"{cell.name}: done, validation loss {loss}")
    return True


def _repo_relative(path: str) -> str:
    file, sep, arg = path.partition(":")
    resolved = Path(file).resolve()
    with contextlib.suppress(ValueError):  # outside the checkout, hosts must see the absolute path
        file = str(resolved.relative_to(REPO))
    return file + sep + arg


def launch_command(sweep: Sweep, cell: Cell, launcher: str, launcher_args: Sequence[str], *,
                   dry_run: bool) -> list[str]:
    """The launcher's command line for one cell (elm-train arguments after ``--``)."""
    config = f"--config={CELL_EXPERIMENT}:{_repo_relative(sweep.source)}@{cell.name}"
    run_dir = f"--config.train.run_dir={cell.config.train.run_dir}"
    argv = [sys.executable, str(REPO / LAUNCHERS[launcher]), *launcher_args]
    argv += ["--dry-run"] if dry_run else []
    if launcher == "tpu_vm":
        return [*argv, config, "--", run_dir]
    if launcher == "slurm" and not any(a.startswith("--job-name") for a in launcher_args):
        argv.append(f"--job-name={sweep.name}-{cell.name}")
    return [*argv, "--", config, run_dir]


def launch(sweep: Sweep, cells: Sequence[Cell], launcher: str, launcher_args: Sequence[str], *,
           dry_run: bool, say: Callable[[str], None]) -> int:
    """Hand every unfinished cell to ``launcher`` in turn; the first failure stops the sweep."""
    for cell in cells:
        if not dry_run and status(cell) == "done":
            say(f"{cell.name}: finished before, skipped")
            continue
        argv = launch_command(sweep, cell, launcher, launcher_args, dry_run=dry_run)
        say(f"# {cell.name}: " + subprocess.list2cmdline(argv))
        sys.stdout.flush()
        code = subprocess.run(argv, cwd=REPO).returncode
        if code:
            say(f"{cell.name}: the {launcher} launcher failed with exit code {code}")
            return code
    return 0
