"""Every source kind reads its documents; config keys are checked before any file is touched."""

import pytest

from elm_jax.config import default_config, from_config_dict
from elm_jax.data import pipeline, prepare
from elm_jax.errors import ConfigError


def texts_of(config, split="train"):
    return sorted(pipeline.document_texts(config, split))


def test_jsonl_text_lines_and_files(make_config, jsonl_source, documents, tmp_path):
    docs = documents(6, words=(3, 40))
    flat = [d.replace("\n", " ") for d in docs]
    assert texts_of(make_config([jsonl_source(docs)])) == sorted(docs)
    (tmp_path / "lines.txt").write_text("\n\n".join(flat) + "\n")  # blank lines are not documents
    assert texts_of(make_config([{"kind": "text", "train": str(tmp_path / "lines.txt")}])) == sorted(flat)
    for i, d in enumerate(docs):
        (tmp_path / f"doc{i}.txt").write_text(d)
    files = {"kind": "text", "unit": "file", "train": str(tmp_path / "doc*.txt")}
    assert texts_of(make_config([files])) == sorted(docs)


def test_array_record_plain_and_json(make_config, documents, tmp_path):
    import json

    from array_record.python.array_record_module import ArrayRecordWriter

    docs = documents(5, words=(3, 40))
    for name, encode in (("plain", str.encode), ("json", lambda d: json.dumps({"body": d}).encode())):
        writer = ArrayRecordWriter(str(tmp_path / f"{name}.array_record"), "group_size:1")
        for d in docs:
            writer.write(encode(d))
        writer.close()
    plain = {"kind": "array_record", "train": str(tmp_path / "plain.array_record")}
    assert texts_of(make_config([plain])) == sorted(docs)
    as_json = {"kind": "array_record", "train": [str(tmp_path / "json.array_record")], "field": "body"}
    assert texts_of(make_config([as_json])) == sorted(docs)


def test_tfds_data_source_without_tensorflow(make_config, documents, tmp_path):
    scenes = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")  # 8+: validation gets one
    works = {"alpha": "\n\n".join(f"Scene {r}. x\n{d}" for r, d in zip(scenes, documents(10, seed=1)))}
    prepare._builder(tmp_path / "tfds", works).download_and_prepare()
    src = {"kind": "tfds", "dataset": prepare.BUILDER_NAME, "data_dir": str(tmp_path / "tfds")}
    expected = sorted(d[3] for d in prepare.documents(works) if d[0] == "train")
    assert texts_of(make_config([src])) == expected
    missing = {"kind": "tfds", "dataset": "no_such_dataset", "data_dir": str(tmp_path / "tfds")}
    with pytest.raises(ConfigError, match="cannot open TFDS dataset 'no_such_dataset'"):
        texts_of(make_config([missing]))


@pytest.mark.parametrize("source, message", [
    ({"kind": "jsonl", "train": "a.jsonl", "feild": "text"}, r"unknown key\(s\) \['feild'\]"),
    ({"kind": "jsonl"}, "needs 'train'"),
    ({"kind": "tfds", "train": "train"}, "needs 'dataset'"),
    ({"kind": "text", "train": "a.txt", "unit": "page"}, "unit = 'page' is invalid"),
    ({"kind": "jsonl", "train": "a.jsonl", "field": 3}, "field = 3 is invalid"),
])
def test_source_keys_are_validated_with_the_config(source, message):
    cd = default_config()
    cd.data.sources = [{"kind": "shakespeare"}, source]
    with pytest.raises(ConfigError, match=r"data\.sources\[1\].*" + message):
        from_config_dict(cd)
