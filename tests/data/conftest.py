"""Small corpora and a small SentencePiece model, built in temporary directories (no network)."""

import json

import numpy as np
import pytest

from elm_jax.config import default_config, from_config_dict

_WORD_TEXT = (
    "the king queen lord lady night day love death sword crown heart blood fair sweet noble"
    " gentle brave good ill speak hear see come go stay fly die live give take keep thou thee"
    " thy my mine our your his her their we they he she it is was be art hath doth shall will"
    " would may might must can could not no yes and or but if when where why how what who whom"
    " whose this that these those here there now then ever never o alas farewell welcome friend"
    " foe honour truth false true light dark fire water"
)
WORDS = tuple(_WORD_TEXT.split())


def make_documents(n: int, seed: int = 0, words: tuple[int, int] = (5, 120), tag: str = "") -> list[str]:
    """``n`` pseudo-English documents (verse-like lines, punctuation, line breaks)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        count = int(rng.integers(*words))
        chosen = [WORDS[i] for i in rng.integers(0, len(WORDS), count)]
        lines, line = [], []
        for w in chosen:
            line.append(w)
            if len(line) >= int(rng.integers(4, 10)):
                lines.append(" ".join(line).capitalize() + rng.choice([",", ";", ".", "!", "?"]))
                line = []
        if line:
            lines.append(" ".join(line).capitalize() + ".")
        docs.append((tag + " " if tag else "") + "\n".join(lines))
    return docs


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
    """A 512-piece BPE model with LLaMA conventions, trained once per session."""
    from elm_jax.data.tokenizer import train_sentencepiece

    path = tmp_path_factory.mktemp("spm") / "tok.model"
    return train_sentencepiece(make_documents(400, seed=123), path, vocab_size=512)


@pytest.fixture
def make_config(spm_model, tmp_path):
    """``make_config(sources, **data_overrides)`` -> a validated Config over a tiny model."""

    def build(sources, batch_size=4, **data):
        cd = default_config()
        cd.model.vocab_size = 640
        cd.model.num_layers = 2
        cd.model.model_dim = 64
        cd.model.head_dim = 16
        cd.data.sources = sources
        cd.data.tokenizer = str(spm_model)
        cd.data.pad_id = 512
        cd.data.cache_dir = str(tmp_path / "cache")
        cd.train.batch_size = batch_size
        for key, value in {"seq_len": 32, "mode": "pack", "words_per_piece": 64, "min_chars": 10,
                           "min_tokens": 4, **data}.items():
            cd.data[key] = value
        return from_config_dict(cd)

    return build


@pytest.fixture
def jsonl_source(tmp_path):
    """``jsonl_source(docs, name)`` -> a source dict over a JSONL file holding ``docs``."""

    def build(docs, name="corpus", validation=None, weight=1.0):
        src = {"kind": "jsonl", "name": name, "weight": weight,
               "train": str(write_jsonl(tmp_path / f"{name}.jsonl", docs))}
        if validation is not None:
            src["validation"] = str(write_jsonl(tmp_path / f"{name}_val.jsonl", validation))
        return src

    return build


@pytest.fixture
def documents():
    """The ``make_documents`` helper, for tests that need their own corpora."""
    return make_documents
