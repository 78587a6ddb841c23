"""What every command shares: its entry point, quiet logging, one-line errors, the --config flag.

Each command module defines its flags and a ``_main(argv)``, then ``main = common.entry(_main)``
(the console script). ``entry`` runs it under absl with orbax's and absl's INFO chatter turned down
to warnings (``--verbosity 0`` or higher brings it back), prints any ``ElmError`` as one line on
stderr with exit status 2 (so too a ``--config`` file that cannot be loaded or an override of a
field it lacks), and lets every other exception keep its traceback: those are bugs.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from elm_jax.cli import config_files
from elm_jax.config import Config, from_config_dict
from elm_jax.errors import ElmError, UsageError

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO_ROOT / "experiments"


def entry(main: Callable[[list[str]], None], stops_cleanly: bool = False) -> Callable[[], None]:
    """The console-script function for ``main``: absl flags, quiet logs, one-line user errors.

    ``stops_cleanly``: a run that a SIGTERM stops with exit 0 (``elm-train``, ``elm-sweep``), also
    while it starts (see ``elm_jax.cli``); other commands get the default SIGTERM back.
    """

    def guarded(argv: list[str]) -> None:
        if not stops_cleanly:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not flags.FLAGS["verbosity"].present:
            absl_logging.set_verbosity(absl_logging.WARNING)
        try:
            main(argv)
        except ElmError as err:
            fail(str(err))

    return lambda: app.run(guarded, flags_parser=parse_flags)


def fail(message: str) -> NoReturn:
    """A user error: ``error: message`` as one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def define_config_flag(default: str | None = None) -> flags.FlagHolder:
    """``--config path.py[:arg]`` plus ``--config.section.field=value`` overrides.

    ``default`` is put on the command line when it names no ``--config`` (see ``parse_flags``);
    given to ml_collections, it would be loaded, overrides and all, while the command is imported.
    """
    config_files.DEFAULT_CONFIG = default
    return config_flags.DEFINE_config_file(
        config_files.FLAG, None, "experiment config file: path.py or path.py:arg"
        + (f" (default: {default})" if default else ""), lock_config=True)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (and its usage errors), where a problem with the ``--config`` file or an
    override of it is a one-line error (exit 2) instead of ml_collections' traceback."""
    if config_files.FLAG not in flags.FLAGS:
        return app.parse_flags_with_usage(argv)
    argv = config_files.with_default(argv)
    spec = config_files.config_arg(argv)
    problem = spec and config_files.file_problem(spec)
    if problem:
        fail(problem)
    try:
        return app.parse_flags_with_usage(argv)
    except Exception as err:  # loading the experiment file or applying an override to it
        fail(config_files.describe_problem(err, argv))


def default_experiment(name: str) -> str | None:
    """Path of ``experiments/<name>.py`` in a source checkout (editable install), if present."""
    path = EXPERIMENTS / f"{name}.py"
    return str(path) if path.exists() else None


def load_config(holder: flags.FlagHolder) -> Config:
    """The typed, validated config of ``--config``; a missing flag is a user error."""
    if holder.value is None:
        raise UsageError(
            "no --config given and no experiments/ directory next to the package; pass "
            "--config path/to/experiment.py (see experiments/ in the source tree)"
        )
    try:
        return from_config_dict(holder.value)
    except OSError as err:  # ml_collections reports a file it could not read on first use
        raise UsageError(f"--config: {str(err).strip().splitlines()[0]}") from None


def hyphen_aliases(*holders: flags.FlagHolder) -> None:
    """Also accept ``--data-dir`` for ``--data_dir`` (both spellings are common on the shell)."""
    for holder in holders:
        if "_" in holder.name:
            flags.DEFINE_alias(holder.name.replace("_", "-"), holder.name)


def new_output(value: str | None, flag: str = "--output") -> Path | None:
    """The path of an output file that must not exist yet (checked before any work is done)."""
    if not value:
        return None
    path = Path(value)
    if path.exists():
        raise UsageError(f"{flag} {path} exists; choose a new file (nothing is overwritten)")
    return path


def write_new_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all at once, never over an existing file (results, logs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.link(tmp, path)  # fails if path appeared meanwhile: nothing is overwritten
    except FileExistsError:
        raise UsageError(f"{path} exists; choose a new file") from None
    finally:
        os.unlink(tmp)
