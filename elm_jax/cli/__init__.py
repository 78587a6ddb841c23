"""Command-line entry points, one small module per command (they share ``common``).

Importing this package is the first thing ``elm-train`` (or ``python -m elm_jax.cli.train``) does,
seconds before jax, flax and orbax have loaded. A scheduler may stop a job in those seconds (a spot
VM reclaimed, a SLURM job cancelled as it starts); nothing has started then, so from here on
SIGTERM is a clean stop with exit 0 rather than the default kill (exit 143). Commands that are not
long-running runs go back to the default in ``common.entry``; ``elm-train`` installs its own
handling once it runs.
"""

import signal
import sys
import threading


def _stop_before_the_run(signum: int, frame: object) -> None:
    del frame
    print(f"stopped by {signal.Signals(signum).name} before the run started (nothing to save); rerun "
          "the same command to start", file=sys.stderr, flush=True)
    sys.exit(0)


if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
    signal.signal(signal.SIGTERM, _stop_before_the_run)
