"""Worker processes: the stream resumes exactly through grain's orbax handler; the worker count
and process layout are part of the state and a mismatch is refused."""

import dataclasses

import numpy as np
import pytest
from etils import epath

from elm_jax.data import pipeline
from elm_jax.errors import DataError


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
    with pytest.raises(DataError, match="num_workers=0 but this run has num_workers=1"):
        other.set_state(state)
    other.close()
    moved = pipeline.make_iterator(config, "train", process_index=1, process_count=2)
    with pytest.raises(DataError, match="process_index=0 but this run has process_index=1"):
        moved.set_state(state)
    with pytest.raises(DataError, match="not written by elm_jax"):
        moved.set_state({"next_index": 3})
