"""Worker processes: the stream resumes exactly through grain's orbax handler; the worker count
and process layout are part of the state and a mismatch is refused."""

import dataclasses

import numpy as np
import pytest
from etils import epath

from elm_jax.data import pipeline
from elm_jax.errors import CheckpointError


def with_workers(config, n):
    return dataclasses.replace(config, data=dataclasses.replace(config.data, num_workers=n))


def find_all(state, key):
    """Every dict in a nested state that holds ``key``."""
    if isinstance(state, dict):
        if key in state:
            yield state
        for value in state.values():
            yield from find_all(value, key)
    elif isinstance(state, list):
        for value in state:
            yield from find_all(value, key)


def test_resume_with_workers_through_grains_checkpoint_handler(make_config, jsonl_source, documents,
                                                               tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "TOKENIZER_BATCH_CHARS", 400)
    # Pad mode: rows map one to one to pieces, so worker states often sit inside a document.
    config = with_workers(make_config([jsonl_source(documents(40, words=(20, 200)))], batch_size=2,
                                      words_per_piece=25, mode="pad"), 2)
    handler = __import__("grain").checkpoint.CheckpointHandler()
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    try:
        for _ in range(40):  # stop where a worker is inside a document and a tokenizer batch
            next(it)
            state = it.get_state()
            if any(w["doc_used"] and w["taken"] for w in find_all(state, "doc_used")):
                break
        else:
            pytest.fail("never stopped inside a document")
        handler.save(epath.Path(tmp_path), item=it)
        expected = [next(it) for _ in range(6)]
        counters = pipeline.stats(it)
    finally:
        it.close()
    assert counters["total"]["documents"] > 0
    fresh = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    try:
        handler.restore(epath.Path(tmp_path), item=fresh)
        got = [next(fresh) for _ in range(6)]
        assert pipeline.stats(fresh) == counters  # counters come back with the state
    finally:
        fresh.close()
    for a, b in zip(got, expected):
        assert type(a["inputs"]) is np.ndarray  # plain arrays, not grain's shared-memory blocks
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_state_from_another_layout_is_refused(make_config, jsonl_source, documents):
    config = make_config([jsonl_source(documents(10))])
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    other = pipeline.make_iterator(config, "train", process_index=0, process_count=1, num_workers=1)
    with pytest.raises(CheckpointError, match="read with data.num_workers=0 and this run has "
                       "data.num_workers=1; .* resume with --config.data.num_workers=0"):
        other.set_state(state)
    other.close()
    moved = pipeline.make_iterator(config, "train", process_index=1, process_count=2)
    with pytest.raises(CheckpointError, match="saved by process 0 and this is process 1"):
        moved.set_state(state)
    with pytest.raises(CheckpointError, match="not written by elm_jax"):
        moved.set_state({"next_index": 3})


def _save_two_steps(config, run_dir):
    """Checkpoints of steps 1 and 2 (tiny stand-in parameters) holding ``config``'s data stream."""
    from elm_jax.checkpoint import Checkpointer

    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    ckpt = Checkpointer(run_dir, config)
    for step in (1, 2):
        next(it)
        ckpt.save(step, {"w": np.zeros(3, np.float32)}, {"step": np.int32(step)}, it)
    ckpt.close()
    it.close()


def _restore(config, run_dir):
    import jax

    from elm_jax.checkpoint import Checkpointer

    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    ckpt = Checkpointer(run_dir, config)
    try:
        return ckpt.restore_latest({"w": jax.ShapeDtypeStruct((3,), np.float32)},
                                   {"step": jax.ShapeDtypeStruct((), np.int32)}, it)
    finally:
        ckpt.close()
        it.close()


def test_another_worker_count_on_resume_is_refused_naming_both(make_config, jsonl_source,
                                                               documents, tmp_path):
    config = make_config([jsonl_source(documents(10))])
    _save_two_steps(config, tmp_path / "run")
    with pytest.raises(CheckpointError) as refused:
        _restore(with_workers(config, 1), tmp_path / "run")
    assert str(refused.value) == (
        "this checkpoint's data stream was read with data.num_workers=0 and this run has "
        "data.num_workers=1; the order of batches depends on the worker count: resume with "
        "--config.data.num_workers=0")
    # the refusal is about this run, not a damaged checkpoint: no step was set aside
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1", "2"]


def test_another_batch_size_on_resume_is_named_in_a_warning(make_config, jsonl_source, documents,
                                                            tmp_path, caplog):
    config = make_config([jsonl_source(documents(10))], batch_size=2)
    _save_two_steps(config, tmp_path / "run")
    _, train = _restore(make_config([jsonl_source(documents(10))], batch_size=4), tmp_path / "run")
    assert int(train["step"]) == 2
    warned = [r.getMessage() for r in caplog.records if "settings changed" in r.getMessage()]
    assert len(warned) == 1 and "(train.batch_size 2 -> 4)" in warned[0]
