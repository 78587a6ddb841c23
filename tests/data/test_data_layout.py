"""Row layouts and filters against hand-computed examples."""

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


def test_finish_packed_row_masks_unfilled_tail():
    packed = {"inputs": np.array([1, 5, 6, 1, 7, 0]), "targets": np.array([5, 6, 2, 7, 2, 0]),
              "inputs_segment_ids": np.array([1, 1, 1, 2, 2, 0]),
              "inputs_positions": np.array([0, 1, 2, 0, 1, 0])}
    row = stages.finish_packed_row(packed, pad_id=P)
    np.testing.assert_array_equal(row["inputs"], [1, 5, 6, 1, 7, P])
    np.testing.assert_array_equal(row["targets"], [5, 6, 2, 7, 2, P])
    np.testing.assert_array_equal(row["loss_mask"], [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 2, 2, 0])


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
