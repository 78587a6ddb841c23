"""Writers of the corpora's file formats, for tests: the same documents as Parquet (several files,
several row groups), gzip / zstd JSON lines (several members / frames), JSON lists and plain JSONL."""

import gzip
import json

STREAMED = ("parquet", "jsonl_gz", "jsonl_zst", "json_list_gz")
KINDS = ("jsonl", *STREAMED)


def json_lines(docs, field="text"):
    return b"".join(json.dumps({field: d}).encode() + b"\n" for d in docs)


def halves(items):
    """First and second half of bytes or a list."""
    return items[:len(items) // 2], items[len(items) // 2:]


def gzip_members(data: bytes) -> bytes:
    """Two concatenated gzip members (as ``cat a.gz b.gz`` makes)."""
    return b"".join(gzip.compress(part) for part in halves(data))


def zstd_frames(data: bytes) -> bytes:
    import zstandard

    return b"".join(zstandard.ZstdCompressor().compress(part) for part in halves(data))


def write_parquet(path, docs, field="content", row_group_size=5, values=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = docs if values is None else values
    pq.write_table(pa.table({"id": list(range(len(docs))), field: column}), path,
                   row_group_size=row_group_size)
    return path


def write_source(directory, kind, docs, name=None):
    """A ``data.sources`` entry holding ``docs`` in the format ``kind`` (files under ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = name or kind
    if kind == "jsonl":
        (directory / "plain.jsonl").write_bytes(json_lines(docs))
        return {"kind": "jsonl", "name": name, "train": str(directory / "plain.jsonl")}
    if kind == "parquet":  # three numbered files (a {file_id} range), row groups of 5 rows
        thirds = [docs[i::3] for i in range(3)]
        for i, part in enumerate(thirds):
            write_parquet(directory / f"part-{i:03d}-of-003.parquet", part)
        return {"kind": "parquet", "name": name, "field": "content", "file_ids": [0, 3],
                "train": str(directory / "part-{file_id:03d}-of-003.parquet")}
    if kind == "jsonl_gz":  # gzip content under a name without .gz: found from the bytes
        (directory / "data.jsonl").write_bytes(gzip_members(json_lines(docs)))
        return {"kind": "jsonl", "name": name, "train": str(directory / "data.jsonl")}
    if kind == "jsonl_zst":  # two files matched by a glob
        for i, part in enumerate(halves(docs)):
            (directory / f"shard-{i}.jsonl.zst").write_bytes(zstd_frames(json_lines(part)))
        return {"kind": "jsonl", "name": name, "train": str(directory / "shard-*.jsonl.zst")}
    if kind == "json_list_gz":
        data = json.dumps([{"text": d, "id": i} for i, d in enumerate(docs)]).encode()
        (directory / "docs.json.gz").write_bytes(gzip.compress(data))
        return {"kind": "jsonl", "name": name, "train": str(directory / "docs.json.gz")}
    raise ValueError(kind)

