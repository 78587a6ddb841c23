"""Bad input gives a clear error or a counted skip: never a hang, never a silent empty stream."""

import json
import logging

import grain
import numpy as np
import pytest

from elm_jax.data import pipeline, stages
from elm_jax.data.sources import open_source
from elm_jax.data.tokenizer import load_tokenizer
from elm_jax.errors import ConfigError, DataError


def make(config, split="train", **kw):
    return pipeline.make_iterator(config, split, process_index=0, process_count=1, **kw)


def test_missing_path_and_missing_split(make_config, jsonl_source, documents, tmp_path):
    config = make_config([{"kind": "jsonl", "train": str(tmp_path / "nope" / "*.jsonl")}])
    with pytest.raises(DataError, match=r"data.sources\[0\].train: no file matches .*nope"):
        make(config)
    config = make_config([jsonl_source(documents(3))])
    with pytest.raises(DataError, match="no source in data.sources has a 'validation' split"):
        make(config, "validation")


def test_empty_dataset(make_config, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    config = make_config([{"kind": "jsonl", "train": str(tmp_path / "empty.jsonl")}])
    with pytest.raises(DataError, match="has no documents in its 'train' split"):
        make(config)


def test_everything_filtered_out_fails_up_front_with_counters(make_config, jsonl_source, documents):
    config = make_config([jsonl_source(documents(20, words=(3, 10)))], min_chars=10_000)
    with pytest.raises(DataError, match=r"none of its first 20 documents .*dropped_chars.*min_chars=10000"):
        make(config)
    config = make_config([jsonl_source(documents(20, words=(3, 10)))], min_tokens=10_000)
    with pytest.raises(DataError, match=r"dropped_tokens"):
        make(config)


def test_a_stream_gone_dry_stops_instead_of_spinning(make_config, jsonl_source, documents, monkeypatch):
    monkeypatch.setattr(stages, "DRY_LIMIT", 50)
    config = make_config([jsonl_source(documents(5, words=(3, 10)))], min_chars=10_000)
    src = open_source(0, config.data.sources[0], "train", config.data.cache_dir)
    ds = stages.PiecesIterDataset(grain.MapDataset.source(src).repeat().to_iter_dataset(), source=src,
                                  tokenizer=load_tokenizer(config), words_per_piece=64, min_chars=10_000,
                                  min_tokens=0, max_tokens=None)
    with pytest.raises(DataError, match="documents in a row gave no piece"):
        next(iter(ds))


def test_bad_json_lines_are_skipped_counted_and_located(make_config, documents, tmp_path, caplog):
    docs = documents(6, words=(5, 30))
    lines = [json.dumps({"text": d}) for d in docs]
    lines.insert(2, '{"text": "unterminated')
    lines.insert(5, json.dumps({"title": "no text field"}))
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    config = make_config([{"kind": "jsonl", "train": str(tmp_path / "mixed.jsonl")}], mode="pad",
                         batch_size=2, min_chars=0, min_tokens=0)
    with caplog.at_level(logging.WARNING, logger="elm_jax.data"):
        it = make(config, num_epochs=1)
        rows = [r for b in it for r in b["inputs"]]
    assert len(rows) == 6
    counters = pipeline.stats(it)["total"]
    assert counters["documents"] == 8 and counters["bad_records"] == 2
    assert counters["emitted_pieces"] == 6
    assert f"{tmp_path / 'mixed.jsonl'}:3: not valid JSON" in caplog.text
    assert f"{tmp_path / 'mixed.jsonl'}:6: no string field 'text'" in caplog.text


def test_invalid_utf8_is_replaced_and_counted(make_config, tmp_path):
    good = "the king is dead and the queen is fair"
    (tmp_path / "bytes.txt").write_bytes(b"fair \xff\xfe lady of the night\n" + good.encode() + b"\n")
    config = make_config([{"kind": "text", "train": str(tmp_path / "bytes.txt")}], mode="pad",
                         batch_size=2, min_chars=0, min_tokens=0)
    tok = load_tokenizer(config)
    it = make(config, num_epochs=1)
    texts = sorted(tok.decode(r) for b in it for r in b["inputs"])
    assert texts == ["fair \ufffd\ufffd lady of the night", good]
    assert pipeline.stats(it)["total"]["invalid_utf8"] == 1


def test_an_enormous_document_streams_piece_by_piece(make_config, jsonl_source, documents):
    huge = " ".join(documents(400, seed=5, words=(400, 600)))  # ~200k words in one document
    glued = "x" * 50_000  # one 50k-character "word"
    config = make_config([jsonl_source([huge, glued])], mode="pad", words_per_piece=64, batch_size=2)
    it = make(config)
    first = next(it)
    assert first["inputs"].shape == (2, 32)
    counters = pipeline.stats(it)["total"]
    assert counters["documents"] <= 2
    assert counters["pieces"] < len(huge.split()) / 64 / 4  # cut lazily, not all at once
    rows = [next(it) for _ in range(3000)]  # through both documents
    counters = pipeline.stats(it)["total"]
    slices = -(-50_000 // (64 * stages.CHARS_PER_WORD_CAP))  # per read of the glued document
    assert counters["long_pieces"] >= slices and counters["long_pieces"] % slices == 0
    assert counters["truncated_tokens"] > 0 and all(r["loss_mask"].any() for r in rows)


def test_indivisible_batch_and_too_few_documents(make_config, jsonl_source, documents):
    config = make_config([jsonl_source(documents(3))], batch_size=3)
    with pytest.raises(ConfigError, match="not divisible by the 2 data shards"):
        pipeline.make_iterator(config, "train", process_index=0, process_count=2)
    config = make_config([jsonl_source(documents(3))], batch_size=4)
    with pytest.raises(DataError, match="3 documents, fewer than the 4 data shards"):
        pipeline.make_iterator(config, "train", process_index=0, process_count=4)
    assert np.all(next(make(config))["segment_ids"] >= 0)


def test_a_corrupt_array_record_file(make_config, tmp_path):
    (tmp_path / "bad.array_record").write_bytes(np.random.default_rng(0).bytes(200_000))
    config = make_config([{"kind": "array_record", "train": str(tmp_path / "bad.array_record")}])
    with pytest.raises(DataError, match=r"data.sources\[0\].train: cannot read .* as ArrayRecord"):
        make(config)
