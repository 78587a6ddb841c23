"""The paper presets carry the OpenELM pretraining mixture: the corpora of the paper's table with
weights proportional to their tokens, under a data root; a missing root is one clear error."""

import gzip
import importlib.util

import pytest
from formats import json_lines, write_parquet
from test_data_cli import ROOT, elm_data

from elm_jax.config import from_config_dict
from elm_jax.data import pipeline
from elm_jax.errors import ConfigError
from elm_jax.pretraining_mixture import CORPORA, openelm_sources, total_tokens

# The paper's pretraining-data table (arXiv 2404.14619), billions of tokens.
PAPER = {"refinedweb": 665, "pile": 207, "redpajama_github": 59, "redpajama_books": 26,
         "redpajama_arxiv": 28, "redpajama_wikipedia": 24, "redpajama_stackexchange": 20,
         "redpajama_c4": 175, "dolma_stack": 411, "dolma_reddit": 89, "dolma_pes2o": 70,
         "dolma_gutenberg": 6, "dolma_wiki": 4.3}
SIZES = ("270m", "450m", "1_1b", "3b")


def experiment(size, arg=None):
    spec = importlib.util.spec_from_file_location(size, ROOT / "experiments" / f"openelm_{size}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_weights_are_proportional_to_the_papers_token_counts():
    sources = openelm_sources()
    assert [s["name"] for s in sources] == list(PAPER)
    total = sum(s["weight"] for s in sources)
    for src in sources:
        assert src["weight"] / total == pytest.approx(PAPER[src["name"]] / sum(PAPER.values()))
    assert total_tokens() == pytest.approx(1784.3e9) and abs(total_tokens() - 1.8e12) < 0.05e12
    kinds = {name: kind for name, (kind, *_rest) in CORPORA.items()}
    assert kinds["refinedweb"] == kinds["pile"] == "parquet"
    assert {kinds[n] for n in PAPER if n.startswith(("redpajama", "dolma"))} == {"jsonl"}
    assert CORPORA["refinedweb"][3] == "content"  # RefinedWeb's text column


@pytest.mark.parametrize("size", SIZES)
def test_every_preset_takes_a_data_root_and_normalises(size):
    config = from_config_dict(experiment(size, "data_root=/data/corpora"))
    assert config.data.data_root == "/data/corpora" and config.data.nfc_normalize
    assert [dict(s) for s in config.data.sources] == openelm_sources()
    assert from_config_dict(experiment(size)).data.data_root == ""
    with pytest.raises(ConfigError, match="experiment argument 'root=/x' is invalid"):
        experiment(size, "root=/x")


def test_the_mixture_reads_every_corpus_from_a_small_data_root(make_config, documents, tmp_path):
    """One small file per corpus, named and formatted as the preset expects (file id 0 only)."""
    sources = []
    for i, src in enumerate(openelm_sources()):
        docs = [f"{src['name']} {d}" for d in documents(6, seed=i)]
        path = tmp_path / src["train"].format(file_id=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        if src["kind"] == "parquet":
            write_parquet(path, docs, field=src["field"])
        elif path.name.endswith(".gz"):
            path.write_bytes(gzip.compress(json_lines(docs)))
        else:
            path.write_bytes(json_lines(docs))
        sources.append({**src, "file_ids": [0, 1]})
    config = make_config(sources, data_root=str(tmp_path), nfc_normalize=True)
    texts = list(pipeline.document_texts(config, "train"))
    assert len(texts) == 6 * len(PAPER)
    assert {t.split()[0] for t in texts} == set(PAPER)
    batch = next(pipeline.make_iterator(config, "train", process_index=0, process_count=1))
    assert batch["inputs"].shape == (4, 32)


def test_inspect_with_a_missing_root_names_every_expected_file(tmp_path):
    """(The ``experiment.py:data_root=PATH`` form sets the same field, see above.)"""
    root = tmp_path / "nowhere"
    out = elm_data("inspect", f"--config={ROOT / 'experiments' / 'openelm_270m.py'}",
                   f"--config.data.data_root={root}")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    error = out.stderr[out.stderr.index("error: "):]
    assert error.startswith(f"error: 13 of the 13 sources in data.sources have no files under "
                            f"data.data_root='{root}':")
    assert (f"refinedweb (data.sources[0].train): none of the 5534 files "
            f"'{root}/refinedweb/refinedweb-{{file_id:05d}}-of-05534.parquet' exists") in error
    assert f"'{root}/redpajama/book/book-00000-00001.jsonl' does not exist" in error
    assert "dolma_wiki (data.sources[12].train): none of the 2 files" in error
    assert "--config.data.data_root=PATH" in error
