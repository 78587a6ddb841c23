"""``elm-data convert``: ArrayRecord shards hold the source's documents; a conversion killed
mid-shard and run again gives byte-identical shards; ``--verify`` catches a damaged shard."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from formats import write_source
from test_data_cli import elm_data, experiment

from elm_jax.data import shards
from elm_jax.errors import DataError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def job_for(src, out, cache, split="train"):
    return shards.Job(index=0, source=src, split=split, cache_dir=str(cache), data_root="",
                      out_dir=str(out))


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.array_record"))}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(shards, "BLOCK", 16)  # several input units in a small plain file


@pytest.fixture
def docs(documents):
    return [f"document {i}: {d}" for i, d in enumerate(documents(90, seed=11, words=(20, 200)))]


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "jsonl_zst"])
def test_shards_hold_the_documents_and_read_back_as_a_source(kind, docs, make_config, tmp_path):
    from elm_jax.data import pipeline

    src = write_source(tmp_path / "in", kind, docs)
    job = job_for(src, tmp_path / "out", tmp_path / "cache")
    manifest = shards.convert(job, num_shards=2)
    assert manifest["records"] == len(docs) and manifest["num_shards"] == 2
    assert [s["file"] for s in manifest["shards"]] == ["train-00000-of-00002.array_record",
                                                       "train-00001-of-00002.array_record"]
    converted = {"kind": "array_record", "train": str(tmp_path / "out" / "train-*.array_record")}
    assert list(pipeline.document_texts(make_config([converted]), "train")) == \
        list(pipeline.document_texts(make_config([src]), "train"))  # same documents, same order
    assert not (tmp_path / "out" / ".train.progress").exists()
    assert shards.verify(tmp_path / "out")[0]["records"] == len(docs)


def test_assignment_is_contiguous_and_independent_of_workers():
    assert [list(r) for r in shards.assignment(7, 3)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert sum(len(r) for r in shards.assignment(5534, 64)) == 5534


def test_a_killed_conversion_resumes_to_byte_identical_shards(docs, tmp_path):
    src = write_source(tmp_path / "in", "parquet", docs * 3)  # 3 files, 270 documents
    whole = job_for(src, tmp_path / "whole", tmp_path / "cache")
    reference = shards.convert(whole, num_shards=5)
    per_shard = [s["records"] for s in reference["shards"]]

    killed = job_for(src, tmp_path / "killed", tmp_path / "cache")
    dies_at = per_shard[0] + per_shard[1] + per_shard[2] // 2  # in the middle of the third shard
    run = subprocess.run([sys.executable, str(HERE / "convert_until_killed.py"),
                          json.dumps(dataclasses.asdict(killed)), "5", str(dies_at)],
                         capture_output=True, text=True, cwd=HERE,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert run.returncode == 9, run.stderr
    out = tmp_path / "killed"
    assert sorted(shard_bytes(out)) == ["train-00000-of-00005.array_record",
                                        "train-00001-of-00005.array_record"]
    assert list(out.glob(".train-00002-of-00005.array_record.tmp-*"))  # the half-written shard
    assert not (out / "train.manifest.json").exists()

    resumed = shards.convert(killed, num_shards=5, workers=2)
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")
    assert resumed["shards"] == reference["shards"]
    assert not list(out.glob(".*.tmp-*"))
    with pytest.raises(DataError, match="holds a conversion with another plan .*num_shards"):
        shards.convert(killed, num_shards=4)


def test_verify_names_a_truncated_or_missing_shard(docs, tmp_path):
    src = write_source(tmp_path / "in", "jsonl", docs)
    out = tmp_path / "out"
    shards.convert(job_for(src, out, tmp_path / "cache"), num_shards=3)
    shards.verify(out)
    victim = out / "train-00001-of-00003.array_record"
    victim.write_bytes(victim.read_bytes()[:-1000])
    (out / "train-00002-of-00003.array_record").unlink()
    with pytest.raises(DataError) as err:
        shards.verify(out)
    message = str(err.value)
    assert message.startswith("2 shard(s) do not match their manifest")
    assert "train-00001-of-00003.array_record: " in message and "(truncated or overwritten)" in message
    assert "train-00002-of-00003.array_record: missing" in message
    with pytest.raises(DataError, match="holds no .*manifest"):
        shards.verify(tmp_path / "in")


def test_the_command_converts_in_parallel_and_verifies(docs, tmp_path):
    sources = [write_source(tmp_path / "a", "jsonl_gz", docs, name="gz"),
               write_source(tmp_path / "b", "parquet", docs, name="pq")]
    config = f"--config={experiment(tmp_path, sources)}"
    out = tmp_path / "shards"
    run = elm_data("convert", config, f"--output={out}", "--workers=2",
                   env_extra={"ELM_JAX_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    assert f"gz: {len(docs)} documents in 1 shards" in run.stdout
    assert f"pq: {len(docs)} documents in 3 shards" in run.stdout  # one per input file
    assert run.stderr.strip() == ""  # quiet: no progress bar when stderr is not a terminal
    assert [m["records"] for m in shards.verify(out)] == [len(docs), len(docs)]
    victim = out / "pq" / "train-00000-of-00003.array_record"
    victim.write_bytes(victim.read_bytes()[:100])
    check = elm_data("convert", "--verify", f"--output={out}")
    assert check.returncode == 2 and "train-00000-of-00003.array_record: 100 bytes" in check.stderr
