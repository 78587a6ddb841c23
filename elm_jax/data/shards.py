"""``elm-data convert``: any configured source to ArrayRecord shards of UTF-8 text, with a manifest.

Layout of ``OUT/<source name>/``:

    <split>-00000-of-00008.array_record ...  one document's text per record (UTF-8)
    <split>.plan.json       what is converted: the source entry, its input files with size and
                            mtime, the shard count. A rerun with another plan is refused.
    <split>.manifest.json   written last: per shard its records, bytes and sha256
    .<split>.progress/      one record per finished shard (removed once the manifest exists)

Documents go to shards deterministically: the source is cut into input units (a Parquet row group
or a compressed file; ``BLOCK`` documents of a random-access source) and shard ``k`` of ``n`` takes
units ``[k*U/n, (k+1)*U/n)`` in order, whatever the number of worker processes. Each shard is
written by one worker to a temporary name and renamed when complete, then its progress record is
written; a rerun skips shards that have both, so a killed conversion loses only the shards in
flight and a half-written shard is never taken for a finished one. ``verify`` re-reads every shard
against the manifest (size, checksum, record count).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from elm_jax.data import files
from elm_jax.data.records import BadRecord
from elm_jax.data.sources import open_source
from elm_jax.data.streams import StreamSource, Unit
from elm_jax.errors import DataError

BLOCK = 4096  # documents per input unit of a random-access source
DOCS_PER_SHARD = 100_000  # default shard size of a random-access source
WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access, as TFDS writes
FORMAT = "elm_jax.shards/1"


@dataclasses.dataclass(frozen=True)
class Job:
    """One source's split to convert (picklable: workers reopen the source from it)."""

    index: int
    source: dict[str, Any]
    split: str
    cache_dir: str | None
    data_root: str
    out_dir: str

    def shard_name(self, shard: int, num_shards: int) -> str:
        return f"{self.split}-{shard:05d}-of-{num_shards:05d}.array_record"

    @property
    def plan_path(self) -> Path:
        return Path(self.out_dir) / f"{self.split}.plan.json"

    @property
    def manifest_path(self) -> Path:
        return Path(self.out_dir) / f"{self.split}.manifest.json"

    @property
    def progress_dir(self) -> Path:
        return Path(self.out_dir) / f".{self.split}.progress"


_OPENED: dict[tuple, Any] = {}  # per process: sources already opened (a worker writes many shards)


def _open(job: Job):
    key = (job.index, json.dumps(job.source, sort_keys=True), job.split, job.cache_dir, job.data_root)
    if key not in _OPENED:
        src = open_source(job.index, job.source, job.split, job.cache_dir, job.data_root)
        if src is None:
            raise DataError(f"data.sources[{job.index}] has no {job.split!r} split to convert")
        _OPENED[key] = src
    return _OPENED[key]


def input_units(src) -> list[tuple]:
    """The source's input units in order: ``("part", file, row group)`` or ``("docs", start, stop)``."""
    if isinstance(src, StreamSource):
        return [("part", u.file, u.part) for u in src.units()]
    return [("docs", a, min(a + BLOCK, len(src))) for a in range(0, len(src), BLOCK)]


def _unit_records(src, unit: tuple) -> Iterator[Any]:
    if unit[0] == "part":
        for _, raw in src.records(Unit(unit[1], unit[2])):
            yield raw
    else:
        for i in range(unit[1], unit[2]):
            yield src[i][1]


def default_shards(src) -> int:
    """One shard per input file of a streamed source, else one per ``DOCS_PER_SHARD`` documents."""
    if isinstance(src, StreamSource):
        return len(src.files)
    return max(1, math.ceil(len(src) / DOCS_PER_SHARD))


def assignment(num_units: int, num_shards: int) -> list[range]:
    """Shard ``k`` takes input units ``[k*U/n, (k+1)*U/n)``."""
    return [range(k * num_units // num_shards, (k + 1) * num_units // num_shards)
            for k in range(num_shards)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; manifests are for everyone who reads the shards
    os.replace(tmp, path)


def write_shard(job: Job, shard: int, num_shards: int, units: list[tuple]) -> dict[str, Any]:
    """Write one shard (temporary name, then rename) and its progress record; returns its entry."""
    from array_record.python.array_record_module import ArrayRecordWriter

    src = _open(job)
    final = Path(job.out_dir) / job.shard_name(shard, num_shards)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    records = skipped = 0
    decode = lambda raw: raw.decode("utf-8", errors="replace")
    try:
        for unit in units:
            for raw in _unit_records(src, unit):
                try:
                    text = src.parse(raw, decode)
                except BadRecord:
                    skipped += 1
                    continue
                writer.write(text.encode("utf-8", errors="replace"))  # lone surrogates -> "?"
                records += 1
    finally:
        writer.close()
    entry = {"file": final.name, "records": records, "bytes": tmp.stat().st_size,
             "sha256": _sha256(tmp), "skipped": skipped}
    os.replace(tmp, final)
    _write_json(job.progress_dir / f"{final.name}.json", entry)
    return entry


def _finished(job: Job, name: str) -> dict[str, Any] | None:
    """The progress record of a shard that is complete on disk, else None."""
    record, shard = job.progress_dir / f"{name}.json", Path(job.out_dir) / name
    if not (record.is_file() and shard.is_file()):
        return None
    entry = json.loads(record.read_text())
    return entry if entry.get("bytes") == shard.stat().st_size else None


def _plan(job: Job, src, num_shards: int, num_units: int) -> dict[str, Any]:
    return {"format": FORMAT, "source": job.source, "split": job.split, "data_root": job.data_root,
            "inputs": [[path, *files.stat(path)] for path in src.files],
            "num_shards": num_shards, "units": num_units}


def _check_plan(job: Job, plan: dict[str, Any]) -> None:
    if job.plan_path.is_file():
        old = json.loads(job.plan_path.read_text())
        if old != json.loads(json.dumps(plan)):
            changed = sorted(k for k in plan if old.get(k) != json.loads(json.dumps(plan[k])))
            raise DataError(f"{job.out_dir} holds a conversion with another plan (differs in "
                            f"{', '.join(changed)}): use another --output, or delete that directory "
                            "to convert afresh")
    else:
        _write_json(job.plan_path, plan)


def convert(job: Job, *, num_shards: int = 0, workers: int = 0,
            progress: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Convert one source's split (resuming a killed run); returns the manifest.

    ``workers`` processes write shards in parallel (0: this process). ``progress(done, total,
    records)`` is called as shards finish.
    """
    src = _open(job)
    units = input_units(src)
    if not units:
        raise DataError(f"data.sources[{job.index}] has no documents in its {job.split!r} split")
    num_shards = min(num_shards or default_shards(src), len(units))
    plan = _plan(job, src, num_shards, len(units))
    Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    _check_plan(job, plan)
    if job.manifest_path.is_file():
        return json.loads(job.manifest_path.read_text())
    for stale in Path(job.out_dir).glob(f".{job.split}-*.tmp-*"):
        stale.unlink()  # a shard some killed run left half-written
    groups = assignment(len(units), num_shards)
    names = [job.shard_name(k, num_shards) for k in range(num_shards)]
    entries: dict[int, dict[str, Any]] = {}
    for k, name in enumerate(names):
        if (done := _finished(job, name)) is not None:
            entries[k] = done
    todo = [k for k in range(num_shards) if k not in entries]
    report = lambda: progress and progress(len(entries), num_shards,
                                           sum(e["records"] for e in entries.values()))
    report()
    for k, entry in _run(job, todo, num_shards, [[units[u] for u in groups[k]] for k in range(num_shards)],
                         workers):
        entries[k] = entry
        report()
    shards = [entries[k] for k in range(num_shards)]
    manifest = {"format": FORMAT, "source": job.source, "split": job.split, "num_shards": num_shards,
                "records": sum(e["records"] for e in shards), "bytes": sum(e["bytes"] for e in shards),
                "skipped": sum(e["skipped"] for e in shards), "shards": shards}
    _write_json(job.manifest_path, manifest)
    shutil.rmtree(job.progress_dir, ignore_errors=True)
    return manifest


def _run(job: Job, todo: list[int], num_shards: int, shard_units: list[list[tuple]], workers: int
         ) -> Iterator[tuple[int, dict[str, Any]]]:
    if not workers:
        for k in todo:
            yield k, write_shard(job, k, num_shards, shard_units[k])
        return
    context = multiprocessing.get_context("spawn")  # no forked copies of grain / jax threads
    with concurrent.futures.ProcessPoolExecutor(min(workers, max(1, len(todo))), mp_context=context) as pool:
        futures = {pool.submit(write_shard, job, k, num_shards, shard_units[k]): k for k in todo}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()


def verify(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Check every shard of every manifest under ``out`` (size, sha256, record count); returns the
    manifests, or raises one ``DataError`` listing every problem."""
    from array_record.python.array_record_module import ArrayRecordReader

    root = Path(out)
    manifests = sorted(root.glob("*.manifest.json")) + sorted(root.glob("*/*.manifest.json"))
    if not manifests:
        raise DataError(f"{root} holds no *.manifest.json: nothing converted there (or the "
                        "conversion did not finish; run `elm-data convert` again to complete it)")
    problems, loaded = [], []
    for path in manifests:
        manifest = json.loads(path.read_text())
        loaded.append(manifest)
        for entry in manifest["shards"]:
            shard = path.parent / entry["file"]
            problem = _shard_problem(shard, entry, ArrayRecordReader)
            if problem:
                problems.append(f"{shard}: {problem}")
    if problems:
        raise DataError(f"{len(problems)} shard(s) do not match their manifest:\n  " + "\n  ".join(problems)
                        + "\ndelete the bad shards and their manifest, then run `elm-data convert` again")
    return loaded


def _shard_problem(shard: Path, entry: Mapping[str, Any], reader_class) -> str | None:
    if not shard.is_file():
        return "missing"
    size = shard.stat().st_size
    if size != entry["bytes"]:
        return f"{size} bytes, the manifest says {entry['bytes']} (truncated or overwritten)"
    if _sha256(shard) != entry["sha256"]:
        return "sha256 differs from the manifest (corrupted)"
    try:
        reader = reader_class(str(shard))
        count = reader.num_records()
        reader.close()
    except Exception as err:  # array_record raises bare RuntimeErrors
        return f"not a readable ArrayRecord file ({err})"
    if count != entry["records"]:
        return f"{count} records, the manifest says {entry['records']}"
    return None
