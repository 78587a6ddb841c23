"""Each task's prompt, continuations and gold index, written out from lm-eval's task definitions."""

import pytest

from elm_jax.errors import UsageError
from elm_jax.eval.tasks import TASKS, get_task


def test_arc():
    doc = {"question": "Which gas do plants absorb?", "answerKey": "2",
           "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["1", "2", "3"]}}
    q = get_task("arc_challenge").build(doc)
    assert q.requests == (("Question: Which gas do plants absorb?\nAnswer:", " oxygen"),
                          ("Question: Which gas do plants absorb?\nAnswer:", " carbon dioxide"),
                          ("Question: Which gas do plants absorb?\nAnswer:", " helium"))
    assert q.gold == 1 and q.choices == ("oxygen", "carbon dioxide", "helium")


def test_boolq():
    q = get_task("boolq").build({"passage": "Water boils at 100 C.", "question": "does water boil",
                                 "idx": 0, "label": 1})
    assert q.requests == (("Water boils at 100 C.\nQuestion: does water boil?\nAnswer:", " no"),
                          ("Water boils at 100 C.\nQuestion: does water boil?\nAnswer:", " yes"))
    assert q.gold == 1


def test_hellaswag_cleans_wikihow_brackets():
    doc = {"activity_label": "Home and Garden", "ctx_a": "[header] How to plant a tree",
           "ctx_b": "dig a hole.", "label": "0",
           "endings": ["Put the tree in it [title] Water it.", "Eat the  tree."]}
    q = get_task("hellaswag").build(doc)
    context = "Home and Garden: How to plant a tree Dig a hole."
    assert q.requests == ((context, " Put the tree in it. Water it."), (context, " Eat the tree."))
    assert q.choices == ("Put the tree in it. Water it.", "Eat the tree.") and q.gold == 0


def test_piqa():
    q = get_task("piqa").build({"goal": "Open a jar", "sol1": "twist the lid",
                                "sol2": "paint the lid", "label": 0})
    assert q.requests == (("Question: Open a jar\nAnswer:", " twist the lid"),
                          ("Question: Open a jar\nAnswer:", " paint the lid"))
    assert q.gold == 0


def test_sciq_puts_the_correct_answer_last():
    doc = {"support": "  Cells divide.", "question": "What divides?", "distractor1": "rocks",
           "distractor2": "water", "distractor3": "air", "correct_answer": "cells"}
    q = get_task("sciq").build(doc)
    assert q.requests[0] == ("Cells divide.\nQuestion: What divides?\nAnswer:", " rocks")
    assert q.choices == ("rocks", "water", "air", "cells") and q.gold == 3


def test_winogrande_partial_scoring():
    doc = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder "
                       "cases.", "option1": "Sarah", "option2": "Maria", "answer": "1"}
    q = get_task("winogrande").build(doc)
    rest = " always got the harder cases."
    assert q.requests == (("Sarah was a much better surgeon than Maria so Sarah", rest),
                          ("Sarah was a much better surgeon than Maria so Maria", rest))
    assert q.gold == 0


def test_siqa_labels_count_from_one():
    doc = {"context": "Tracy gave Riley a gift.", "question": "How would Riley feel?",
           "answerA": "grateful", "answerB": "angry", "answerC": "bored", "label": "1"}
    q = get_task("siqa").build(doc)
    prompt = "Q: Tracy gave Riley a gift. How would Riley feel?\nA:"
    assert q.requests == ((prompt, " grateful"), (prompt, " angry"), (prompt, " bored"))
    assert q.gold == 0 and get_task("siqa").metrics == ("acc",)


def test_openbookqa_scores_after_the_bare_question_stem():
    doc = {"question_stem": "The sun is responsible for", "answerKey": "D",
           "choices": {"text": ["puppies learning", "plants sprouting", "rocks", "flowers wilting"],
                       "label": ["A", "B", "C", "D"]}}
    q = get_task("openbookqa").build(doc)
    assert q.requests[1] == ("The sun is responsible for", " plants sprouting")
    assert q.gold == 3 and get_task("openbookqa").metrics == ("acc", "acc_norm")


def test_the_paper_tasks_are_all_there():
    assert set(TASKS) == {"arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "sciq",
                          "winogrande", "siqa", "openbookqa", "shakespeare_plays"}
    with pytest.raises(UsageError, match="unknown task 'lambada'"):
        get_task("lambada")
