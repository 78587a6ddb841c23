"""Bad files of the streamed formats: a named error or a counted skip, never a hang."""

import gzip
import json
import logging

import pytest
from formats import gzip_members, json_lines, write_parquet, write_source, zstd_frames

from elm_jax.config import default_config, from_config_dict
from elm_jax.data import files, pipeline, stream_stages
from elm_jax.errors import ConfigError, DataError


def make(config, **kw):
    kw = {"process_index": 0, "process_count": 1, **kw}
    return pipeline.make_iterator(config, "train", **kw)


def drain(it):
    return [row for batch in it for row in batch["inputs"]]


@pytest.fixture
def loose(make_config):
    """``loose(sources)``: a config without filters, so every readable document gives a row."""
    return lambda sources, batch_size=1, **kw: make_config(
        sources, mode="pad", seq_len=256, words_per_piece=1000, min_chars=0, min_tokens=0,
        batch_size=batch_size, **kw)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_corrupt_stream_is_named_mid_file(codec, loose, documents, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CHUNK_BYTES", 256)  # the damage lies beyond the first chunk
    data = bytearray((gzip_members if codec == "gzip" else zstd_frames)(json_lines(documents(200))))
    data[len(data) // 3:len(data) // 3 + 64] = bytes(64)
    (tmp_path / "bad.jsonl").write_bytes(bytes(data))
    config = loose([{"kind": "jsonl", "train": str(tmp_path / "bad.jsonl")}])
    with pytest.raises(DataError, match=f"bad.jsonl: corrupt {codec} stream"):
        drain(make(config, num_epochs=1))


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_truncated_stream_is_named(codec, loose, documents, tmp_path):
    data = (gzip.compress if codec == "gzip" else zstd_frames)(json_lines(documents(200)))
    (tmp_path / "cut.jsonl.z").write_bytes(data[:len(data) * 2 // 3])
    config = loose([{"kind": "jsonl", "train": str(tmp_path / "cut.jsonl.z")}])
    with pytest.raises(DataError, match=f"cut.jsonl.z: corrupt {codec} stream .*truncated"):
        drain(make(config, num_epochs=1))


def test_parquet_without_the_column_or_with_a_non_text_column(loose, documents, tmp_path):
    write_parquet(tmp_path / "a.parquet", documents(8), field="body")
    with pytest.raises(DataError, match=r"a.parquet has no column 'text' \(columns: \['body', 'id'\]\)"):
        make(loose([{"kind": "parquet", "train": str(tmp_path / "a.parquet")}]))
    with pytest.raises(DataError, match="column 'id' of .*a.parquet holds int64, not text"):
        make(loose([{"kind": "parquet", "train": str(tmp_path / "a.parquet"), "field": "id"}]))


def test_a_glob_or_a_file_range_that_matches_nothing(loose, tmp_path, documents):
    with pytest.raises(DataError, match=r"data.sources\[0\].train: no file matches '.*/\*.parquet'"):
        make(loose([{"kind": "parquet", "train": str(tmp_path / "*.parquet")}]))
    write_parquet(tmp_path / "p-1.parquet", documents(3))
    src = {"kind": "parquet", "train": str(tmp_path / "p-{file_id}.parquet"), "file_ids": [0, 3]}
    with pytest.raises(DataError, match=r"2 of the 3 files '.*p-\{file_id\}.parquet' are missing, "
                                        r"e.g. '.*p-0.parquet'"):
        make(loose([src]))


def test_records_whose_text_is_not_a_string_are_counted_and_located(loose, documents, tmp_path, caplog):
    good = documents(4)
    write_parquet(tmp_path / "n.parquet", good + ["x"], values=good + [None])
    lines = [json.dumps({"text": t}) for t in good] + [json.dumps({"text": 7}), json.dumps(["a list"])]
    (tmp_path / "n.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    (tmp_path / "n.json").write_text(json.dumps([{"text": t} for t in good] + [{"text": None}, "str"]))
    sources = [{"kind": "parquet", "name": "pq", "train": str(tmp_path / "n.parquet"), "field": "content"},
               {"kind": "jsonl", "name": "gz", "train": str(tmp_path / "n.jsonl.gz")},
               {"kind": "jsonl", "name": "list", "train": str(tmp_path / "n.json")}]
    for src, bad in zip(sources, (1, 2, 2)):
        with caplog.at_level(logging.WARNING, logger="elm_jax.data"):
            it = make(loose([src]), num_epochs=1)
            assert len(drain(it)) == 4
        counters = pipeline.stats(it)["total"]
        assert (counters["documents"], counters["bad_records"]) == (4 + bad, bad), src["name"]
    assert "n.parquet row group 0 row 4: no string field 'content' (null)" in caplog.text
    assert "n.jsonl.gz:5: no string field 'text' (a int)" in caplog.text
    assert "n.jsonl.gz:6: no string field 'text' (a JSON list, not an object)" in caplog.text
    assert "n.json item 4: no string field 'text' (missing)" in caplog.text
    assert "n.json item 5: no string field 'text' (a JSON str, not an object)" in caplog.text


def test_json_lists_and_lines_in_one_source_are_refused(loose, documents, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"text": t} for t in documents(3)]))
    (tmp_path / "b.json").write_bytes(json_lines(documents(3)))
    with pytest.raises(DataError, match=r"a.json holds a JSON list but .*b.json JSON lines"):
        make(loose([{"kind": "jsonl", "train": str(tmp_path / "*.json")}]))


def test_empty_streams_are_named_not_spun_on(loose, documents, tmp_path, monkeypatch):
    monkeypatch.setattr(stream_stages, "WINDOW", 4)  # a window of a one-document source: 4 epochs
    monkeypatch.setattr(pipeline, "TOKENIZER_BATCH_CHARS", 100)
    (tmp_path / "empty.jsonl.gz").write_bytes(gzip.compress(b"\n\n"))
    with pytest.raises(DataError, match="source '0_jsonl' has no documents"):
        make(loose([{"kind": "jsonl", "train": str(tmp_path / "empty.jsonl.gz")}]))
    # One document, two processes: in each epoch one of them has nothing to read; units are
    # dealt out afresh each epoch, so both still receive it.
    (tmp_path / "one.jsonl.gz").write_bytes(gzip.compress(json_lines(documents(1))))
    config = loose([{"kind": "jsonl", "train": str(tmp_path / "one.jsonl.gz")}], batch_size=2)
    for process in range(2):
        assert len(next(make(config, process_index=process, process_count=2))["inputs"]) == 1


@pytest.mark.parametrize("source, message", [
    ({"kind": "parquet", "train": "a-{file_id:03d}.parquet"}, r"has a \{file_id\} path but no 'file_ids'"),
    ({"kind": "jsonl", "train": "a-{file_id}.jsonl", "file_ids": [5, 2]}, r"file_ids = \[5, 2\] is invalid"),
    ({"kind": "text", "train": "a.txt", "file_ids": [0, 2]}, r"file_ids is set but no path has"),
    ({"kind": "parquet", "train": "a.parquet", "unit": "line"}, r"unknown key\(s\) \['unit'\]"),
])
def test_file_ids_and_parquet_keys_are_validated_with_the_config(source, message):
    cd = default_config()
    cd.data.sources = [source]
    with pytest.raises(ConfigError, match=r"data\.sources\[0\].*" + message):
        from_config_dict(cd)


def test_a_relative_path_is_taken_from_data_root(make_config, documents, tmp_path):
    src = write_source(tmp_path / "root" / "corpus", "jsonl_zst", documents(5))
    src["train"] = "corpus/shard-*.jsonl.zst"
    config = make_config([src], data_root=str(tmp_path / "root"))
    assert len(list(pipeline.document_texts(config, "train"))) == 5
    with pytest.raises(DataError, match="no file matches 'corpus/shard"):
        list(pipeline.document_texts(make_config([src]), "train"))
