"""Checkpoints: damaged or half-written ones are never loaded, restores reshard onto other meshes,
and a data state from another process count is refused clearly."""

import dataclasses
import logging
import shutil

import jax
import numpy as np
import pytest
from synthetic import make_iterator

from elm_jax.checkpoint import Checkpointer
from elm_jax.config import MeshConfig
from elm_jax.errors import CheckpointError
from elm_jax.model import abstract_params
from elm_jax.parallel.mesh import make_mesh, param_specs
from elm_jax.train.loop import restore_state
from elm_jax.train.step import state_shardings


def copy_run(trained_run, tmp_path):
    config, result = trained_run
    run_dir = tmp_path / "run"
    shutil.copytree(result.hf_path.parent, run_dir, ignore=shutil.ignore_patterns("hf-*"))
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=str(run_dir)))
    return config, result, run_dir


def abstract_state(config, mesh):
    abstract, shardings = state_shardings(config, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)


def test_truncated_last_checkpoint_is_skipped_with_a_warning(trained_run, tmp_path, caplog):
    config, _, run_dir = copy_run(trained_run, tmp_path)
    for f in (run_dir / "checkpoints" / "8" / "params").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    (run_dir / "checkpoints" / "12.orbax-checkpoint-tmp-1234").mkdir()  # a save killed half-way
    iterator = make_iterator(config, "train")
    ckpt = Checkpointer(run_dir, config)
    with caplog.at_level(logging.WARNING):
        state = restore_state(ckpt, abstract_state(config, make_mesh(config.mesh, jax.devices()[:1])),
                                    iterator)
    ckpt.close()
    assert int(state.step) == 4
    assert iterator.get_state() == {"next_index": 4}  # the data stream rewound with the state
    assert any("step 8" in r.message and "cannot be restored" in r.message for r in caplog.records)
    assert [p.name.split("-")[0] for p in (run_dir / "corrupt_checkpoints").iterdir()] == ["8"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4"]  # tmp dir cleaned


@pytest.mark.parametrize("shape", [(1, 2, 4), (2, 2, 2)])
def test_restore_reshards_onto_another_mesh(trained_run, shape):
    config, result = trained_run
    mesh = make_mesh(MeshConfig(*shape))
    ckpt = Checkpointer(result.hf_path.parent, config, read_only=True)
    state = restore_state(ckpt, abstract_state(config, mesh))
    ckpt.close()
    specs = param_specs(abstract_params(config.model), mesh)
    for (path, got), want, spec in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                                       jax.tree.leaves(result.state.params), jax.tree.leaves(
                                           specs, is_leaf=lambda x: isinstance(x, jax.P))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(path))
        assert got.sharding.mesh.shape == mesh.shape and got.sharding.spec == spec, path
    assert any(len(s) and any(a is not None for a in s) for s in jax.tree.leaves(
        specs, is_leaf=lambda x: isinstance(x, jax.P)))  # something really is sharded


def test_data_state_of_another_process_count_is_refused(trained_run, tmp_path):
    config, _, run_dir = copy_run(trained_run, tmp_path)
    for step in ("4", "8"):
        data = run_dir / "checkpoints" / step / "data"
        (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
    ckpt = Checkpointer(run_dir, config)
    with pytest.raises(CheckpointError, match="2 process.*this run has 1"):
        restore_state(ckpt, abstract_state(config, make_mesh(config.mesh, jax.devices()[:1])),
                            make_iterator(config, "train"))
    ckpt.close()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4", "8"]  # nothing moved


def test_keeps_the_last_k_and_every_mth(tmp_path):
    from synthetic import tiny_config

    from elm_jax.train.step import TrainState

    config = tiny_config(tmp_path, keep_checkpoints=2, keep_every=4)
    ckpt = Checkpointer(tmp_path, config)
    one = jax.numpy.ones(())
    for step in range(1, 10):
        ckpt.save(step, *TrainState(jax.numpy.int32(step), {"w": one * step}, (), one, one)
                  .checkpoint_items())
    ckpt.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 8, 9]
