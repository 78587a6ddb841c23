"""The lm-eval-harness adapter: lm-eval's own metrics on a local task agree with ours."""

import json

import lm_eval
import numpy as np
import pytest
from tiny_lm import reference_logprob

from elm_jax.eval.harness import ElmJaxLM  # noqa: E402
from elm_jax.eval.tasks import arc  # noqa: E402
from elm_jax.eval.zeroshot import evaluate_questions  # noqa: E402
from elm_jax.infer import generate  # noqa: E402

TASK_YAML = """task: tiny_arc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _docs():
    rng = np.random.default_rng(5)
    words = ["sun", "a warm blanket of air", "ice", "the river bed", "it", "oxygen gas", "no"]
    return [{"id": str(i), "question": f"Which one fits case {i}?", "answerKey": "ABC"[i % 3],
             "choices": {"text": [words[p] for p in rng.choice(len(words), 3, replace=False)],
                         "label": ["A", "B", "C"]}} for i in range(8)]


@pytest.fixture
def local_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    docs = _docs()
    data = tmp_path / "tiny_arc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_arc.yaml").write_text(TASK_YAML.format(path=data))
    return tmp_path / "tasks", docs


def test_lm_eval_scores_a_local_task_like_elm_eval(tiny_hf, tokenizer, local_task):
    from lm_eval.tasks import TaskManager

    include, docs = local_task
    lm = ElmJaxLM(model=tiny_hf[0], tokenizer=tokenizer, batch_size=4)
    out = lm_eval.simple_evaluate(model=lm, tasks=["tiny_arc"],
                                  task_manager=TaskManager(include_path=str(include)))
    theirs = out["results"]["tiny_arc"]
    ours = evaluate_questions(tiny_hf[0], tokenizer, "arc_easy", [arc(d) for d in docs],
                              batch_size=4).metrics
    assert theirs["acc,none"] == pytest.approx(ours["acc"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    assert ours["acc"] != ours["acc_norm"]  # the task tells the metrics apart


class _Request:
    def __init__(self, *args):
        self.args = args


def test_rolling_loglikelihood_covers_every_token_once(tiny_hf, tokenizer):
    lm = ElmJaxLM(model=tiny_hf[0], tokenizer=tokenizer, max_length=16, batch_size=4)
    text = "the quick brown fox jumps"  # 25 tokens: two 16-token windows
    ids = tokenizer.encode(text, bos=False, eos=False)
    (got,) = lm.loglikelihood_rolling([_Request(text)])
    # lm-eval's windows: BOS + ids[:15] predicts ids[:16]; then a full 16-token input ids[8:24]
    # predicts the remaining ids[16:25] (every token exactly once, with maximal context).
    want = (reference_logprob(tiny_hf, [1], ids[:16])
            + reference_logprob(tiny_hf, ids[8:16], ids[16:]))
    assert got == pytest.approx(want, abs=5e-4)


def test_generate_until_stops_at_the_stop_string(tiny_hf, tokenizer):
    lm = ElmJaxLM(model=tiny_hf[0], tokenizer=tokenizer, batch_size=2)
    prompts = ["Once upon", "Hello"]
    ids = [tokenizer.encode(p, bos=True, eos=False) for p in prompts]
    out = np.asarray(generate(tiny_hf[0], ids, 12, eos_id=tokenizer.eos_id))
    full = [tokenizer.decode(row[len(p):len(p) + 12]) for p, row in zip(ids, out)]
    stop = full[0][3:5]
    got = lm.generate_until([_Request(p, {"until": [stop], "max_gen_toks": 12}) for p in prompts])
    assert got[0] == full[0].split(stop)[0] and len(got[0]) < len(full[0])
    assert got[1] == full[1].split(stop)[0]
