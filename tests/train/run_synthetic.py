"""Subprocess entry for the kill / preemption tests: train the synthetic config in a run directory.

    python run_synthetic.py RUN_DIR STEPS [SECONDS_PER_BATCH [export]]

A per-batch delay keeps the run slow enough to be killed at a chosen point; ``export`` also writes
the HF export at the end.
"""

import functools
import sys

import synthetic

from elm_jax.parallel.mesh import single_device_mesh
from elm_jax.train.loop import train


def main() -> None:
    run_dir, steps = sys.argv[1], int(sys.argv[2])
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    config = synthetic.tiny_config(run_dir, steps=steps, save_every=3, log_every=1, eval_every=10**6)
    result = train(config, make_iterator=functools.partial(synthetic.make_iterator, delay=delay),
                   mesh=single_device_mesh(), export="export" in sys.argv[4:], entropy_tokens=0,
                   show_progress=False,
                   compiler_options=synthetic.FAST_COMPILE)
    print(f"RESULT step={result.step} preempted={result.preempted}", flush=True)


if __name__ == "__main__":
    main()
