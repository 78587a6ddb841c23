"""Log-likelihood scoring and lm-eval's acc / acc_norm against hand-computed references."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_lm import reference_logprob

from elm_jax.errors import UsageError
from elm_jax.eval.scoring import score
from elm_jax.eval.tasks import Question
from elm_jax.eval.zeroshot import choose, encode_pair, evaluate_questions, evaluate_tasks


def test_scores_match_numpy_log_likelihoods(tiny_hf):
    model = tiny_hf[0]
    rng = np.random.default_rng(1)
    requests = [(rng.integers(0, 97, n).tolist(), rng.integers(0, 97, m).tolist())
                for n, m in ((1, 4), (9, 1), (5, 7), (20, 3), (2, 2))]
    got = score(model, requests, batch_size=2)  # several batches, sorted by length inside
    for (ctx, cont), result in zip(requests, got):
        assert result.logprob == pytest.approx(reference_logprob(tiny_hf, ctx, cont), abs=2e-4)


def test_greedy_flag_means_every_token_is_the_argmax(tiny_hf):
    model = tiny_hf[0]
    context = [1, 40, 50, 60]
    greedy = []
    forward = nnx.jit(lambda m, t: m(t))
    for _ in range(3):  # the model's own greedy continuation (right-padded: one compilation)
        seq = context + greedy
        logits = np.asarray(forward(model, jnp.asarray([seq + [0] * (8 - len(seq))])))
        greedy.append(int(np.argmax(logits[0, len(seq) - 1])))
    other = greedy[:2] + [(greedy[2] + 1) % 97]
    assert [r.greedy for r in score(model, [(context, greedy), (context, other)])] == [True, False]


def test_long_requests_keep_their_last_max_length_tokens(tiny_hf):
    model = tiny_hf[0]
    rng = np.random.default_rng(2)
    ctx, cont = rng.integers(0, 97, 30).tolist(), rng.integers(0, 97, 4).tolist()
    (got,) = score(model, [(ctx, cont)], max_length=16)
    whole = (ctx + cont)[-17:]
    assert got.logprob == pytest.approx(reference_logprob(tiny_hf, whole[:-4], whole[-4:]),
                                        abs=2e-4)


def test_encode_pair_moves_trailing_space_to_the_continuation(tokenizer):
    ids = lambda text: tokenizer.encode(text, bos=False, eos=False)  # noqa: E731
    assert encode_pair(tokenizer, "Answer: ", "yes") == ([1] + ids("Answer:"), ids(" yes"))
    assert encode_pair(tokenizer, "", "hi", add_bos=False) == ([1], ids("hi"))
    assert encode_pair(tokenizer, "Q:", " a", add_bos=False) == (ids("Q:"), ids(" a"))


def test_acc_norm_divides_by_choice_characters():
    # ll -6 over 1 character vs -10 over 8: acc picks the first, acc_norm the second.
    assert choose([-6.0, -10.0], ["a", "abcdefgh"]) == (0, 1)
    # Lengths are characters of the choice string, not tokens and without the delimiter.
    assert choose([-4.0, -4.4], ["ab", "abc"]) == (0, 1)
    assert choose([-3.0, -3.0], ["x", "x"]) == (0, 0)  # ties go to the first choice


def _reference_metrics(tiny_hf, tokenizer, questions):
    acc, acc_norm = [], []
    for q in questions:
        lls = np.array([reference_logprob(tiny_hf, *encode_pair(tokenizer, c, t))
                        for c, t in q.requests])
        norm = lls / np.array([len(c) for c in q.choices])
        acc.append(float(np.argmax(lls) == q.gold))
        acc_norm.append(float(np.argmax(norm) == q.gold))
    return np.mean(acc), np.mean(acc_norm)


def _arc_docs():
    rng = np.random.default_rng(3)
    words = ["sun", "a warm blanket of air", "ice", "the river bed", "it", "oxygen gas", "no"]
    docs = []
    for i in range(6):
        picks = rng.choice(len(words), 3, replace=False)
        docs.append({"id": str(i), "question": f"What is thing {i}?",
                     "choices": {"text": [words[p] for p in picks], "label": ["A", "B", "C"]},
                     "answerKey": "ABC"[i % 3]})
    return docs


def test_task_metrics_match_hand_computed_references(tiny_hf, tokenizer, tmp_path):
    docs = _arc_docs()
    (tmp_path / "arc_easy.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    (result,) = list(evaluate_tasks(tiny_hf[0], tokenizer, ["arc_easy"], tmp_path, batch_size=4))
    from elm_jax.eval.tasks import arc
    acc, acc_norm = _reference_metrics(tiny_hf, tokenizer, [arc(d) for d in docs])
    assert result.count == 6 and acc != acc_norm  # the docs tell the two metrics apart
    assert result.metrics["acc"] == pytest.approx(acc)
    assert result.metrics["acc_norm"] == pytest.approx(acc_norm)
    assert result.metrics["acc_stderr"] == pytest.approx(np.sqrt(acc * (1 - acc) / 5), abs=1e-9)


def test_winogrande_scores_only_the_shared_continuation(tiny_hf, tokenizer):
    q = Question(requests=(("The cat sat on the mat", " because it was tired."),
                           ("The dog sat on the mat", " because it was tired.")),
                 gold=1, choices=("The cat sat on the mat", "The dog sat on the mat"))
    lls = [reference_logprob(tiny_hf, *encode_pair(tokenizer, c, t)) for c, t in q.requests]
    result = evaluate_questions(tiny_hf[0], tokenizer, "winogrande", [q])
    assert result.metrics["acc"] == float(np.argmax(lls) == 1)
    assert set(result.metrics) == {"acc", "acc_stderr"}  # lm-eval reports acc only


def test_missing_data_and_unknown_tasks_are_clear(tiny_hf, tokenizer, tmp_path):
    with pytest.raises(UsageError, match="known tasks"):
        list(evaluate_tasks(tiny_hf[0], tokenizer, ["arc_easy", "mmlu"], tmp_path))
    with pytest.raises(UsageError, match="goal, sol1, sol2, label"):
        list(evaluate_tasks(tiny_hf[0], tokenizer, ["piqa"], tmp_path))
    (tmp_path / "piqa.jsonl").write_text('{"goal": "x", "sol1": "a", "sol2": "b", "label": 0}\n'
                                         '{"goal": "y"}\n')
    with pytest.raises(ValueError, match="piqa.jsonl:2"):
        list(evaluate_tasks(tiny_hf[0], tokenizer, ["piqa"], tmp_path))
