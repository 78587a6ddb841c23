"""A checkpoint is used whole or not at all: a corrupted array byte or a missing data-iterator state
makes every reader fall back to the previous complete step and say so (the trainer also sets the
damaged step aside); ``train.restart_data_stream`` is the one way to resume without the stream."""

import json
import logging
from pathlib import Path

import jax
import pytest
from synthetic import make_iterator, replace_train
from test_checkpoint import abstract_state, copy_run

from elm_jax.checkpoint import Checkpointer, load_model_reporting
from elm_jax.parallel.mesh import make_mesh
from elm_jax.train.loop import restore_state


def corrupt_one_byte(step_dir, item="params"):
    """Flip one byte in the middle of the item's largest array data file (orbax / TensorStore
    still decode it: the values just change)."""
    files = [f for f in (Path(step_dir) / item).rglob("*") if f.is_file() and f.parent.name == "d"]
    target = max(files, key=lambda f: f.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x5A
    target.write_bytes(bytes(data))


def restore_for_training(config, run_dir, iterator):
    ckpt = Checkpointer(run_dir, config)
    state = restore_state(ckpt, abstract_state(config, make_mesh(config.mesh, jax.devices()[:1])),
                          iterator)
    ckpt.close()
    return state, ckpt.report


@pytest.mark.parametrize("item", ["params", "train"])
def test_a_corrupted_array_byte_sets_the_step_aside_naming_the_array(trained_run, tmp_path, item):
    config, _, run_dir = copy_run(trained_run, tmp_path)
    corrupt_one_byte(run_dir / "checkpoints" / "8", item)
    iterator = make_iterator(config, "train")
    state, report = restore_for_training(config, run_dir, iterator)
    assert int(state.step) == 4 and iterator.get_state() == {"next_index": 4}
    ((step, why),) = report.skipped
    assert step == 8 and why.startswith(f"checksum mismatch in {item}[")
    (moved,) = (run_dir / "corrupt_checkpoints").iterdir()
    assert moved.name.startswith("8-") and (moved / "reason.txt").read_text().strip() == why
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4"]


def test_readers_skip_a_corrupted_step_and_say_which(trained_run, tmp_path):
    config, _, run_dir = copy_run(trained_run, tmp_path)
    corrupt_one_byte(run_dir / "checkpoints" / "8")
    _, _, report = load_model_reporting(run_dir)
    assert report.step == 4
    assert report.line().startswith(f"loaded step 4 of {run_dir} (skipped step 8: checksum "
                                    "mismatch in params[")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4", "8"]  # untouched
    _, _, exact = load_model_reporting(run_dir, step=4)
    assert exact.line() == f"loaded step 4 of {run_dir}"


def test_a_step_without_its_data_state_is_incomplete(trained_run, tmp_path, caplog):
    config, _, run_dir = copy_run(trained_run, tmp_path)
    (run_dir / "checkpoints" / "8" / "data" / "process_0-of-1.json").unlink()
    iterator = make_iterator(config, "train")
    with caplog.at_level(logging.WARNING):
        state, report = restore_for_training(config, run_dir, iterator)
    assert int(state.step) == 4 and iterator.get_state() == {"next_index": 4}
    assert report.skipped[0][0] == 8 and "no data-iterator state" in report.skipped[0][1]
    assert any("step 8" in r.message and "restart_data_stream" in r.message for r in caplog.records)


def test_restart_data_stream_resumes_the_state_with_a_fresh_stream(trained_run, tmp_path, caplog):
    config, _, run_dir = copy_run(trained_run, tmp_path)
    (run_dir / "checkpoints" / "8" / "data" / "process_0-of-1.json").unlink()
    config = replace_train(config, restart_data_stream=True)
    iterator = make_iterator(config, "train")
    fresh = make_iterator(config, "train").get_state()
    with caplog.at_level(logging.WARNING):
        state, report = restore_for_training(config, run_dir, iterator)
    assert int(state.step) == 8 and not report.skipped
    assert iterator.get_state() == fresh
    assert any("starts again from its beginning" in r.message for r in caplog.records)


def test_an_unreadable_data_state_is_damage(trained_run, tmp_path):
    config, _, run_dir = copy_run(trained_run, tmp_path)
    (run_dir / "checkpoints" / "8" / "data" / "process_0-of-1.json").write_text('{"next_ind')
    state, report = restore_for_training(config, run_dir, make_iterator(config, "train"))
    assert int(state.step) == 4 and "unreadable" in report.skipped[0][1]


def test_checksums_name_every_saved_array(trained_run):
    _, result = trained_run
    stored = json.loads((result.hf_path.parent / "checkpoints" / "8" / "checksums" / "metadata")
                        .read_text())
    params, train = result.state.checkpoint_items()
    paths = lambda tree: {jax.tree_util.keystr(p) for p, _ in  # noqa: E731
                          jax.tree_util.tree_flatten_with_path(tree)[0]}
    assert set(stored["params"]) == paths(params) and set(stored["train"]) == paths(dict(train))
