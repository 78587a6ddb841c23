"""Random-access document sources: TFDS, ArrayRecord, JSONL and text files, the Shakespeare corpus.

Each entry of ``data.sources`` is a dict. Keys shared by every kind: ``kind``, ``weight`` (mixture
weight, the fraction of rows drawn from this source), ``name`` (label in counters and checkpoints).

- ``shakespeare``: no other key; the embedded corpus (``elm-data prepare shakespeare``).
- ``tfds``: ``dataset`` (e.g. ``"c4/en:3.1.0"``), ``data_dir``, ``field`` (default ``"text"``),
  ``train`` / ``validation``: split names (default ``"train"`` / ``"validation"``).
- ``array_record``: ``train`` / ``validation``: a path, glob or list of them; ``field``: the JSON
  field when records are JSON objects, else each record is the document's UTF-8 text.
- ``jsonl``: ``train`` / ``validation`` as above; ``field`` (default ``"text"``).
- ``text``: ``train`` / ``validation`` as above; ``unit``: ``"line"`` (default: one document per
  line) or ``"file"`` (one document per file).

Sources only do I/O: ``source[i]`` is ``(i, raw)`` with raw bytes (or a TFDS feature dict); turning
raw records into text (``parse``) happens in the pipeline, which counts and skips bad records.
"""

from __future__ import annotations

import bisect
import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from elm_jax.common_types import DATA_SPLITS
from elm_jax.config import check_source
from elm_jax.data import paths, prepare
from elm_jax.errors import ConfigError, DataError


class BadRecord(Exception):
    """A record that cannot become text (not JSON, missing field); counted and skipped."""

    def __init__(self, rule: str, detail: str):
        super().__init__(detail)
        self.rule = rule


def source_name(index: int, src: Mapping[str, Any]) -> str:
    return str(src.get("name") or f"{index}_{src['kind']}")


class DocumentSource:
    """A random-access source of raw documents plus the rule that turns one into text."""

    def __init__(self, name: str, records: Any, *, field: str | None = None, json_records: bool = False,
                 where: Any = None, files: Sequence[str] = ()):
        self.name = name
        self.files = list(files)  # the local files read (empty for TFDS sources)
        self._records = records
        self._field = field
        self._json = json_records
        self._where = where
        self.num_records = len(records)

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self._records[index]

    def where(self, index: int) -> str:
        """Human-readable location of record ``index`` (file:line where known)."""
        return self._where(index) if self._where else f"{self.name} record {index}"

    def parse(self, raw: Any, decode) -> str:
        """Text of one raw record; ``decode(bytes) -> str`` counts invalid UTF-8."""
        if isinstance(raw, Mapping):
            value = raw.get(self._field)
            if value is None:
                raise BadRecord("missing_field", f"no field {self._field!r}")
            return decode(value) if isinstance(value, bytes) else str(value)
        text = decode(raw) if isinstance(raw, bytes) else raw
        if not self._json:
            return text
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise BadRecord("bad_json", f"not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict) or not isinstance(record.get(self._field), str):
            raise BadRecord("missing_field", f"no string field {self._field!r}")
        return record[self._field]


def expand_paths(spec: str | Sequence[str], where: str) -> list[str]:
    """Files matching a path, glob or list of them; missing files are a clear error."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    files: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise DataError(f"{where}: no file matches {pattern!r}; fix the path in the config")
        files.extend(matches)
    return files


class LineIndex:
    """Byte offsets of the non-empty lines of local files, for random access by line."""

    CHUNK = 1 << 24

    def __init__(self, files: Sequence[str]):
        self.files = list(files)
        self.starts, self.ends, self.first = [], [], [0]
        for path in self.files:
            starts, ends = self._scan(path, np)
            self.starts.append(starts)
            self.ends.append(ends)
            self.first.append(self.first[-1] + len(starts))
        self._fds: dict[int, int] = {}

    def _scan(self, path: str, np):
        newlines = []
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(self.CHUNK):
                newlines.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + size)
                size += len(chunk)
        breaks = np.concatenate([*newlines, np.array([size], np.int64)]).astype(np.int64)
        starts = np.concatenate([[0], breaks[:-1] + 1]).astype(np.int64)
        keep = breaks > starts  # drop empty lines
        return starts[keep], breaks[keep]

    def __len__(self) -> int:
        return self.first[-1]

    def locate(self, index: int) -> tuple[int, int]:
        file = bisect.bisect_right(self.first, index) - 1
        return file, index - self.first[file]

    def __getitem__(self, index: int) -> bytes:
        file, line = self.locate(index)
        start, end = int(self.starts[file][line]), int(self.ends[file][line])
        data = os.pread(self._fd(file), end - start, start)
        return data[:-1] if data.endswith(b"\r") else data

    def _fd(self, file: int) -> int:
        if file not in self._fds:
            self._fds[file] = os.open(self.files[file], os.O_RDONLY)
        return self._fds[file]

    def where(self, index: int) -> str:
        file, line = self.locate(index)
        with open(self.files[file], "rb") as f:
            line_no = f.read(int(self.starts[file][line])).count(b"\n") + 1
        return f"{self.files[file]}:{line_no}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}


class WholeFiles:
    """Each file is one document."""

    def __init__(self, files: Sequence[str]):
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> bytes:
        with open(self.files[index], "rb") as f:
            return f.read()

    def where(self, index: int) -> str:
        return self.files[index]


def open_source(index: int, src: Mapping[str, Any], split: str, cache_dir: str | None = None
                ) -> DocumentSource | None:
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
    files = expand_paths(spec, where)
    if kind == "array_record":
        try:
            records = grain.sources.ArrayRecordDataSource(files)
        except Exception as err:  # array_record raises bare RuntimeErrors on non-ArrayRecord files
            raise DataError(f"{where}: cannot read {files} as ArrayRecord ({err})") from None
        return DocumentSource(name, records, field=src.get("field"), json_records=bool(src.get("field")),
                              files=files)
    if kind == "text" and src.get("unit", "line") == "file":
        records = WholeFiles(files)
        return DocumentSource(name, records, where=records.where, files=files)
    records = LineIndex(files)
    return DocumentSource(name, records, field=src.get("field") or "text", json_records=kind == "jsonl",
                          where=records.where, files=files)


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
