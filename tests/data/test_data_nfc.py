"""``data.nfc_normalize``: composed and decomposed spellings of a text become the same tokens, and
the character filter counts the normalised text (NFC comes before both)."""

import unicodedata

import pytest

from elm_jax.data import pipeline
from elm_jax.data.tokenizer import load_tokenizer
from elm_jax.errors import DataError

ACCENTED = "Café crème, naïve façade, Ångström, résumé, über Zoë's piñata"
HANGUL = "한국어 문장"  # each syllable decomposes into 2 or 3 jamo, which are letters


def first_rows(make_config, jsonl_source, text, **data):
    config = make_config([jsonl_source([text])], mode="pad", seq_len=64, words_per_piece=100,
                         min_tokens=0, batch_size=1, **data)
    it = pipeline.make_iterator(config, "train", process_index=0, process_count=1, num_epochs=1)
    return config, [row.tolist() for batch in it for row in batch["inputs"]]


def test_composed_and_decomposed_accents_give_the_same_tokens(make_config, jsonl_source):
    composed = unicodedata.normalize("NFC", ACCENTED)
    decomposed = unicodedata.normalize("NFD", ACCENTED)
    assert composed != decomposed
    _, a = first_rows(make_config, jsonl_source, composed, nfc_normalize=True, min_chars=0)
    config, b = first_rows(make_config, jsonl_source, decomposed, nfc_normalize=True, min_chars=0)
    assert a == b
    tok = load_tokenizer(config)
    assert tok.decode(a[0]) == composed
    _, raw = first_rows(make_config, jsonl_source, decomposed, nfc_normalize=False, min_chars=0)
    assert raw != a  # without the switch the decomposed form reaches the tokenizer as it is


def test_the_character_filter_sees_the_normalised_text(make_config, jsonl_source):
    decomposed = unicodedata.normalize("NFD", HANGUL)
    length = lambda s: len(s.replace(" ", "")) + 1  # letters plus one space
    assert length(decomposed) > 10 >= length(HANGUL)
    _, kept = first_rows(make_config, jsonl_source, decomposed, nfc_normalize=False, min_chars=10)
    assert len(kept) == 1  # 14 jamo and a space pass a 10-character filter
    with pytest.raises(DataError, match="dropped_chars"):  # 5 syllables and a space do not
        first_rows(make_config, jsonl_source, decomposed, nfc_normalize=True, min_chars=10)


def test_tokenizer_training_text_is_normalised_too(make_config, jsonl_source):
    decomposed = unicodedata.normalize("NFD", ACCENTED)
    config = make_config([jsonl_source([decomposed])], nfc_normalize=True)
    assert list(pipeline.document_texts(config, "train")) == [unicodedata.normalize("NFC", ACCENTED)]
