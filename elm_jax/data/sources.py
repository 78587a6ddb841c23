"""Document sources: TFDS, ArrayRecord, Parquet, JSON lines / lists and text files, Shakespeare.

Each entry of ``data.sources`` is a dict. Keys shared by every kind: ``kind``, ``weight`` (mixture
weight, the fraction of rows drawn from this source), ``name`` (label in counters and checkpoints).

- ``shakespeare``: no other key; the embedded corpus (``elm-data prepare shakespeare``).
- ``tfds``: ``dataset`` (e.g. ``"c4/en:3.1.0"``), ``data_dir``, ``field`` (default ``"text"``),
  ``train`` / ``validation``: split names (default ``"train"`` / ``"validation"``).
- ``array_record``: ``train`` / ``validation``: a path, glob, ``{file_id}`` template or list of
  them; ``field``: the JSON field when records are JSON objects, else each record is the
  document's UTF-8 text.
- ``parquet``: paths as above; ``field``: the text column (default ``"text"``).
- ``jsonl``: paths as above; ``field`` (default ``"text"``). Files may be gzip or zstd compressed
  (recognised from their first bytes) and may hold one JSON list of objects instead of lines.
- ``text``: paths as above (plain or compressed); ``unit``: ``"line"`` (default: one document per
  line) or ``"file"`` (one document per file).

File-based kinds also take ``file_ids: [start, stop]``, the numbers a ``{file_id}`` template in
their paths runs over (CoreNet's ``file_id_range``, e.g. ``"train-{file_id:05d}-05534.parquet"``).
Relative paths are taken from ``data.data_root``; ``gs://`` paths work where ``gcsfs`` is installed.

Local plain JSON lines, text and ArrayRecord files are read by random access (documents shuffled
globally); Parquet, compressed and remote files are read as streams (``elm_jax.data.streams``).
Sources only do I/O: a record is ``(location, raw)``; turning raw records into text (``parse``)
happens in the pipeline, which counts and skips bad records.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from elm_jax.common_types import DATA_SPLITS
from elm_jax.config import check_source
from elm_jax.data import files, index_cache, paths, prepare
from elm_jax.data.records import RecordParser
from elm_jax.data.streams import StreamSource, parquet_parts
from elm_jax.errors import ConfigError, DataError
from elm_jax.storage import is_uri


def source_name(index: int, src: Mapping[str, Any]) -> str:
    return str(src.get("name") or f"{index}_{src['kind']}")


class DocumentSource(RecordParser):
    """A random-access source of raw documents plus the rule that turns one into text."""

    def __init__(self, name: str, records: Any, *, field: str | None = None, json_records: bool = False,
                 where: Any = None, file_list: Sequence[str] = ()):
        super().__init__(name, field=field, json_records=json_records)
        self._records = records
        self._where = where
        self.num_records = len(records)
        self.files = list(file_list)  # the input files, where the source has files

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self._records[index]

    def where(self, index: int) -> str:
        """Human-readable location of record ``index`` (file:line where known)."""
        return self._where(index) if self._where else f"{self.name} record {index}"


def _line_offsets(path: str):
    """``[n, 2]`` int64 (start, end) byte offsets of the non-empty lines of a local file."""
    newlines, size = [], 0
    with open(path, "rb") as f:
        while chunk := f.read(LineIndex.CHUNK):
            newlines.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + size)
            size += len(chunk)
    breaks = np.concatenate([*newlines, np.array([size], np.int64)]).astype(np.int64)
    starts = np.concatenate([[0], breaks[:-1] + 1]).astype(np.int64)
    keep = breaks > starts  # drop empty lines
    return np.stack([starts[keep], breaks[keep]], axis=1)


class LineIndex:
    """Byte offsets of the non-empty lines of local files, for random access by line.

    The offsets are found once per file version and cached (``elm_jax.data.index_cache``).
    """

    CHUNK = 1 << 24

    def __init__(self, file_list: Sequence[str], cache_dir: str | None = None):
        self.files = list(file_list)
        self.cache_dir = cache_dir
        self.first = [0]
        self._entries = []
        for path in self.files:
            offsets, entry = index_cache.cached_array("lines", path, cache_dir,
                                                      lambda p=path: _line_offsets(p))
            self._entries.append(str(entry))
            self.first.append(self.first[-1] + len(offsets))
        self._offsets: list[Any] | None = None
        self._fds: dict[int, int] = {}

    def _table(self, file: int):
        if self._offsets is None:  # after unpickling in a worker: map the cached files again
                    self._offsets = [np.load(e, mmap_mode="r") for e in self._entries]
        return self._offsets[file]

    def __len__(self) -> int:
        return self.first[-1]

    def locate(self, index: int) -> tuple[int, int]:
        file = bisect.bisect_right(self.first, index) - 1
        return file, index - self.first[file]

    def __getitem__(self, index: int) -> bytes:
        file, line = self.locate(index)
        start, end = (int(x) for x in self._table(file)[line])
        data = os.pread(self._fd(file), end - start, start)
        return data[:-1] if data.endswith(b"\r") else data

    def _fd(self, file: int) -> int:
        if file not in self._fds:
            self._fds[file] = os.open(self.files[file], os.O_RDONLY)
        return self._fds[file]

    def where(self, index: int) -> str:
        file, line = self.locate(index)
        with open(self.files[file], "rb") as f:
            line_no = f.read(int(self._table(file)[line][0])).count(b"\n") + 1
        return f"{self.files[file]}:{line_no}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}, "_offsets": None}


class WholeFiles:
    """Each file is one document (decompressed when gzip or zstd)."""

    def __init__(self, file_list: Sequence[str]):
        self.files = list(file_list)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> bytes:
        return files.read_all(self.files[index])

    def where(self, index: int) -> str:
        return self.files[index]


def open_source(index: int, src: Mapping[str, Any], split: str, cache_dir: str | None = None,
                data_root: str = "") -> DocumentSource | StreamSource | None:
    """The documents of ``split`` in source ``index``; None if the source has no such split."""
    if split not in DATA_SPLITS:
        raise ConfigError(f"split {split!r} is invalid: expected one of {DATA_SPLITS}")
    check_source(index, src)
    kind, name = src["kind"], source_name(index, src)
    where = f"data.sources[{index}].{split}"
    if kind == "shakespeare":
        return DocumentSource(name, _shakespeare(split, cache_dir), field="text")
    if kind == "tfds":
        return DocumentSource(name, _tfds(src, split), field=src.get("field") or "text")
    spec = src.get(split, None)
    if not spec:
        return None
    found = files.expand_paths(spec, where, root=data_root, file_ids=src.get("file_ids"))
    if kind == "array_record":
        return _array_record(name, found, src, where)
    if kind == "parquet":
        field = src.get("field") or "text"
        rows = files.map_paths(lambda path: parquet_parts(path, field, cache_dir, where), found)
        parts = [[group for group, n in enumerate(r) if n] for r in rows]
        return StreamSource(name, found, "parquet", field=field, parts=parts)
    if kind == "text" and src.get("unit", "line") == "file":
        records = WholeFiles(found)
        return DocumentSource(name, records, where=records.where, file_list=found)
    field = src.get("field") or "text"
    if kind == "jsonl":
        lists = files.map_paths(files.starts_with_list, found)
        if any(lists) and not all(lists):
            raise DataError(f"{where}: {found[lists.index(True)]} holds a JSON list but "
                            f"{found[lists.index(False)]} JSON lines; make them two sources")
        if any(lists):
            return StreamSource(name, found, "json_list", field=field)
    if any(files.map_paths(lambda path: is_uri(path) or files.compression(path), found)):
        return StreamSource(name, found, "json_lines" if kind == "jsonl" else "lines", field=field)
    records = LineIndex(found, cache_dir)
    return DocumentSource(name, records, field=field, json_records=kind == "jsonl", where=records.where,
                          file_list=found)


def _array_record(name: str, found: list[str], src: Mapping[str, Any], where: str) -> DocumentSource:
    try:
        records = grain.sources.ArrayRecordDataSource(found)
    except Exception as err:  # array_record raises bare RuntimeErrors on non-ArrayRecord files
        raise DataError(f"{where}: cannot read {found} as ArrayRecord ({err})") from None
    return DocumentSource(name, records, field=src.get("field"), json_records=bool(src.get("field")),
                          file_list=found)


def _shakespeare(split: str, cache_dir: str | None):
    import tensorflow_datasets as tfds

    data_dir = paths.shakespeare_dir(cache_dir) / "tfds"
    builder_dir = data_dir / prepare.BUILDER_NAME / prepare.BUILDER_VERSION
    if not (builder_dir / "dataset_info.json").is_file():
        raise DataError(f"the Shakespeare corpus is not prepared under {str(data_dir)!r}; run "
                        "`elm-data prepare shakespeare` (or elm_jax.data.prepare.ensure_prepared)")
    return tfds.builder_from_directory(str(builder_dir)).as_data_source(split=split)


def _tfds(src: Mapping[str, Any], split: str):
    import tensorflow_datasets as tfds

    split_name = src.get(split, split)
    try:
        return tfds.data_source(src["dataset"], split=split_name, data_dir=src.get("data_dir"),
                                download=False)
    except Exception as err:  # tfds raises many types (AssertionError, DatasetNotFoundError, ...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot open TFDS dataset {src['dataset']!r} split {split_name!r} "
                        f"(data_dir={src.get('data_dir')!r}): {first_line}; prepare it with "
                        "`tfds build --file_format=array_record` or fix the name") from None
