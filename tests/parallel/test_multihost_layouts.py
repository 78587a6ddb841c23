"""One process per device (SLURM's ``--per gpu`` layout) with a tensor or an fsdp axis across the
processes: each process loads the rows its device holds, and training ends with the parameters of
one process on one device that sees the same batches."""

import sys
from pathlib import Path

import jax
import numpy as np
from localhost import explicit_envs, largest_difference, run_processes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from synthetic import FAST_COMPILE, make_iterator, tiny_config  # noqa: E402

STEPS = 3
ENTROPY_TOKENS = 600  # what the worker reads for the unigram baseline
LAYOUTS = {"1,1,2": "1x1x2", "1,2,1": "1x2x1"}  # data,fsdp,tensor -> run directory


def _one_device_reference(tmp_path):
    """The same synthetic run in this process on one device. Its batches hold the same rows as
    the two-process runs' global batches (with fsdp in another order, which the mean loss and its
    gradient do not see), so the parameters agree up to float rounding."""
    from elm_jax.parallel.mesh import single_device_mesh
    from elm_jax.train.loop import train

    config = tiny_config(tmp_path / "reference", steps=STEPS, save_every=STEPS, eval_every=STEPS,
                         log_every=1)
    return train(config, make_iterator=make_iterator, mesh=single_device_mesh(), export=False,
                 entropy_tokens=ENTROPY_TOKENS, show_progress=False, compiler_options=FAST_COMPILE)


def test_tensor_and_fsdp_across_processes_train_like_one_device(tmp_path):
    from flax import nnx

    from elm_jax.checkpoint import load_model

    results = run_processes(["synthetic", str(tmp_path), str(STEPS), "0", *LAYOUTS],
                            explicit_envs(2, 1), timeout=600)
    reference = _one_device_reference(tmp_path)
    expected = jax.device_get(reference.state.params)
    for index, directory in enumerate(LAYOUTS.values()):
        runs = [r["runs"][index] for r in results]
        assert runs[0] == runs[1], runs  # one global loss, seen by both processes
        run = runs[0]
        assert run["step"] == STEPS and not run["preempted"]
        assert np.isclose(run["loss"], reference.train_loss, rtol=1e-5)
        assert np.isclose(run["val_loss"], reference.val_loss, rtol=1e-5)
        # the baseline counts every shard's tokens: the same rows as the one-device stream
        assert np.isclose(run["entropy"], reference.unigram_entropy, rtol=1e-12)
        _, model = load_model(tmp_path / directory, step=STEPS)
        trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        assert largest_difference(trained, expected) < 1e-5, directory
        assert (tmp_path / directory / f"hf-step{STEPS}" / "model.safetensors").is_file()
