"""What the launchers share: run a command or, with --dry-run, print it exactly as it would run.

The launchers are plain scripts (argparse, standard library only) so they work from a laptop that
has gcloud / ssh / sbatch but not jax; they reach the repository for its topology table only.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
TRAIN_PROGRAM = ("python3", "-m", "elm_jax.cli.train")


def repo_on_path() -> None:
    """Let a launcher import ``elm_jax`` from this checkout (light modules only)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def quote(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The command as one shell line, environment assignments first."""
    prefix = [f"{k}={shlex.quote(str(v))}" for k, v in (env or {}).items()]
    return " ".join(prefix + [shlex.quote(str(a)) for a in argv])


class Runner:
    """Runs commands, or prints them (prefixed ``+``) when ``dry_run``; the printout is the plan."""

    def __init__(self, dry_run: bool, out: TextIO = sys.stdout):
        self.dry_run = dry_run
        self.out = out

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def show(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
             note: str = "") -> None:
        self.say("+ " + quote(argv, env) + (f"    # {note}" if note else ""))

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, check: bool = True,
            capture: bool = False, note: str = "", show: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` (extra ``env`` on top of ours); in a dry run only print it. ``show=False``
        runs without printing (a poll repeated many times)."""
        if show:
            self.show(argv, env, note)
        if self.dry_run:
            return subprocess.CompletedProcess(list(argv), 0, "", "")
        result = subprocess.run(list(argv), env={**os.environ, **(env or {})}, text=True,
                                capture_output=capture)
        if check and result.returncode:
            raise SystemExit(f"command failed with exit code {result.returncode}: {quote(argv)}")
        return result


def split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Launcher flags before ``--``, elm-train's arguments after it."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def new_path(path: Path) -> Path:
    """``path``, or ``path`` with ``.1``, ``.2``, ... when it exists: logs are never overwritten."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
