"""The grain pipeline end to end: layouts, packing, determinism, sharding, exact resume."""

import json

import numpy as np
import pytest

from elm_jax.data import pipeline
from elm_jax.data.tokenizer import load_tokenizer

KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(KEYS)
        for key in KEYS:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_pad_mode_rows_are_padded_pieces(make_config, jsonl_source, documents):
    docs = documents(12, words=(3, 30))  # shorter than a piece: one piece per document
    config = make_config([jsonl_source(docs)], mode="pad", seq_len=24, batch_size=3, min_chars=0,
                         min_tokens=0)
    tok = load_tokenizer(config)
    expected = {}
    for d in docs:
        t = np.full(25, 512, np.int32)
        ids = tok.encode(d)[:25]
        t[:len(ids)] = ids
        expected[tuple(t)] = len(ids)
    batches = take(pipeline.make_iterator(config, "train", process_index=0, process_count=1), 8)
    seen = set()
    for b in batches:
        assert b["inputs"].shape == (3, 24) and b["inputs"].dtype == np.int32
        for i in range(3):
            full = tuple(np.append(b["inputs"][i], b["targets"][i, -1]))
            assert full in expected  # t[:-1] and t[1:] of one padded piece
            n = expected[full]
            np.testing.assert_array_equal(b["targets"][i, :-1], b["inputs"][i, 1:])
            np.testing.assert_array_equal(b["loss_mask"][i], np.arange(24) < n - 1)
            np.testing.assert_array_equal(b["segment_ids"][i], np.arange(24) < n)
            np.testing.assert_array_equal(b["positions"][i], np.where(np.arange(24) < n, np.arange(24), 0))
            seen.add(full)
    assert len(seen) == 12  # 24 rows = two epochs, every document in each


def numpy_pack(pieces, seq_len, rows):
    """Reference concat-then-split: shifted pieces back to back, cut every seq_len tokens."""
    inputs = np.concatenate([p[:-1] for p in pieces])
    targets = np.concatenate([p[1:] for p in pieces])
    seg = np.concatenate([np.full(len(p) - 1, i) for i, p in enumerate(pieces)])
    pos = np.concatenate([np.arange(len(p) - 1) for p in pieces])
    out = []
    for r in range(rows):
        sl = slice(r * seq_len, (r + 1) * seq_len)
        s = seg[sl]
        starts = np.r_[True, s[1:] != s[:-1]]
        local = np.cumsum(starts)
        # A fragment continued from the previous row restarts its positions at 0.
        first = pos[sl][0]
        p = pos[sl] - np.where(local == 1, first, 0)
        out.append({"inputs": inputs[sl], "targets": targets[sl], "segment_ids": local, "positions": p})
    return out


def test_pack_mode_matches_a_numpy_concat_then_split(make_config, jsonl_source, documents):
    docs = documents(30, words=(5, 150))
    config = make_config([jsonl_source(docs)], mode="pack", seq_len=32, batch_size=2, words_per_piece=40)
    src = pipeline._open_sources(config, "train")[0][1]
    tok = load_tokenizer(config)
    pieces_it = iter(pipeline._pieces(config, pipeline._documents(config, src, 0, 0, 1, None), src, tok))
    pieces = take(pieces_it, 200)
    reference = numpy_pack(pieces, 32, 40)
    rows = [r for b in take(pipeline.make_iterator(config, "train", process_index=0, process_count=1), 20)
            for r in (dict(zip(b, v)) for v in zip(*b.values()))]
    for row, ref in zip(rows, reference):
        for key in ("inputs", "targets", "segment_ids", "positions"):
            np.testing.assert_array_equal(row[key], ref[key], err_msg=key)
        np.testing.assert_array_equal(row["loss_mask"], 1.0)  # endless stream: rows are full
    # Pieces are real documents' text with BOS/EOS, and span rows (positions restart).
    assert all(p[0] == 1 and p[-1] == 2 for p in pieces)
    assert any(r["positions"][0] == 0 and r["segment_ids"][0] == 1 for r in rows[1:])


def test_shuffle_is_deterministic_and_seeded(make_config, jsonl_source, documents):
    src = jsonl_source(documents(40))
    a = take(pipeline.make_iterator(make_config([src]), "train", process_index=0, process_count=1), 4)
    b = take(pipeline.make_iterator(make_config([src]), "train", process_index=0, process_count=1), 4)
    assert_same(a, b)
    c = take(pipeline.make_iterator(make_config([src], shuffle_seed=1), "train", process_index=0,
                                    process_count=1), 4)
    assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])


def test_processes_partition_the_documents(make_config, jsonl_source, documents):
    docs = [f"document number {i} " + d for i, d in enumerate(documents(24, words=(3, 20)))]
    config = make_config([jsonl_source(docs)], mode="pad", seq_len=64, batch_size=4, min_chars=0,
                         min_tokens=0)
    tok = load_tokenizer(config)
    per_host = []
    for host in range(2):
        it = pipeline.make_iterator(config, "train", process_index=host, process_count=2, num_epochs=1)
        batches = list(it)
        assert len(batches) == 6  # 12 documents each, 2 rows per batch per process
        per_host.append({tok.decode(row) for b in batches for row in b["inputs"]})
    assert not per_host[0] & per_host[1]
    assert per_host[0] | per_host[1] == {d.rstrip() for d in docs}


def find(state, key):
    """Every value stored under ``key`` in a nested iterator state."""
    if isinstance(state, dict):
        if key in state:
            yield state[key]
        for value in state.values():
            yield from find(value, key)
    elif isinstance(state, list):
        for value in state:
            yield from find(value, key)


def test_resume_is_exact_mid_document(make_config, jsonl_source, documents, monkeypatch):
    monkeypatch.setattr(pipeline, "TOKENIZER_BATCH_CHARS", 300)  # tokenizer batches end mid-document
    config = make_config([jsonl_source(documents(50, words=(20, 300)))], words_per_piece=30,
                         batch_size=3)
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    for _ in range(50):
        take(it, 1)
        state = json.loads(json.dumps(it.get_state()))  # what grain's orbax handler writes
        if next(find(state, "doc_used")) > 0 and next(find(state, "taken")) > 0:
            break
    else:
        pytest.fail("never stopped inside a document")
    expected = take(it, 6)
    fresh = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    fresh.set_state(state)
    assert_same(take(fresh, 6), expected)
    assert pipeline.stats(fresh)["total"] == pipeline.stats(it)["total"]


def test_mixture_proportions_follow_the_weights(make_config, jsonl_source, documents):
    alpha = jsonl_source(["alpha " + d for d in documents(30, seed=1, words=(3, 20))], "alpha", weight=3.0,
                         validation=["alpha held out"])
    beta = jsonl_source(["beta " + d for d in documents(30, seed=2, words=(3, 20))], "beta", weight=1.0)
    config = make_config([alpha, beta], mode="pad", seq_len=32, batch_size=4, min_chars=0, min_tokens=0)
    tok = load_tokenizer(config)
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    texts = [tok.decode(r) for b in take(it, 100) for r in b["inputs"]]
    share = sum(t.startswith("alpha") for t in texts) / len(texts)
    assert sum(t.startswith(("alpha", "beta")) for t in texts) == 400
    assert abs(share - 0.75) < 0.03
    counters = pipeline.stats(it)
    assert set(counters) == {"alpha", "beta", "total"}
    assert counters["total"]["emitted_pieces"] == counters["alpha"]["emitted_pieces"] + \
        counters["beta"]["emitted_pieces"]
    # Only alpha has a validation split: validation draws from it alone.
    val = next(pipeline.make_iterator(config, "validation", process_index=0, process_count=1))
    assert {tok.decode(r) for r in val["inputs"]} == {"alpha held out"}
