"""The embedded demo: "Which play is this line from?", four choices, from the Shakespeare corpus.

Lines come with their speaker (``ROSS: Ah, good father,``) from the plays of the prepared corpus
(``elm-data prepare shakespeare``, the data ``elm-train``'s tiny run trained on): training questions
from the corpus's train split, held-out questions from its validation scenes (every 20th document),
minus any line that also occurs in training, so no test line is ever seen in fine-tuning (nor in
the tiny run's pretraining). The three wrong choices are other plays drawn with a fixed seed; the
answer is the play's title, scored by log-likelihood after ``Answer:`` as lm-eval scores ARC.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Mapping
from typing import Any

from elm_jax.eval.tasks import DELIMITER
from elm_jax.finetune.records import Record

# work id -> title, for the plays that have a validation scene (poems and sonnets are left out)
TITLES = {
    "antony_and_cleopatra": "Antony and Cleopatra", "as_you_like_it": "As You Like It",
    "coriolanus": "Coriolanus", "cymbeline": "Cymbeline", "hamlet": "Hamlet",
    "henry_iv_part_1": "Henry IV Part 1", "henry_iv_part_2": "Henry IV Part 2",
    "henry_v": "Henry V", "henry_vi_part_1": "Henry VI Part 1", "henry_vi_part_2": "Henry VI Part 2",
    "henry_vi_part_3": "Henry VI Part 3", "henry_viii": "Henry VIII", "julius_caesar": "Julius Caesar",
    "lear": "King Lear", "loves_labours_lost": "Love's Labour's Lost", "macbeth": "Macbeth",
    "measure_for_measure": "Measure for Measure", "merchant_of_venice": "The Merchant of Venice",
    "midsummer_nights_dream": "A Midsummer Night's Dream", "othello": "Othello",
    "pericles": "Pericles", "richard_ii": "Richard II", "richard_iii": "Richard III",
    "romeo_and_juliet": "Romeo and Juliet", "taming_of_the_shrew": "The Taming of the Shrew",
    "timon_of_athens": "Timon of Athens", "tragedy_of_titus_andronicus": "Titus Andronicus",
    "twelfth_night": "Twelfth Night", "winters_tale": "The Winter's Tale",
}
CHOICES = 4
QUESTION = "Which play is this line from?\n{line}\nAnswer:"
_SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,28}\.?$")  # "ROSS.", "Juliet.", "Hor.", "THESEUS"
_DIRECTION = re.compile(r"\[[^\]]*\]?")
MIN_CHARS, MAX_CHARS = 20, 80


def speech_lines(text: str) -> Iterator[str]:
    """``Speaker: line`` for every line of every speech of a scene (a block whose first line is a
    speaker's name; stage directions dropped)."""
    for block in re.split(r"\n\s*\n", text):
        rows = [row.strip() for row in block.strip().splitlines()]
        if len(rows) < 2 or not _SPEAKER.match(rows[0]):
            continue
        speaker = rows[0].rstrip(".").title()
        for row in rows[1:]:
            line = _DIRECTION.sub("", row).strip()
            if MIN_CHARS <= len(line) <= MAX_CHARS:
                yield f"{speaker}: {line}"


def _lines(split: str, cache_dir: str | None) -> dict[str, list[str]]:
    import tensorflow_datasets as tfds

    from elm_jax.data.prepare import shakespeare_builder_dir

    source = tfds.builder_from_directory(str(shakespeare_builder_dir(cache_dir))).as_data_source(split)
    lines: dict[str, list[str]] = {work: [] for work in TITLES}
    for i in range(len(source)):
        work = source[i]["work"].decode()
        if work in lines:
            lines[work].extend(speech_lines(source[i]["text"].decode("utf-8")))
    return lines


def _question(line: str, work: str, rng: random.Random) -> dict[str, Any]:
    """A question document in ``elm_jax.eval.tasks``' ``shakespeare_plays`` layout."""
    others = rng.sample(sorted(t for w, t in TITLES.items() if w != work), CHOICES - 1)
    choices = [*others, TITLES[work]]
    rng.shuffle(choices)
    return {"prompt": QUESTION.format(line=line), "choices": choices,
            "answer": choices.index(TITLES[work])}


def as_record(doc: Mapping[str, Any]) -> Record:
    """A question with its answer, as a prompt / response record to train on."""
    return {"prompt": doc["prompt"], "response": DELIMITER + doc["choices"][doc["answer"]]}


def demo_data(count: int, seed: int = 0, cache_dir: str | None = None
              ) -> tuple[list[Record], list[dict[str, Any]]]:
    """(training records, ``count`` held-out question documents, the plays taken in turn)."""
    train, held_out = _lines("train", cache_dir), _lines("validation", cache_dir)
    seen = {line for lines in train.values() for line in lines}
    rng = random.Random(seed)
    records = [as_record(_question(line, work, rng)) for work, lines in train.items() for line in lines]
    pools = {w: [line for line in lines if line not in seen] for w, lines in held_out.items()}
    pools = {w: rng.sample(lines, len(lines)) for w, lines in pools.items() if lines}
    docs: list[dict[str, Any]] = []
    while len(docs) < count and any(pools.values()):
        for work in sorted(pools):
            if pools[work] and len(docs) < count:
                docs.append(_question(pools[work].pop(), work, rng))
    return records, docs
