"""Zero-shot multiple choice by log-likelihood, with lm-eval-harness's ``acc`` and ``acc_norm``.

``acc``: the choice with the highest summed log-likelihood is right. ``acc_norm``: the same after
dividing each log-likelihood by the length of its choice string in characters. Ties go to the
first choice (``numpy.argmax``). Tokenization follows lm-eval's causal-LM path: trailing spaces of
the context move to the continuation, the whole string is encoded and the continuation's tokens are
those past the context's own encoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from elm_jax.eval.scoring import score
from elm_jax.eval.tasks import Question, get_task, load_questions
from elm_jax.model import OpenELM


class TextTokenizer(Protocol):
    """What evaluation needs from a tokenizer (``elm_jax.data.tokenizer.Tokenizer`` has it)."""

    bos_id: int
    eos_id: int

    def encode(self, text: str, *, bos: bool, eos: bool) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def encode_text(tokenizer: TextTokenizer, text: str) -> list[int]:
    """Token ids of ``text`` alone, without BOS or EOS."""
    return list(tokenizer.encode(text, bos=False, eos=False))


def encode_pair(tokenizer: TextTokenizer, context: str, continuation: str, *,
                add_bos: bool = True) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split the way lm-eval splits them."""
    prefix = [tokenizer.bos_id] if add_bos else []
    if not context:  # lm-eval conditions on the BOS / EOT token alone
        return [tokenizer.bos_id], encode_text(tokenizer, continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = prefix + encode_text(tokenizer, context + continuation)
    context_ids = prefix + encode_text(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def choose(logprobs: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """``(prediction, normalised prediction)``: argmax of ll and of ll / len(choice)."""
    lls = np.asarray(logprobs, np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


@dataclasses.dataclass(frozen=True)
class TaskResult:
    task: str
    count: int
    metrics: dict[str, float]  # acc, acc_norm (where lm-eval reports it), and their stderr

    def line(self) -> str:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
        return f"{self.task}: {shown} (n={self.count})"


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error with the sample standard deviation (lm-eval's ``mean_stderr``)."""
    n = len(values)
    err = float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return float(np.mean(values)), err


def evaluate_questions(model: OpenELM, tokenizer: TextTokenizer, name: str,
                       questions: Sequence[Question], *, add_bos: bool = True,
                       batch_size: int = 16) -> TaskResult:
    """Score every choice of every question in one batched pass, then compute the metrics."""
    requests = [encode_pair(tokenizer, ctx, cont, add_bos=add_bos)
                for q in questions for ctx, cont in q.requests]
    scored = iter(score(model, requests, batch_size=batch_size))
    hits: dict[str, list[float]] = {"acc": [], "acc_norm": []}
    for q in questions:
        lls = [next(scored).logprob for _ in q.requests]
        pred, pred_norm = choose(lls, q.choices)
        hits["acc"].append(float(pred == q.gold))
        hits["acc_norm"].append(float(pred_norm == q.gold))
    metrics = {}
    for metric in get_task(name).metrics:
        metrics[metric], metrics[f"{metric}_stderr"] = _mean_and_stderr(hits[metric])
    return TaskResult(name, len(questions), metrics)


def evaluate_tasks(model: OpenELM, tokenizer: TextTokenizer, names: Sequence[str],
                   data_dir: str | Path, *, add_bos: bool = True, batch_size: int = 16,
                   limit: int | None = None) -> Iterator[TaskResult]:
    """Each task from ``data_dir/<task>.jsonl`` (the first ``limit`` documents if given).

    Yields each task's result as soon as it is done; every name is checked before any work.
    """
    tasks = [get_task(n) for n in names]
    for task in tasks:
        questions = load_questions(task, Path(data_dir) / f"{task.name}.jsonl")[:limit]
        yield evaluate_questions(model, tokenizer, task.name, questions, add_bos=add_bos,
                                 batch_size=batch_size)
