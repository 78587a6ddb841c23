"""The paper's zero-shot tasks, formatted exactly as lm-eval-harness formats them.

Each task turns one document (a JSON object in the public dataset's own field layout) into a
multiple-choice question: the (context, continuation) pairs to score, the index of the right
answer, and the choice strings whose character lengths ``acc_norm`` divides by. Prompts, choices,
the " " target delimiter and WinoGrande's partial scoring (the option goes into the context and
only the rest of the sentence is scored) follow lm-eval's task definitions.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from elm_jax.errors import UsageError

DELIMITER = " "


@dataclasses.dataclass(frozen=True)
class Question:
    """One document as lm-eval's ``multiple_choice`` output type sees it."""

    requests: tuple[tuple[str, str], ...]  # (context, continuation) per choice
    gold: int
    choices: tuple[str, ...]  # acc_norm divides each log-likelihood by len(choice)


def _choices_after(context: str, choices: list[str], gold: int) -> Question:
    """The common case: one context, each choice scored as its continuation."""
    return Question(tuple((context, DELIMITER + c) for c in choices), gold, tuple(choices))


def arc(doc: Mapping[str, Any]) -> Question:
    labels = list(doc["choices"]["label"])
    return _choices_after(f"Question: {doc['question']}\nAnswer:", list(doc["choices"]["text"]),
                          labels.index(doc["answerKey"]))


def boolq(doc: Mapping[str, Any]) -> Question:
    label = doc["label"] if "label" in doc else int(bool(doc["answer"]))  # super_glue or google
    return _choices_after(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:",
                          ["no", "yes"], int(label))


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(doc: Mapping[str, Any]) -> Question:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return _choices_after(_hellaswag_clean(doc["activity_label"] + ": " + context),
                          [_hellaswag_clean(e) for e in doc["endings"]], int(doc["label"]))


def openbookqa(doc: Mapping[str, Any]) -> Question:
    """The bare question stem as the context (lm-eval's ``openbookqa``)."""
    labels = list(doc["choices"]["label"])
    return _choices_after(doc["question_stem"], list(doc["choices"]["text"]),
                          labels.index(doc["answerKey"].lstrip()))


def piqa(doc: Mapping[str, Any]) -> Question:
    return _choices_after(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]],
                          int(doc["label"]))


def sciq(doc: Mapping[str, Any]) -> Question:
    choices = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    return _choices_after(f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:",
                          choices, 3)


def siqa(doc: Mapping[str, Any]) -> Question:
    """lm-eval's ``social_iqa``: ``label`` is "1", "2" or "3"."""
    return _choices_after(f"Q: {doc['context']} {doc['question']}\nA:",
                          [doc["answerA"], doc["answerB"], doc["answerC"]], int(doc["label"]) - 1)


def multiple_choice(doc: Mapping[str, Any]) -> Question:
    """Our own layout: the context ``prompt``, the ``choices`` and the right one's index ``answer``
    (``elm-finetune``'s Shakespeare demo writes its held-out questions so)."""
    return _choices_after(doc["prompt"], list(doc["choices"]), int(doc["answer"]))


def winogrande(doc: Mapping[str, Any]) -> Question:
    """Partial scoring: each option fills the blank in the context; the rest is scored."""
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    continuation = DELIMITER + sentence[blank + 1:].strip()
    return Question(tuple((c, continuation) for c in contexts), {"1": 0, "2": 1}[doc["answer"]],
                    tuple(contexts))


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    build: Callable[[Mapping[str, Any]], Question]
    fields: tuple[str, ...]  # for error messages: what a JSONL line must hold
    metrics: tuple[str, ...]  # what lm-eval reports for the task
    split: str  # the split lm-eval evaluates (for the user's information)


TASKS = {t.name: t for t in (
    Task("arc_easy", arc, ("question", "choices.text", "choices.label", "answerKey"),
         ("acc", "acc_norm"), "test"),
    Task("arc_challenge", arc, ("question", "choices.text", "choices.label", "answerKey"),
         ("acc", "acc_norm"), "test"),
    Task("boolq", boolq, ("passage", "question", "label"), ("acc",), "validation"),
    Task("hellaswag", hellaswag, ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
         ("acc", "acc_norm"), "validation"),
    Task("openbookqa", openbookqa, ("question_stem", "choices.text", "choices.label", "answerKey"),
         ("acc", "acc_norm"), "test"),
    Task("piqa", piqa, ("goal", "sol1", "sol2", "label"), ("acc", "acc_norm"), "validation"),
    Task("sciq", sciq, ("support", "question", "distractor1", "distractor2", "distractor3",
                        "correct_answer"), ("acc", "acc_norm"), "test"),
    Task("siqa", siqa, ("context", "question", "answerA", "answerB", "answerC", "label"), ("acc",),
         "validation"),
    Task("shakespeare_plays", multiple_choice, ("prompt", "choices", "answer"), ("acc", "acc_norm"),
         "held-out scenes"),
    Task("winogrande", winogrande, ("sentence", "option1", "option2", "answer"), ("acc",),
         "validation"),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def load_questions(task: Task, path: str | Path) -> list[Question]:
    """Read a JSONL file of ``task`` documents; a bad line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"{path} not found: task {task.name} reads one JSON object per line with the fields "
            f"{', '.join(task.fields)} (its public dataset's layout, {task.split} split)")
    questions = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                questions.append(task.build(json.loads(line)))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError) as err:
                raise UsageError(f"{path}:{number}: not a {task.name} document ({err!r}); "
                                 f"expected the fields {', '.join(task.fields)}") from None
    if not questions:
        raise UsageError(f"{path} holds no {task.name} documents")
    return questions
