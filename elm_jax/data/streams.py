"""Sources read front to back: Parquet, gzip / zstd JSON lines or text lines, JSON lists.

A compressed stream has no random access (reaching record ``i`` means decompressing everything
before it) and a Parquet cell is only reached by decoding its row group, so these sources are not
shuffled document by document like the random-access kinds. They are cut into units, one per
Parquet row group or per compressed file, and read the way grain reads such sources:

    units, shuffled per epoch (seeded) -> this process's slice (units[p::P]) -> repeated
    -> each unit read front to back -> ``CYCLE`` units interleaved (grain workers split the units)
    -> shuffled in windows of ``WINDOW`` documents (grain's ``WindowShuffleIterDataset``)

Every stage keeps its position in the iterator state: a unit resumes at its next record (Parquet
jumps to the row group; a compressed file is decompressed again up to that record), so a restored
run continues with exactly the documents an uninterrupted one would have read. When a source has
fewer units than processes, each unit is read by several processes that keep every P-th record
(``stripes``), so every document still goes to exactly one process. The units are dealt out
afresh each epoch, so a process whose share of a tiny source is empty in one epoch gets documents
in another; a source without any document is refused up front. The grain stages that do this
are in ``elm_jax.data.stream_stages``; this module only reads files (and imports no grain).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from elm_jax.data import files, index_cache
from elm_jax.data.records import BadRecord, Decode, RecordParser
from elm_jax.errors import DataError

PARQUET_BATCH = 1024  # rows decoded at a time
FORMATS = ("parquet", "json_lines", "json_list", "lines")
_TEXT_TYPES = ("string", "large_string", "binary", "large_binary", "string_view", "binary_view")


@dataclasses.dataclass(frozen=True)
class Unit:
    """A piece of a source read front to back: a file's Parquet row group ``part`` (0 for other
    formats), keeping the records whose position ``% stripes == stripe``."""

    file: int
    part: int = 0
    stripe: int = 0
    stripes: int = 1


class StreamSource(RecordParser):
    """The documents of some files of one format, readable unit by unit."""

    def __init__(self, name: str, file_list: Sequence[str], fmt: str, *, field: str | None,
                 parts: Sequence[Sequence[int]] | None = None):
        """``parts[f]``: the non-empty Parquet row groups of file ``f`` (other formats: ``[0]``)."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown stream format {fmt!r}")
        super().__init__(name, field=field, json_records=fmt == "json_lines")
        self.files = list(file_list)
        self.format = fmt
        self.parts = [list(p) for p in parts] if parts is not None else [[0]] * len(self.files)

    def units(self, min_units: int = 1) -> list[Unit]:
        """Every (file, part) once, striped when there are fewer than ``min_units``."""
        base = [(f, p) for f, ps in enumerate(self.parts) for p in ps]
        if not base:
            return []
        stripes = -(-min_units // len(base))
        return [Unit(f, p, s, stripes) for f, p in base for s in range(stripes)]

    def records(self, unit: Unit, start: int = 0) -> Iterator[tuple[int, Any]]:
        """``(position, raw)`` of the unit's records from position ``start`` on."""
        path = self.files[unit.file]
        if self.format == "parquet":
            raws = _parquet_rows(path, unit.part, self._field, start)
            position = start - start % PARQUET_BATCH
        elif self.format == "json_list":
            raws, position = iter(_json_list(path)), 0
        else:
            raws, position = files.lines(files.read_chunks(path)), 0
        for raw in raws:
            if position >= start and position % unit.stripes == unit.stripe and raw != b"":
                yield position, raw
            position += 1

    def parse(self, raw: Any, decode: Decode) -> str:
        if self.format == "json_list" and not isinstance(raw, Mapping):  # an already decoded value
            raise BadRecord("missing_field", f"no string field {self._field!r} (a JSON "
                            f"{type(raw).__name__}, not an object)")
        return super().parse(raw, decode)

    def where(self, location: Any) -> str:
        file, part, position = location
        path = self.files[file]
        if self.format == "parquet":
            return f"{path} row group {part} row {position}"
        if self.format == "json_list":
            return f"{path} item {position}"
        return f"{path}:{position + 1}"

    def all_documents(self) -> Iterator[tuple[Any, Any]]:
        """``(location, raw)`` of every record in file order (tokenizer training, conversion)."""
        for unit in self.units():
            for position, raw in self.records(unit):
                yield (unit.file, unit.part, position), raw


def _parquet_rows(path: str, row_group: int, column: str, start: int) -> Iterator[Any]:
    """Cells of ``column`` in one row group, from the batch holding row ``start`` on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    skip = start // PARQUET_BATCH
    with files.open_binary(path) as f:
        try:
            reader = pq.ParquetFile(f)
            batches = reader.iter_batches(batch_size=PARQUET_BATCH, row_groups=[row_group],
                                          columns=[column], use_threads=False)
            for i, batch in enumerate(batches):
                if i >= skip:
                    yield from batch.column(0).to_pylist()
        except (pa.ArrowException, OSError) as err:
            raise files.CorruptFile(f"{path}: cannot read row group {row_group} of this Parquet "
                                    f"file ({err}); download it again or remove it") from None


def _json_list(path: str) -> list[Any]:
    try:
        value = json.loads(files.read_all(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise files.CorruptFile(f"{path}: not a valid JSON list ({err}); fix or remove the file"
                                ) from None
    if not isinstance(value, list):
        raise files.CorruptFile(f"{path}: holds a JSON {type(value).__name__}, not a list of records")
    return value


def parquet_parts(path: str, column: str, cache_dir: str | None, where: str) -> list[int]:
    """Rows per row group of a Parquet file that has a text ``column`` (metadata, cached)."""

    def read_footer() -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with files.open_binary(path) as f:
                meta = pq.ParquetFile(f)
                schema = meta.schema_arrow
                rows = [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)]
        except (pa.ArrowException, OSError) as err:
            raise files.CorruptFile(f"{where}: {path} is not a readable Parquet file ({err})") from None
        return {"rows": rows, "columns": {f.name: str(f.type) for f in schema}}

    footer = index_cache.cached_json("parquet", path, cache_dir, read_footer)
    columns = footer["columns"]
    if column not in columns:
        raise DataError(f"{where}: {path} has no column {column!r} (columns: {sorted(columns)}); "
                        "set the source's 'field' to the text column")
    if columns[column] not in _TEXT_TYPES:
        raise DataError(f"{where}: column {column!r} of {path} holds {columns[column]}, not text; "
                        "set the source's 'field' to the text column")
    return footer["rows"]
