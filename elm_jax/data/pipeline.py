"""Grain pipelines: documents -> pieces -> filters -> tokens -> pad | pack rows -> mixture -> batches.

Per source: global shuffle of documents (seeded, reshuffled each epoch) -> this process's slice ->
repeat (streamed sources, e.g. Parquet or compressed JSONL: shuffled units of files, interleaved and
window-shuffled, see ``elm_jax.data.streams``) -> optional NFC normalisation -> cut into
``data.words_per_piece``-word pieces -> character filter -> SentencePiece with BOS/EOS -> token
filter -> rows (``pad``: the paper's truncate / right-pad to ``seq_len + 1``;
``pack``: concatenate-then-split with per-document segment ids and positions). Sources are mixed
row by row with the configured weights, rows are batched to ``train.batch_size // process_count``,
and ``data.num_workers`` grain worker processes produce the batches (0: the calling thread does);
they die with the process that started them (``elm_jax.data.workers``).

"Process" index and count here mean the data shard a process loads: the trainer passes
``elm_jax.parallel.mesh.data_shard`` of its mesh, which equals the process index and count only
when no tensor axis spans processes. Before the first batch the processes check that they all see
the same files (``elm_jax.data.agreement``).

Every batch is a dict of NumPy arrays ``inputs``, ``targets`` (int32 [local_batch, seq_len]),
``loss_mask`` (float32, 0 on padding), ``segment_ids`` (int32, 0 = padding, documents from 1),
``positions`` (int32, restarting per document). The iterator's ``get_state()`` / ``set_state()``
(grain's orbax handler) resume the stream exactly, worker processes included.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from elm_jax.config import Config
from elm_jax.data import agreement, stages
from elm_jax.data.files import MissingFiles
from elm_jax.data.records import BadRecord, RecordParser
from elm_jax.data.sources import DocumentSource, open_source, source_name
from elm_jax.data.stream_stages import first_documents, stream_documents
from elm_jax.data.streams import StreamSource
from elm_jax.data.tokenizer import Tokenizer, load_tokenizer
from elm_jax.data.workers import worker_init
from elm_jax.errors import ConfigError, DataError

PROBE_DOCUMENTS = 10_000  # documents checked up front for at least one usable piece
READ_THREADS = 2
READ_BUFFER = 32
PREFETCH_BATCHES = 2
MIN_SHM_BYTES = 1 << 20  # arrays below this size go to the main process by copy, not shared memory
TOKENIZER_BATCH_CHARS = 1 << 16  # characters encoded per SentencePiece call (per thread)


def make_iterator(config: Config, split: str, *, process_index: int | None = None,
                  process_count: int | None = None, num_epochs: int | None = None,
                  num_workers: int | None = None, tokenizer: Tokenizer | None = None
                  ) -> grain.DatasetIterator:
    """This process's batches of ``split`` ("train" or "validation").

    Endless by default (``num_epochs=None``), so every process gets the same number of batches;
    pass ``num_epochs`` for a finite single-process pass. ``process_index`` / ``process_count``
    name the data shard to load (``elm_jax.parallel.mesh.data_shard``); they default to JAX's
    process index and count, which is that shard when no tensor axis spans processes.
    ``num_workers`` overrides ``data.num_workers`` (e.g. 0 for a few evaluation batches, which
    then need no worker start-up); the same iterator started again gives the same batches.
    """
    return iter(make_dataset(config, split, process_index=process_index, process_count=process_count,
                             num_epochs=num_epochs, num_workers=num_workers, tokenizer=tokenizer))


def make_dataset(config: Config, split: str, *, process_index: int | None = None,
                 process_count: int | None = None, num_epochs: int | None = None,
                 num_workers: int | None = None, tokenizer: Tokenizer | None = None
                 ) -> grain.IterDataset:
    """The grain dataset behind :func:`make_iterator` (for benchmarks and inspection)."""
    sources = _open_sources(config, split)  # first: missing data is the likeliest problem
    agreement.check_same_data([src for _, src, _ in sources], split)
    process_index, process_count = _process(process_index, process_count)
    batch = config.train.batch_size
    if batch % process_count:
        raise ConfigError(f"train.batch_size={batch} is not divisible by the {process_count} "
                          "data shards (processes that load distinct rows); every shard must load "
                          "the same number of rows")
    tokenizer = tokenizer or load_tokenizer(config)
    rows = {}
    for index, (name, src, weight) in enumerate(sources):
        _probe(config, src, tokenizer)
        docs = _documents(config, src, index, process_index, process_count, num_epochs)
        rows[name] = (_rows(config, docs, src, tokenizer), weight)
    if len(rows) == 1:
        ds = next(iter(rows.values()))[0]
    else:
        ds = grain.IterDataset.mix({k: v[0] for k, v in rows.items()}, {k: v[1] for k, v in rows.items()})
    ds = ds.batch(batch // process_count, drop_remainder=True)
    workers = config.data.num_workers if num_workers is None else num_workers
    if workers:
        _absl_flags_parsed()
        # Small batches travel faster pickled than through a shared-memory block each.
        ds = grain.experimental.WithOptionsIterDataset(
            ds, grain.experimental.DatasetOptions(min_shm_size=MIN_SHM_BYTES))
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=PREFETCH_BATCHES),
                            worker_init_fn=worker_init())
        ds = ds.map(_own_memory)
    meta = {"split": split, "num_workers": workers, "process_index": process_index,
            "process_count": process_count, "fingerprint": fingerprint(config),
            "settings": stream_settings(config)}
    return stages.CheckedStateIterDataset(ds, meta)


def _own_memory(batch: dict[str, Any]) -> dict[str, Any]:
    """Copy out of grain's shared-memory blocks, so the consumer may keep a batch for as long as it
    likes and the blocks are released at once."""
    return {key: np.array(value) for key, value in batch.items()}


def _absl_flags_parsed() -> None:
    """Grain's worker start reads absl flags: outside an absl app, use their defaults."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _process(index: int | None, count: int | None) -> tuple[int, int]:
    if index is None or count is None:
        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ConfigError(f"process_index={index} is outside [0, process_count={count})")
    return index, count


def _open_sources(config: Config, split: str) -> list[tuple[str, RecordParser, float]]:
    opened, missing = [], []
    for i, spec in enumerate(config.data.sources):
        try:
            src = open_source(i, spec, split, config.data.cache_dir, config.data.data_root)
        except MissingFiles as err:
            missing.append((source_name(i, spec), err))
            continue
        if src is None:
            continue
        if isinstance(src, DocumentSource) and len(src) == 0:
            raise DataError(f"data.sources[{i}] ({source_name(i, spec)}) has no documents in its "
                            f"{split!r} split; point it at data or remove it")
        opened.append((src.name, src, float(spec.get("weight", 1.0))))
    if missing:
        raise _missing_files(config, missing)
    if not opened:
        raise DataError(f"no source in data.sources has a {split!r} split; give at least one source "
                        f"a '{split}' path")
    names = [name for name, _, _ in opened]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.sources names {names} repeat; give each source a distinct 'name'")
    return opened


def _missing_files(config: Config, missing: list[tuple[str, MissingFiles]]) -> Exception:
    """One error for every source whose files are not there, saying what was expected where."""
    if len(missing) == 1:
        return missing[0][1]
    root = config.data.data_root
    where = (f"under data.data_root={root!r}" if root else
             f"(data.data_root is not set: relative paths are taken from {os.getcwd()!r})")
    lines = [f"{len(missing)} of the {len(config.data.sources)} sources in data.sources have no files "
             f"{where}:"]
    lines += [f"  {name} ({err.where}): {err.describe()}" for name, err in missing]
    lines.append("put the files there, or point data.data_root at the directory that holds them "
                 "(--config.data.data_root=PATH)")
    return DataError("\n".join(lines))


def _seed(config: Config, index: int) -> int:
    return int(np.random.SeedSequence([config.data.shuffle_seed, index]).generate_state(1)[0])


def _documents(config: Config, src: RecordParser, index: int, process_index: int,
               process_count: int, num_epochs: int | None) -> grain.MapDataset | grain.IterDataset:
    """Shuffled, this process's slice, repeated: ``(location, raw)`` records (random access, or a
    stream for sources read front to back)."""
    if isinstance(src, StreamSource):
        return stream_documents(src, seed=_seed(config, index), process_index=process_index,
                                process_count=process_count, num_epochs=num_epochs)
    if len(src) < process_count:
        raise DataError(f"source {src.name!r} has {len(src)} documents, fewer than the "
                        f"{process_count} data shards that must share it")
    docs = grain.MapDataset.source(src).shuffle(seed=_seed(config, index))
    return docs[process_index::process_count].repeat(num_epochs)


def _pieces(config: Config, docs: grain.MapDataset | grain.IterDataset, src: RecordParser,
            tokenizer: Tokenizer) -> grain.IterDataset:
    data = config.data
    if isinstance(docs, grain.MapDataset):
        docs = docs.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                                      prefetch_buffer_size=READ_BUFFER))
    return stages.PiecesIterDataset(docs, source=src, tokenizer=tokenizer,
                             words_per_piece=data.words_per_piece, min_chars=data.min_chars,
                             min_tokens=data.min_tokens,
                             max_tokens=data.seq_len + 1 if data.mode == "pad" else None,
                             batch_chars=TOKENIZER_BATCH_CHARS, nfc=data.nfc_normalize)


def _rows(config: Config, docs: grain.MapDataset | grain.IterDataset, src: RecordParser,
          tokenizer: Tokenizer) -> grain.IterDataset:
    data = config.data
    pieces = _pieces(config, docs, src, tokenizer)
    if data.mode == "pad":
        return pieces.map(functools.partial(stages.pad_row, seq_len=data.seq_len, pad_id=data.pad_id))
    return stages.PackIterDataset(pieces, seq_len=data.seq_len, pad_id=data.pad_id)


def _probe(config: Config, src: RecordParser, tokenizer: Tokenizer) -> None:
    """Fail now, with counters, when none of the first documents yields a usable piece."""
    if isinstance(src, StreamSource):
        docs = first_documents(src, PROBE_DOCUMENTS)
    else:
        docs = grain.MapDataset.source(src)[:PROBE_DOCUMENTS]
    it = iter(_pieces(config, docs, src, tokenizer))
    try:
        next(it)
    except StopIteration:
        counters = _counters_of(it.get_state())[src.name]
        checked = counters["documents"]
        if not checked:
            raise DataError(f"source {src.name!r} has no documents; point it at data or remove it"
                            ) from None
        raise DataError(
            f"source {src.name!r}: none of its first {checked} documents gives a piece that passes the "
            f"filters (counters: {_nonzero(counters)}); check the source's field / format, or lower "
            f"data.min_chars={config.data.min_chars} / data.min_tokens={config.data.min_tokens}"
        ) from None
    finally:
        it.close()


def _nonzero(counters: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if v}


# Settings that never change which rows the stream yields (the worker count does, and is checked
# on its own: a state of another worker count cannot be continued at all).
NOT_STREAM_SETTINGS = ("num_workers", "tokenizer_threads", "cache_dir")


def stream_settings(config: Config) -> dict[str, Any]:
    """The settings the stream's rows depend on, by config name (stored with the iterator state,
    so a resumed run can say which of them changed)."""
    data = {f"data.{k}": v for k, v in dataclasses.asdict(config.data).items()
            if k not in NOT_STREAM_SETTINGS}
    data["data.sources"] = [dict(s) for s in config.data.sources]
    settings = {"train.batch_size": config.train.batch_size, **data}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))  # as it reads back


def fingerprint(config: Config) -> str:
    """Hash of everything the stream's content depends on (stored with the iterator state)."""
    data = dataclasses.asdict(config.data)
    data["sources"] = [dict(s) for s in config.data.sources]
    data["batch_size"] = config.train.batch_size
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _walk(state: Any) -> Iterator[dict[str, Any]]:
    if isinstance(state, Mapping):
        if stages.STATE_KEY in state:
            yield state[stages.STATE_KEY]
        for value in state.values():
            yield from _walk(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from _walk(value)


def _counters_of(state: Any) -> dict[str, dict[str, int]]:
    per_source: dict[str, dict[str, int]] = {}
    for found in _walk(state):
        totals = per_source.setdefault(found["source"], dict.fromkeys(stages.COUNTERS, 0))
        for key in stages.COUNTERS:
            totals[key] += int(found.get(key, 0))
    return per_source


def stats(iterator: grain.DatasetIterator) -> dict[str, dict[str, int]]:
    """Counters of what was read, filtered (by rule) and emitted, per source and in ``"total"``.

    Summed over worker processes, as of the last batch this process consumed (they may run ahead of
    it by one tokenizer batch). Names: see ``elm_jax.data.stages.COUNTERS``.
    """
    per_source = _counters_of(iterator.get_state())
    total = {key: sum(c[key] for c in per_source.values()) for key in stages.COUNTERS}
    return {**per_source, "total": total}


def document_texts(config: Config, split: str, *, limit: int | None = None) -> Iterator[str]:
    """The raw texts of every configured source (up to ``limit`` documents each), for tokenizer
    training: no shuffling, pieces or filters; bad records are skipped. NFC-normalised when
    ``data.nfc_normalize`` is on, as the pipeline will see them."""
    def decode(raw: bytes) -> str:
        return raw.decode("utf-8", errors="replace")

    for _, src, _ in _open_sources(config, split):
        for _, raw in itertools.islice(all_records(src), limit):
            try:
                text = src.parse(raw, decode)
            except BadRecord:
                continue
            yield unicodedata.normalize("NFC", text) if config.data.nfc_normalize else text


def all_records(src: RecordParser) -> Iterator[tuple[Any, Any]]:
    """``(location, raw)`` of every record of a source, in its own order."""
    if isinstance(src, StreamSource):
        yield from src.all_documents()
    else:
        for i in range(len(src)):
            yield src[i]
