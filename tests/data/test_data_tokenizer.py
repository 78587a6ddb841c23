"""The SentencePiece wrapper: LLaMA conventions, round trip, pickling, clear errors."""

import pickle

import pytest

from elm_jax.data.tokenizer import Tokenizer, check_compatible, load_tokenizer
from elm_jax.errors import DataError


def test_llama_conventions_and_round_trip(spm_model):
    tok = Tokenizer(spm_model, pad_id=512)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.vocab_size, tok.pad_id) == (0, 1, 2, 512, 512)
    # Unseen characters, digits, indentation and line breaks all survive (byte fallback, identity
    # normalisation, whitespace kept).
    text = "  Thou art 1600 years\nof age — ¿qué? 名前\n\tend"
    ids = tok.encode(text)
    assert ids[0] == 1 and ids[-1] == 2 and 0 not in ids
    assert tok.decode(ids) == text
    assert tok.decode(ids + [512, 512]) == text  # pad ids are dropped
    assert tok.encode(text, bos=False, eos=False) == ids[1:-1]


def test_batch_encoding_matches_single_and_threads(spm_model):
    tok = Tokenizer(spm_model)
    texts = ["the king is dead", "long live the queen", "", "o"]
    single = [tok.encode(t) for t in texts]
    assert tok.encode(texts) == single
    assert tok.encode(texts, num_threads=2) == single


def test_pickles_as_the_model_not_the_path(spm_model, tmp_path):
    copy = tmp_path / "copy.model"
    copy.write_bytes(spm_model.read_bytes())
    tok = Tokenizer(copy, pad_id=600)
    copy.unlink()  # workers rebuild from the pickled bytes, not from the file
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("fair lady") == tok.encode("fair lady") and clone.pad_id == 600


def test_missing_and_corrupt_models_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(DataError, match="not a readable SentencePiece model"):
        Tokenizer(bad)


def test_config_compatibility_checks(make_config):
    config = make_config([{"kind": "text", "train": "unused"}])
    tok = load_tokenizer(config)
    assert tok.pad_id == 512
    import dataclasses

    small_model = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=500))
    with pytest.raises(DataError, match="more than model.vocab_size=500"):
        check_compatible(tok, small_model)
    pad_inside = dataclasses.replace(config, data=dataclasses.replace(config.data, pad_id=7))
    with pytest.raises(DataError, match="is a real token"):
        check_compatible(tok, pad_inside)
    other_bos = dataclasses.replace(config, data=dataclasses.replace(config.data, bos_id=3))
    with pytest.raises(DataError, match="BOS 1"):
        check_compatible(tok, other_bos)


def test_shakespeare_tokenizer_not_prepared_is_clear(make_config):
    import dataclasses

    config = make_config([{"kind": "text", "train": "unused"}])
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, tokenizer="shakespeare"))
    with pytest.raises(DataError, match="elm-data prepare shakespeare"):
        load_tokenizer(config)


def test_training_never_overwrites(spm_model, tmp_path):
    from elm_jax.data.tokenizer import train_sentencepiece

    with pytest.raises(DataError, match="already exists"):
        train_sentencepiece(["text"], spm_model, vocab_size=300)
    (tmp_path / "new.vocab").write_text("keep me")
    with pytest.raises(DataError, match="new.vocab' already exists"):
        train_sentencepiece(["text"], tmp_path / "new.model", vocab_size=300)
    assert (tmp_path / "new.vocab").read_text() == "keep me"
