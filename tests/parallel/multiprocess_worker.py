"""One process of a localhost multi-process run, started by the tests (not collected by pytest).

Every scenario joins through ``distributed.initialize()`` (from the environment the test sets:
explicit ``ELM_*`` or a faked SLURM step) and prints ``RESULT <json>``.

- ``allgather``: one global array from each process's rows; what a reduction and a gather see.
- ``train RUN_DIR STEPS``: the training loop on the data pipeline (``small_config``), resuming
  from RUN_DIR's newest checkpoint and saving at the end. ``ELM_TEST_SLOW_MOVE=SECONDS`` makes
  process 0's move of a damaged step that slow (slow shared storage).
- ``synthetic ROOT STEPS DELAY MESH...``: the training loop on the synthetic stream
  (tests/train/synthetic.py) once per mesh (``data,fsdp,tensor``) in ROOT/<mesh>, DELAY seconds
  per batch, with the unigram-entropy baseline and the HF export.
- ``same_data ROOT``: each process opens ``ROOT/host<i>/data/*.jsonl`` (relative paths, as per-host
  copies) and checks that all processes see the same files; returns the error if they do not.
"""

import dataclasses
import json
import sys
from pathlib import Path

import jax
import numpy as np

from elm_jax.parallel import distributed

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def small_config(run_dir: str, steps: int):
    """experiments/tiny.py cut down to compile and run in seconds on CPU (2 layers, 64 tokens)."""
    import importlib.util

    from elm_jax.config import from_config_dict

    spec = importlib.util.spec_from_file_location("tiny", EXPERIMENTS / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = from_config_dict(module.get_config())
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, num_layers=2),
        data=dataclasses.replace(config.data, seq_len=64),
        train=dataclasses.replace(config.train, steps=steps, batch_size=8, save_every=2,
                                  log_every=1, eval_batches=0, sample_lines=0, run_dir=run_dir,
                                  warmup_steps=2))


def allgather() -> dict:
    launch = distributed.initialize()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rows_per_process = jax.local_device_count()
    local = np.arange(rows_per_process, dtype=np.float32) + 10 * jax.process_index()
    global_rows = jax.make_array_from_process_local_data(sharding, local[:, None])
    total = jax.jit(lambda x: x.sum(), out_shardings=jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))(global_rows)
    gathered = jax.experimental.multihost_utils.process_allgather(global_rows, tiled=True)
    return dict(mode=launch.mode, process_index=jax.process_index(),
                process_count=jax.process_count(), local_devices=jax.local_device_count(),
                global_devices=jax.device_count(), total=float(total),
                gathered=np.asarray(gathered).ravel().tolist())


def train(run_dir: str, steps: str) -> dict:
    import os
    import time

    from elm_jax import checkpoint
    from elm_jax.train.loop import train as run_training

    config = small_config(run_dir, int(steps))
    launch = distributed.initialize(config.distributed)
    delay = float(os.environ.get("ELM_TEST_SLOW_MOVE", 0))
    if delay and jax.process_index() == 0:
        move = checkpoint._move_dir
        checkpoint._move_dir = lambda source, target: (time.sleep(delay), move(source, target))
    checkpoints = Path(run_dir) / "checkpoints"
    before = sorted(int(p.name) for p in checkpoints.glob("[0-9]*")) if checkpoints.exists() else []
    result = run_training(config, export=False, entropy_tokens=0, show_progress=False)
    return dict(mode=launch.mode, process_index=jax.process_index(), steps_before=before,
                step=result.step, loss=result.train_loss)


def synthetic(root: str, steps: str, delay: str, *meshes: str) -> dict:
    import functools
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    from synthetic import FAST_COMPILE, make_iterator, tiny_config

    from elm_jax.config import MeshConfig
    from elm_jax.train.loop import train as run_training

    launch = distributed.initialize()
    runs = []
    for mesh in meshes:
        data, fsdp, tensor = (int(n) for n in mesh.split(","))
        config = dataclasses.replace(
            tiny_config(os.path.join(root, mesh.replace(",", "x")), steps=int(steps),
                        save_every=int(steps), eval_every=int(steps), log_every=1),
            mesh=MeshConfig(data=data, fsdp=fsdp, tensor=tensor))
        result = run_training(config, make_iterator=functools.partial(make_iterator,
                                                                      delay=float(delay)),
                              entropy_tokens=600, show_progress=False,
                              compiler_options=FAST_COMPILE)
        runs.append(dict(step=result.step, preempted=result.preempted, loss=result.train_loss,
                         val_loss=result.val_loss, entropy=result.unigram_entropy))
    return dict(mode=launch.mode, process_index=jax.process_index(), runs=runs)


def same_data(root: str) -> dict:
    import os

    from elm_jax.data.agreement import check_same_data
    from elm_jax.data.sources import open_source
    from elm_jax.errors import DataError

    distributed.initialize()
    os.chdir(Path(root) / f"host{jax.process_index()}")
    spec = {"kind": "jsonl", "train": "data/*.jsonl", "validation": "shared/*.jsonl"}
    check_same_data([open_source(0, spec, "validation")], "validation")  # the same everywhere
    try:
        check_same_data([open_source(0, spec, "train")], "train")
    except DataError as err:
        return dict(process_index=jax.process_index(), error=str(err))
    return dict(process_index=jax.process_index(), error=None)


if __name__ == "__main__":
    import jax.experimental.multihost_utils  # noqa: F401

    scenarios = {"allgather": allgather, "train": train, "synthetic": synthetic,
                 "same_data": same_data}
    # One write for the whole line: processes sharing a pipe (srun) must not interleave it.
    sys.stdout.write("RESULT " + json.dumps(scenarios[sys.argv[1]](*sys.argv[2:])) + "\n")
    sys.stdout.flush()
