"""Run-directory hygiene: identity written only once a run has started, a tokenizer judged by its
vocabulary, one trainer per directory, no leftovers of interrupted exports, normal file modes."""

import dataclasses
import os
import stat
import subprocess
import sys

import pytest
from cli_helpers import ROOT, TEXT, tiny_run_config, write_tokenizer

from elm_jax import rundir
from elm_jax.config import MeshConfig
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.errors import ConfigError, TrainingError
from elm_jax.runlock import RunLock
from elm_jax.train.loop import train


def other_model(config):
    return dataclasses.replace(config, model=dataclasses.replace(config.model, model_dim=32))


def test_a_failed_start_leaves_no_identity_behind(tmp_path):
    config = tiny_run_config(tmp_path)
    bad_mesh = dataclasses.replace(config, mesh=MeshConfig(data=64))  # more devices than there are
    with pytest.raises(ConfigError):
        train(bad_mesh, make_iterator=lambda *a, **k: None,
              tokenizer=Tokenizer(config.data.tokenizer), entropy_tokens=0)
    run_dir = tmp_path / "run"
    assert not (run_dir / "config.json").exists() and not (run_dir / "tokenizer.model").exists()
    rundir.check_run_dir(other_model(config), config.data.tokenizer)  # nobody's run: accepted


def started_run(config):
    """A run directory as a started run leaves it: identity files and a checkpoint step."""
    rundir.record_identity(config, config.data.tokenizer)
    run_dir = rundir.as_path(config.train.run_dir)
    (run_dir / "checkpoints" / "1").mkdir(parents=True)
    return run_dir


def test_a_config_json_without_checkpoints_is_nobodys_run(tmp_path):
    config = tiny_run_config(tmp_path)
    rundir.record_identity(config, config.data.tokenizer)  # e.g. an older version's failed start
    rundir.check_run_dir(other_model(config), config.data.tokenizer)
    started_run(config)  # now it holds a checkpoint
    with pytest.raises(TrainingError, match="different model"):
        rundir.check_run_dir(other_model(config), config.data.tokenizer)


def test_a_retrained_tokenizer_with_the_same_vocabulary_is_accepted(tmp_path):
    config = tiny_run_config(tmp_path)
    run_dir = started_run(config)
    retrained = write_tokenizer(tmp_path / "retrained.model", num_threads=1)
    assert retrained.read_bytes() != (run_dir / "tokenizer.model").read_bytes()
    rundir.check_run_dir(config, str(retrained))
    other = write_tokenizer(tmp_path / "other.model", text=TEXT[:6])
    with pytest.raises(TrainingError, match="another vocabulary"):
        rundir.check_run_dir(config, str(other))


HOLD = """
import sys, time
from etils import epath
from elm_jax.runlock import RunLock
RunLock(epath.Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_one_trainer_per_run_directory_and_dead_holders_lose_the_lock(tmp_path):
    config = tiny_run_config(tmp_path)
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match=f"in use by process {holder.pid} on host "
                                                f"{os.uname().nodename}"):
            train(config, make_iterator=lambda *a, **k: None, entropy_tokens=0)
    finally:
        holder.kill()
        holder.wait()
    # the dead holder's lock is taken over, and this process is named as the new holder
    with RunLock(rundir.as_path(run_dir)), pytest.raises(
            TrainingError, match=f"in use by process {os.getpid()}"):
        RunLock(rundir.as_path(run_dir)).acquire()


def test_stale_export_temporaries_are_removed(tmp_path):
    stale = tmp_path / ".hf-step8.tmp1a2b3c4d"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    kept = tmp_path / "hf-step4"
    kept.mkdir()
    rundir.clean_stale_exports(rundir.as_path(tmp_path))
    assert not stale.exists() and kept.exists()


def test_exports_have_normal_file_modes(tiny_model_config, random_hf_checkpoint, tmp_path):
    from elm_jax.convert.hf import load_hf, save_hf

    path, _, _ = random_hf_checkpoint(tiny_model_config)
    cfg, model = load_hf(path)
    old = os.umask(0o022)
    try:
        out = save_hf(cfg, model, tmp_path / "export")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in out.iterdir()} == {0o644}
