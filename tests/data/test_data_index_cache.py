"""The row-offset index of a plain JSONL file is built once, reused, and rebuilt when the file
changes (size or mtime); Parquet footers likewise."""

import os

import pytest
from formats import json_lines, write_parquet

from elm_jax.data import sources, streams


def entries(cache, kind):
    return sorted((cache / "index" / kind).glob("*"))


def test_line_offsets_are_cached_reused_and_invalidated(tmp_path, documents, monkeypatch):
    cache, path = tmp_path / "cache", tmp_path / "a.jsonl"
    docs = documents(5)
    path.write_bytes(json_lines(docs) + b"\n\n")  # blank lines are not records
    src = {"kind": "jsonl", "train": str(path)}
    first = sources.open_source(0, src, "train", str(cache))
    assert [first.parse(first[i][1], bytes.decode) for i in range(len(first))] == docs
    [entry] = entries(cache, "lines")

    def no_scan(path):
        raise AssertionError("the index was rebuilt although the file did not change")

    monkeypatch.setattr(sources, "_line_offsets", no_scan)
    again = sources.open_source(0, src, "train", str(cache))
    assert len(again) == 5 and entries(cache, "lines") == [entry]

    monkeypatch.undo()
    with open(path, "ab") as f:  # a changed file: another size and mtime
        f.write(json_lines(["one more document"]))
    changed = sources.open_source(0, src, "train", str(cache))
    assert len(changed) == 6 and changed.parse(changed[5][1], bytes.decode) == "one more document"
    assert len(entries(cache, "lines")) == 1 and entries(cache, "lines") != [entry]  # stale one gone

    st = os.stat(path)  # same size, new mtime (rewritten in place): rebuilt too
    path.write_bytes(path.read_bytes().replace(b"one more", b"One More"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rewritten = sources.open_source(0, src, "train", str(cache))
    assert rewritten.parse(rewritten[5][1], bytes.decode) == "One More document"


def test_the_index_survives_pickling_into_workers(tmp_path, documents):
    import pickle

    path = tmp_path / "a.jsonl"
    path.write_bytes(json_lines(documents(4)))
    src = sources.open_source(0, {"kind": "jsonl", "train": str(path)}, "train", str(tmp_path))
    blob = pickle.dumps(src)
    assert len(blob) < 4096  # the offsets are not copied: workers map the cached file
    copy = pickle.loads(blob)
    assert [copy[i] for i in range(4)] == [src[i] for i in range(4)]


def test_parquet_footers_are_cached(tmp_path, documents, monkeypatch):
    write_parquet(tmp_path / "a.parquet", documents(12), row_group_size=5)
    assert streams.parquet_parts(str(tmp_path / "a.parquet"), "content", str(tmp_path), "x") == [5, 5, 2]

    def no_read(*args, **kwargs):
        raise AssertionError("the footer was read again")

    monkeypatch.setattr("pyarrow.parquet.ParquetFile", no_read)
    assert streams.parquet_parts(str(tmp_path / "a.parquet"), "content", str(tmp_path), "x") == [5, 5, 2]
    with pytest.raises(Exception, match="no column 'body'"):  # checked against the cached schema
        streams.parquet_parts(str(tmp_path / "a.parquet"), "body", str(tmp_path), "x")
