"""Fixtures of the evaluation tests (helpers live in tiny_lm.py)."""

import pytest
from tiny_lm import CharTokenizer, make_tiny_hf


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer()


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("hf"))
