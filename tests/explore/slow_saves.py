"""elm-sweep with a pause (SLOW_SAVE_SECONDS) after every checkpoint save of the run directories whose
name starts with SLOW_SAVE_CELL, so that a test can kill it in the middle of that cell, whatever the
machine's speed."""

import os
import sys
import time

from elm_jax import checkpoint
from elm_jax.cli import sweep

_save = checkpoint.Checkpointer.save


def _slow_save(self, *args, **kwargs):
    result = _save(self, *args, **kwargs)
    if self.run_dir.name.startswith(os.environ["SLOW_SAVE_CELL"]):
        time.sleep(float(os.environ["SLOW_SAVE_SECONDS"]))
    return result


if __name__ == "__main__":
    checkpoint.Checkpointer.save = _slow_save
    sys.argv[0] = "elm-sweep"
    sweep.main()
