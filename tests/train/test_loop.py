"""The loop end to end on the synthetic stream: run directory contents, exact in-process resume,
export and ``load_model``, the non-finite stop, refusing a run directory of another model, and an
empty validation split refused before the first step."""

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from synthetic import FAST_COMPILE, make_iterator, replace_train, tiny_config

from elm_jax.checkpoint import load_model
from elm_jax.config import from_config_dict
from elm_jax.convert.hf import load_hf
from elm_jax.errors import DataError, TrainingError
from elm_jax.parallel.mesh import single_device_mesh
from elm_jax.train.loop import train
from elm_jax.train.step import graphdef


def run(config, **kwargs):
    return train(config, make_iterator=kwargs.pop("make_iterator", make_iterator),
                 mesh=single_device_mesh(), show_progress=False, compiler_options=FAST_COMPILE, **kwargs)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_holds_config_logs_and_checkpoints(trained_run):
    config, result = trained_run
    run_dir = result.hf_path.parent
    assert from_config_dict(json.loads((run_dir / "config.json").read_text())) == config
    logged = records(run_dir)
    assert [r["step"] for r in logged] == [2, 4, 6, 8]
    assert all(np.isfinite(r["loss"]) and r["mfu"] == "n/a" and r["tokens_per_sec"] > 0 for r in logged)
    assert [r["step"] for r in logged if "val_loss" in r] == [4, 8]
    assert logged[-1]["loss"] < logged[0]["loss"]
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and b"val_loss" in events[0].read_bytes()
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [4, 8]
    assert result.step == 8 and not result.preempted
    # the unigram entropy baseline of the synthetic stream: near-uniform over 63 ids
    assert 3.5 < result.unigram_entropy <= np.log(63) + 1e-6


def test_resume_continues_exactly(trained_run, tmp_path):
    """4 steps, then a second run to 8 in the same directory: the same parameters, bit for bit, and
    the same losses as the uninterrupted 8-step run."""
    config, result = trained_run
    resumed = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=str(tmp_path)))
    run(replace_train(resumed, steps=4), export=False, entropy_tokens=0)
    second = run(resumed, export=False, entropy_tokens=0)
    assert second.step == 8
    for a, b in zip(jax.tree.leaves(second.state.params), jax.tree.leaves(result.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ref = {r["step"]: r["loss"] for r in records(result.hf_path.parent)}
    assert {r["step"]: r["loss"] for r in records(tmp_path)} == ref


def test_load_model_and_hf_export_match_the_trained_params(trained_run):
    config, result = trained_run
    tokens = jnp.asarray(np.arange(24).reshape(2, 12) % config.model.vocab_size, jnp.int32)
    forward = jax.jit(lambda params: nnx.merge(graphdef(config), params)(tokens))
    params_of = lambda model: nnx.to_pure_dict(nnx.state(model, nnx.Param))  # noqa: E731
    expected = forward(result.state.params)
    loaded_config, model = load_model(result.hf_path.parent)
    assert loaded_config == config
    np.testing.assert_array_equal(np.asarray(forward(params_of(model))), np.asarray(expected))
    hf_cfg, hf_model = load_hf(result.hf_path)
    assert hf_cfg.layer_shapes() == config.model.layer_shapes()
    np.testing.assert_allclose(np.asarray(forward(params_of(hf_model))), np.asarray(expected),
                               rtol=1e-6, atol=1e-6)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, steps=8, log_every=1, save_every=2)
    with pytest.raises(TrainingError, match="NaN/Inf at step 3"):
        run(config, make_iterator=functools.partial(make_iterator, nan_at=2), export=False,
            entropy_tokens=0)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2]


def test_nan_loss_skipped_when_configured(tmp_path):
    config = tiny_config(tmp_path, steps=4, log_every=1, save_every=2, nonfinite="skip")
    result = run(config, make_iterator=functools.partial(make_iterator, nan_at=2), export=False,
                 entropy_tokens=0)
    assert result.step == 4 and int(result.state.skipped) == 1
    assert [r["nonfinite"] for r in records(tmp_path)] == [0, 0, 1, 0]


@pytest.mark.parametrize("config_json", [True, False])
def test_run_dir_of_another_model_is_refused(trained_run, tmp_path, config_json):
    """Its checkpoints decide, through config.json or, without it, their own stored config."""
    config, result = trained_run
    run_dir = tmp_path / "run"
    shutil.copytree(result.hf_path.parent, run_dir, ignore=shutil.ignore_patterns("hf-*"))
    if not config_json:
        (run_dir / "config.json").unlink()
    other = dataclasses.replace(config, model=dataclasses.replace(config.model, model_dim=48),
                                train=dataclasses.replace(config.train, run_dir=str(run_dir)))
    with pytest.raises(TrainingError, match="different model"):
        run(other)
    assert (run_dir / "config.json").exists() == config_json  # nothing rewritten


def test_elm_convert_exports_a_run_directory(trained_run, tmp_path):
    config, result = trained_run
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "elm_jax.cli.convert", "--input", str(result.hf_path.parent),
         "--output", str(tmp_path / "bf16"), "--param_dtype", "bfloat16"],
        capture_output=True, text=True, cwd=root, env=os.environ | {"PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"loaded step 8 of {result.hf_path.parent}\n" in out.stderr  # the step it read
    cfg, model = load_hf(tmp_path / "bf16")
    assert cfg.param_dtype == "bfloat16"
    for got, want in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
                         jax.tree.leaves(result.state.params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jnp.bfloat16)))


def test_empty_validation_split_fails_before_the_first_step(tmp_path):
    drawn = []

    def no_validation(config, split, **kwargs):
        if split == "validation":
            return iter([])
        return (drawn.append(split) or batch for batch in make_iterator(config, split, **kwargs))

    config = tiny_config(tmp_path / "run", steps=4, eval_every=2, save_every=1)
    with pytest.raises(DataError, match="the validation split yielded no batch"):
        run(config, make_iterator=no_validation, entropy_tokens=0)
    assert drawn == []  # not one training batch was read: nothing to resume that would fail again
