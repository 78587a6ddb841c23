"""Row layouts and filters against hand-computed examples."""

import re

import grain
import numpy as np
import pytest

from elm_jax.data import stages

P = 99  # pad id in the hand-computed examples


def test_pad_row_is_the_papers_layout():
    row = stages.pad_row(np.array([1, 10, 11, 12, 2], np.int32), seq_len=8, pad_id=P)
    np.testing.assert_array_equal(row["inputs"], [1, 10, 11, 12, 2, P, P, P])
    np.testing.assert_array_equal(row["targets"], [10, 11, 12, 2, P, P, P, P])
    np.testing.assert_array_equal(row["loss_mask"], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["positions"], [0, 1, 2, 3, 4, 0, 0, 0])
    assert row["loss_mask"].dtype == np.float32 and row["inputs"].dtype == np.int32


def test_pad_row_truncates_to_seq_len_plus_one():
    row = stages.pad_row(np.arange(1, 8, dtype=np.int32), seq_len=4, pad_id=P)
    np.testing.assert_array_equal(row["inputs"], [1, 2, 3, 4])
    np.testing.assert_array_equal(row["targets"], [2, 3, 4, 5])
    np.testing.assert_array_equal(row["loss_mask"], [1, 1, 1, 1])
    np.testing.assert_array_equal(row["positions"], [0, 1, 2, 3])


def packed_rows(pieces, seq_len, state=None):
    it = iter(stages.PackIterDataset(grain.MapDataset.source(pieces).to_iter_dataset(), seq_len=seq_len,
                                     pad_id=P))
    if state is not None:
        it.set_state(state)
    return it


def test_pack_rows_hand_computed():
    pieces = [np.array(p, np.int32) for p in ([1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 10, 11, 2])]
    rows = list(packed_rows(pieces, 4))
    expected = [  # inputs, targets, segment ids, positions
        ([1, 5, 6, 1], [5, 6, 2, 7], [1, 1, 1, 2], [0, 1, 2, 0]),
        ([7, 1, 8, 9], [2, 8, 9, 10], [1, 2, 2, 2], [0, 0, 1, 2]),  # remainder of [1, 7, 2] first
        ([10, 11, P, P], [11, 2, P, P], [1, 1, 0, 0], [0, 1, 0, 0]),  # end of stream: padded
    ]
    assert len(rows) == 3
    for row, (inputs, targets, segments, positions) in zip(rows, expected):
        np.testing.assert_array_equal(row["inputs"], inputs)
        np.testing.assert_array_equal(row["targets"], targets)
        np.testing.assert_array_equal(row["segment_ids"], segments)
        np.testing.assert_array_equal(row["positions"], positions)
        np.testing.assert_array_equal(row["loss_mask"], np.array(segments) > 0)
    # Restoring after every row continues identically.
    it = packed_rows(pieces, 4)
    for k in range(3):
        next(it)
        rest = list(packed_rows(pieces, 4, it.get_state()))
        assert [r["inputs"].tolist() for r in rest] == [list(e[0]) for e in expected[k + 1:]]


@pytest.mark.parametrize("text, expected", [
    ("Hello, World!", 11),                  # "hello world"
    ("  A -- b\n\n c...  ", 5),            # "a b c"
    ("It's 1,600 years.", 14),             # "its 1600 years"
    ("?!...", 0),
    ("Ünïcode — déjà vu", 15),            # "ünïcode déjà vu"
])
def test_normalized_length_hand_computed(text, expected):
    assert stages.normalized_length(text) == expected


def test_word_pieces_keep_whitespace_and_cut_every_n_words():
    text = "  one two\nthree   four five\n\nsix seven  "
    pieces = [p for p, _ in stages.word_pieces(text, 3, 1000)]
    assert pieces == ["one two\nthree", "four five\n\nsix", "seven"]


def test_word_pieces_cut_a_pathological_word():
    pieces = list(stages.word_pieces("x" * 25 + " tail", 4, 10))
    assert [p for p, _ in pieces] == ["x" * 10, "x" * 10, "x" * 5 + " tail"]
    assert [cut for _, cut in pieces] == [True, True, True]


def reference_pieces(text, n):
    """Spans of every n consecutive words, from the word spans alone."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    return [text[spans[i][0]:spans[min(i + n, len(spans)) - 1][1]] for i in range(0, len(spans), n)]


ASCII = ["a", "b", ".", ",", " ", " ", "\n", "\t", "\x1c", "-"]  # \x1c: ASCII, yet whitespace
ALPHABET = ASCII + ["é", "\u00a0", "\u2003", "İ"]


@pytest.mark.parametrize("seed", range(4))
def test_fast_paths_agree_with_the_definitions(seed):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        size = int(rng.integers(0, 120))
        text = "".join(rng.choice(ASCII if seed % 2 else ALPHABET, size))
        for n in (1, 3, 40):
            assert [p for p, _ in stages.word_pieces(text, n, 10_000)] == reference_pieces(text, n)
        for min_chars in (0, 1, 5, 20, 60):
            assert stages.passes_min_chars(text, min_chars) == (stages.normalized_length(text) >= min_chars)
