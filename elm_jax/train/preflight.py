"""Checks that make a training run fail at start-up, with one line, rather than part-way through."""

from __future__ import annotations

import os
import socket

from etils import epath

from elm_jax.errors import ConfigError


def check_run_dir_writable(run_dir: str) -> None:
    """Create ``run_dir`` (any path orbax can write: local, ``gs://``...) and a scratch file in it.

    A read-only or unreachable run directory would otherwise surface as an ``OSError`` traceback
    from whichever write comes first (the config copy, a checkpoint, the metrics).
    """
    path = epath.Path(run_dir)
    probe = path / f".write-test-{socket.gethostname()}-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write to the run directory {run_dir} "
                          f"({err.strerror or err}); choose a writable --config.train.run_dir"
                          ) from None
