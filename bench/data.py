"""Tokens/s of the whole data pipeline against raw SentencePiece encoding of the same text.

Both sides read the same documents (the configured sources' train split, Shakespeare by default;
``--formats`` also writes them as Parquet and as zstd / gzip JSON lines, several files each, and
measures the pipeline reading those, which streams them instead of reading at random):
the raw side encodes them with ``SentencePieceProcessor.encode(texts, num_threads=N)``; the pipeline
side (pack mode, ``N`` grain worker processes, one tokenizer thread each) cuts, filters, tokenizes,
packs and batches them, and we count the tokens of the rows it delivers. The two alternate in timed
rounds, because the machine may be shared and its load may change; besides wall-clock tokens/s we
report tokens per CPU second (this process, its threads and its worker processes), which load on
other processes does not distort. Filter thresholds are 0 so both sides deliver the same tokens
(the filters still run).

    PYTHONPATH=. python bench/data.py [--workers 2] [--rounds 4] [--seconds 3] [--config ...]
        [--formats source,parquet,jsonl_zst,jsonl_gz]
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import os
import platform
import tempfile
import time

import numpy as np
from absl import flags

from elm_jax.cli import common

CONFIG = common.define_config_flag(common.default_experiment("tiny"))
WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes = raw encoding threads")
SECONDS = flags.DEFINE_float("seconds", 3.0, "length of one timed round")
ROUNDS = flags.DEFINE_integer("rounds", 4, "alternating raw / pipeline rounds")
SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "row length (the paper's)")
WORDS = flags.DEFINE_integer("words_per_piece", 2048, "piece length in words (the paper's)")
ROWS = flags.DEFINE_integer("rows", 8, "rows per batch")
FORMATS = flags.DEFINE_list("formats", ["source", "parquet", "jsonl_zst"],
                            "what the pipeline reads: the configured source itself, or its train "
                            "documents rewritten as parquet, jsonl_zst or jsonl_gz files")
FILES = flags.DEFINE_integer("files", 4, "files per rewritten format")
ROW_GROUP = flags.DEFINE_integer("row_group", 64, "Parquet rows per row group")


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and its children (grain workers) so far."""
    import psutil

    procs = [psutil.Process()]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class Meter:
    """Tokens, wall seconds and CPU seconds accumulated over timed rounds."""

    def __init__(self):
        self.tokens = self.wall = self.cpu = 0.0

    def time(self, step, seconds: float) -> float:
        """Run ``step() -> tokens`` for ``seconds``; returns this round's tokens per wall second."""
        tokens, cpu0, start = 0, cpu_seconds(), time.perf_counter()
        while time.perf_counter() - start < seconds:
            tokens += step()
        wall = time.perf_counter() - start
        self.tokens, self.wall, self.cpu = self.tokens + tokens, self.wall + wall, \
            self.cpu + cpu_seconds() - cpu0
        return tokens / wall

    def per_second(self) -> float:
        return self.tokens / self.wall

    def per_cpu_second(self) -> float:
        return self.tokens / self.cpu


def compare(config, tok, texts: list[str], threads: int, rounds: int, seconds: float):
    """Alternate raw-encode and pipeline rounds (the machine may be shared: load changes); the
    pipeline round first drains what the workers prefetched while raw encoding ran."""
    from elm_jax.data import pipeline

    raw, piped, ratios = Meter(), Meter(), []
    chunks = itertools.cycle([texts[i:i + 64] for i in range(0, len(texts), 64)])
    encode = lambda: sum(len(ids) for ids in tok.encode(next(chunks), num_threads=threads))
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    rows = lambda: int(np.count_nonzero(next(it)["segment_ids"]))
    try:
        for _ in range(rounds):
            raw_rate = raw.time(encode, seconds)
            for _ in range(2 * max(1, config.data.num_workers) + 1):
                next(it)
            ratios.append(piped.time(rows, seconds) / raw_rate)
    finally:
        it.close()
    return raw, piped, float(np.median(ratios))


def write_format(texts: list[str], fmt: str, directory: str) -> dict:
    """``texts`` as ``FILES`` files of format ``fmt``; returns the data.sources entry."""
    parts = [texts[i::FILES.value] for i in range(FILES.value)]
    for i, part in enumerate(parts):
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"content": part}), os.path.join(directory, f"part-{i}.parquet"),
                           row_group_size=ROW_GROUP.value)
            continue
        lines = "".join(json.dumps({"text": t}) + "\n" for t in part).encode()
        if fmt == "jsonl_zst":
            import zstandard

            data, suffix = zstandard.ZstdCompressor(level=3).compress(lines), "jsonl.zst"
        elif fmt == "jsonl_gz":
            data, suffix = gzip.compress(lines, compresslevel=6), "jsonl.gz"
        else:
            raise ValueError(f"unknown format {fmt!r}; choose source, parquet, jsonl_zst or jsonl_gz")
        with open(os.path.join(directory, f"part-{i}.{suffix}"), "wb") as f:
            f.write(data)
    kind, pattern = ("parquet", "part-*.parquet") if fmt == "parquet" else ("jsonl", "part-*.jsonl.*")
    return {"kind": kind, "name": fmt, "train": os.path.join(directory, pattern),
            **({"field": "content"} if fmt == "parquet" else {})}


def _main(argv: list[str]) -> None:
    del argv
    from elm_jax.data.pipeline import document_texts
    from elm_jax.data.prepare import ensure_prepared
    from elm_jax.data.tokenizer import load_tokenizer

    config = common.load_config(CONFIG)
    ensure_prepared(config)
    n = WORKERS.value
    data = dataclasses.replace(config.data, mode="pack", num_workers=n, tokenizer_threads=1,
                               seq_len=SEQ_LEN.value, words_per_piece=WORDS.value, min_chars=0,
                               min_tokens=0)
    train = dataclasses.replace(config.train, batch_size=ROWS.value)
    model = dataclasses.replace(config.model, rope_max_length=max(config.model.rope_max_length,
                                                                  SEQ_LEN.value))
    config = dataclasses.replace(config, data=data, train=train, model=model)
    tok = load_tokenizer(config)
    texts = list(document_texts(config, "train"))
    chars = sum(map(len, texts))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; "
          f"corpus: {len(texts)} documents, {chars / 1e6:.1f} M characters; tokenizer "
          f"{tok.vocab_size} pieces; rows {SEQ_LEN.value} tokens, pieces {WORDS.value} words")
    with tempfile.TemporaryDirectory(prefix="elm-bench-data-") as tmp:
        for fmt in FORMATS.value:
            source = data
            if fmt != "source":
                os.makedirs(os.path.join(tmp, fmt))
                src = write_format(texts, fmt, os.path.join(tmp, fmt))
                source = dataclasses.replace(data, sources=(src,))
            print(f"== pipeline reads: {fmt if fmt != 'source' else 'the configured source'}")
            run_format(config, source, tok, texts, n)


def run_format(config, data, tok, texts: list[str], n: int) -> None:
    for workers in (n, 0):
        threads = max(1, workers)
        cfg = dataclasses.replace(config, data=dataclasses.replace(data, num_workers=workers))
        raw, piped, ratio = compare(cfg, tok, texts, threads, ROUNDS.value, SECONDS.value)
        label = f"{workers} worker processes" if workers else "in-process (0 workers)"
        print(f"{label}, raw encode with {threads} thread(s), {ROUNDS.value} alternating rounds:")
        print(f"  raw SentencePiece  {raw.per_second() / 1e3:7.0f} k tokens/s wall, "
              f"{raw.per_cpu_second() / 1e3:5.0f} k tokens per CPU second")
        print(f"  pipeline (pack)    {piped.per_second() / 1e3:7.0f} k tokens/s wall, "
              f"{piped.per_cpu_second() / 1e3:5.0f} k tokens per CPU second")
        print(f"  pipeline / raw:    wall {piped.per_second() / raw.per_second():.2f}x "
              f"(median of rounds {ratio:.2f}x), per CPU second "
              f"{piped.per_cpu_second() / raw.per_cpu_second():.2f}x")


if __name__ == "__main__":
    common.run(_main)
