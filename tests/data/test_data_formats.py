"""Parquet, gzip / zstd JSON lines and JSON lists give the same documents as plain JSONL, through
the reader and through the pipeline; processes split them exactly; the stream resumes exactly."""

import json

import numpy as np
import pytest
from formats import KINDS, STREAMED, write_source
from test_data_pipeline import find

from elm_jax.data import pipeline, stream_stages
from elm_jax.data.streams import StreamSource
from elm_jax.data.tokenizer import load_tokenizer

DOCS = 41  # not a multiple of files, row groups or processes


@pytest.fixture
def docs(documents):
    # Non-ASCII, punctuation and line breaks, all surviving the round trip through each format.
    return [f"doc {i} café naïve — {d}" for i, d in enumerate(documents(DOCS, seed=7, words=(3, 60)))]


def exact_config(make_config, src, processes=1):
    """Pad mode, one piece per document, no filter: every document becomes one decodable row."""
    return make_config([src], mode="pad", seq_len=512, words_per_piece=1000, min_chars=0,
                       min_tokens=0, batch_size=processes)


def decoded_rows(config, tok, process_index=0, process_count=1):
    it = pipeline.make_iterator(config, "train", process_index=process_index,
                                process_count=process_count, num_epochs=1)
    return [tok.decode(row) for batch in it for row in batch["inputs"]]


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_reads_the_documents_of_plain_jsonl(kind, docs, make_config, tmp_path):
    reference = exact_config(make_config, write_source(tmp_path / "plain", "jsonl", docs))
    config = exact_config(make_config, write_source(tmp_path / kind, kind, docs))
    texts = sorted(pipeline.document_texts(config, "train"))
    assert texts == sorted(pipeline.document_texts(reference, "train")) == sorted(docs)
    src = pipeline._open_sources(config, "train")[0][1]
    assert isinstance(src, StreamSource) == (kind in STREAMED)
    tok = load_tokenizer(config)
    assert sorted(decoded_rows(config, tok)) == sorted(d.strip() for d in docs)


@pytest.mark.parametrize("kind", STREAMED)
@pytest.mark.parametrize("processes", [2, 3])
def test_processes_split_the_documents_exactly(kind, processes, docs, make_config, tmp_path):
    config = exact_config(make_config, write_source(tmp_path, kind, docs), processes)
    tok = load_tokenizer(config)
    per_process = [decoded_rows(config, tok, p, processes) for p in range(processes)]
    seen = [row for rows in per_process for row in rows]
    assert sorted(seen) == sorted(d.strip() for d in docs)  # each document once, in one process
    assert all(per_process)


@pytest.mark.parametrize("kind", STREAMED)
def test_resume_is_exact_inside_a_file_and_a_shuffle_window(kind, docs, make_config, tmp_path,
                                                           monkeypatch):
    monkeypatch.setattr(stream_stages, "WINDOW", 6)
    monkeypatch.setattr(stream_stages, "CYCLE", 2)
    monkeypatch.setattr(pipeline, "TOKENIZER_BATCH_CHARS", 300)
    config = make_config([write_source(tmp_path, kind, docs * 2)], words_per_piece=20, batch_size=2)
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    for _ in range(60):
        next(it)
        state = json.loads(json.dumps(it.get_state()))  # what grain's orbax handler writes
        positions = [s for s in find(state, "next") if isinstance(s, int)]
        if (any(p > 0 for p in positions) and any(w > 0 for w in find(state, "pos_in_window"))
                and any(d > 0 for d in find(state, "doc_used"))):
            break
    else:
        pytest.fail("never stopped inside a file, a window and a document")
    expected = [next(it) for _ in range(8)]
    fresh = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    fresh.set_state(state)
    for a, b in zip([next(fresh) for _ in range(8)], expected):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert pipeline.stats(fresh)["total"] == pipeline.stats(it)["total"]
    it.close()
    fresh.close()


def test_streams_are_shuffled_and_reshuffled_each_epoch(docs, make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(stream_stages, "WINDOW", 8)
    config = exact_config(make_config, write_source(tmp_path, "parquet", docs))
    tok = load_tokenizer(config)
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1, num_epochs=2)
    rows = [tok.decode(row) for batch in it for row in batch["inputs"]]
    assert sorted(rows) == sorted(2 * [d.strip() for d in docs])  # every document once per epoch
    # Epochs may overlap a little (units of the next epoch are interleaved in), so compare the
    # order of first and of second occurrences: each is a shuffle, and they differ.
    first = list(dict.fromkeys(rows))
    second = list(dict.fromkeys(reversed(rows)))[::-1]
    assert first != [d.strip() for d in docs] and first != second


def test_worker_processes_split_units_and_resume_through_grains_handler(docs, make_config, tmp_path):
    import dataclasses

    import grain
    from etils import epath

    config = exact_config(make_config, write_source(tmp_path / "pq", "parquet", docs))
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_workers=2))
    tok = load_tokenizer(config)
    handler = grain.checkpoint.CheckpointHandler()
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1, num_epochs=1)
    try:
        before = [next(it) for _ in range(10)]
        handler.save(epath.Path(tmp_path), item=it)
        after = list(it)
    finally:
        it.close()
    rows = [tok.decode(row) for batch in before + after for row in batch["inputs"]]
    assert sorted(rows) == sorted(d.strip() for d in docs)  # the workers split the units exactly
    fresh = pipeline.make_iterator(config, "train", process_index=0, process_count=1, num_epochs=1)
    try:
        handler.restore(epath.Path(tmp_path), item=fresh)
        resumed = list(fresh)
    finally:
        fresh.close()
    assert len(resumed) == len(after)
    for a, b in zip(resumed, after):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
