"""Two processes on localhost (gloo, 2 CPU devices each) train, checkpoint, resume, and end with
the parameters of one process with 4 devices that sees the same global batches."""

import jax
import numpy as np
from localhost import explicit_envs, largest_difference, run_processes
from multiprocess_worker import small_config

from elm_jax.parallel import mesh as mesh_lib


def _two_processes(cache_dir, *args):
    # The restarted run reuses the first run's compiled step from jax's persistent cache.
    envs = explicit_envs(2, 2, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                         JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return run_processes(["train", *args], envs, timeout=240)


def _reference_params(config):
    """One process, 4 devices: the global batch of each step is process 0's rows then process 1's,
    exactly what the two-process run assembles with make_array_from_process_local_data."""
    from elm_jax.common_types import BATCH_FIELDS
    from elm_jax.data.pipeline import make_iterator
    from elm_jax.train.step import make_train_step

    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:4])
    step = make_train_step(config, mesh)
    state = step.init()
    initial = jax.device_get(state.params)
    streams = [make_iterator(config, "train", process_index=i, process_count=2) for i in range(2)]
    for _ in range(config.train.steps):
        parts = [next(stream) for stream in streams]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in BATCH_FIELDS}
        state, _ = step(state, mesh_lib.global_batch(batch, mesh))
    return initial, jax.device_get(state.params)


def test_two_processes_match_one_process_through_a_checkpoint_restart(tmp_path):
    from elm_jax.checkpoint import load_model
    from elm_jax.data.prepare import ensure_prepared

    run_dir = str(tmp_path / "run")
    ensure_prepared(small_config(run_dir, 4), log=lambda *a: None)  # once, before the workers

    first = _two_processes(tmp_path / "cache", run_dir, "2")  # steps 1-2, checkpoint at 2
    assert [(r["step"], r["steps_before"], r["mode"]) for r in first] == [(2, [], "explicit")] * 2
    # The restart restores step 2 (state and data stream) and runs steps 3-4.
    second = _two_processes(tmp_path / "cache", run_dir, "4")
    assert [(r["step"], r["steps_before"]) for r in second] == [(4, [2])] * 2
    assert second[0]["loss"] == second[1]["loss"]  # one global loss, seen by both processes

    from flax import nnx

    config = small_config(run_dir, 4)
    _, model = load_model(run_dir, step=4)
    trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    initial, expected = _reference_params(config)
    worst = largest_difference(trained, expected)
    moved = largest_difference(initial, expected)  # four steps changed the parameters
    assert worst < 1e-5 and moved > 1000 * worst, (worst, moved)
