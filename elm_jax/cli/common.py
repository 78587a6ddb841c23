"""What every command shares: the ``--config`` flag, typed loading, and clean user errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from elm_jax.config import Config, ConfigError, from_config_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO_ROOT / "experiments"


class UserError(Exception):
    """A problem the user can fix (bad path, bad value); printed without a traceback."""


def define_config_flag(default: str | None = None) -> flags.FlagHolder:
    """``--config path.py[:arg]`` plus ``--config.section.field=value`` overrides."""
    return config_flags.DEFINE_config_file(
        "config", default, "experiment config file: path.py or path.py:arg", lock_config=True
    )


def default_experiment(name: str) -> str | None:
    """Path of ``experiments/<name>.py`` in a source checkout (editable install), if present."""
    path = EXPERIMENTS / f"{name}.py"
    return str(path) if path.exists() else None


def load_config(holder: flags.FlagHolder) -> Config:
    """The typed, validated config of ``--config``; a missing flag is a user error."""
    if holder.value is None:
        raise UserError(
            "no --config given and no experiments/ directory next to the package; pass "
            "--config path/to/experiment.py (see experiments/ in the source tree)"
        )
    return from_config_dict(holder.value)


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run`` that turns user errors into one line on stderr and exit code 2."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except (UserError, ConfigError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)


def hyphen_aliases(*holders: flags.FlagHolder) -> None:
    """Also accept ``--data-dir`` for ``--data_dir`` (both spellings are common on the shell)."""
    for holder in holders:
        if "_" in holder.name:
            flags.DEFINE_alias(holder.name.replace("_", "-"), holder.name)


def write_new_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all at once, never over an existing file (results, logs)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.link(tmp, path)  # fails if path appeared meanwhile: nothing is overwritten
    except FileExistsError:
        raise UserError(f"{path} exists; choose a new file") from None
    finally:
        os.unlink(tmp)
