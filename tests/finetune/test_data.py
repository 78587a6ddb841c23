"""Fine-tuning data: record formats, chat templates, response-only loss masks, truncation, rows,
packing and the iterator's state; bad records are one-line errors naming the fix."""

import json

import jax
import numpy as np
import pytest
from cli_helpers import write_tokenizer
from finetune_helpers import chat_records, preference_records, write_jsonl
from flax import nnx
from train.synthetic import FAST_COMPILE

from elm_jax.common_types import BATCH_FIELDS
from elm_jax.config import Config, DataConfig, FinetuneConfig, MeshConfig, ModelConfig, TrainConfig
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.errors import DataError
from elm_jax.finetune import encode, records
from elm_jax.finetune.chat import DEFAULT_TEMPLATE, ChatTemplate, resolve_template
from elm_jax.finetune.data import FinetuneData
from elm_jax.finetune.encode import Encoder
from elm_jax.model import build
from elm_jax.train.step import forward_sums, graphdef


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer(write_tokenizer(tmp_path_factory.mktemp("tok") / "tok.model"), pad_id=150)


def template(tokenizer, text=DEFAULT_TEMPLATE):
    return ChatTemplate(text, bos_token=tokenizer.id_to_piece(tokenizer.bos_id),
                        eos_token=tokenizer.id_to_piece(tokenizer.eos_id))


def trained_text(tokenizer, seq):
    return tokenizer.decode(seq.ids[seq.trainable])


def test_alpaca_records_use_llm_adapters_prompt():
    rec = records.alpaca({"instruction": "Pick one.", "input": "a or b", "output": "the answer is a",
                          "answer": "a"}, "x")
    assert rec == {"prompt": "Below is an instruction that describes a task, paired with an input "
                             "that provides further context. Write a response that appropriately "
                             "completes the request.\n\n### Instruction:\nPick one.\n\n### Input:\n"
                             "a or b\n\n### Response:\n", "response": "the answer is a"}
    rec = records.alpaca({"instruction": "Say hi.", "answer": "hi"}, "x")
    assert rec["response"] == "hi" and "### Input" not in rec["prompt"]


def test_a_record_without_its_answer_is_a_one_line_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"},
                                                {"instruction": "c", "input": "d"}])
    with pytest.raises(DataError, match=r"bad.jsonl: record 2: no text field 'answer' \(the response "
                                        r"to train on: 'output' or 'answer'\); add it or drop the "
                                        r"record") as err:
        records.load(path, "alpaca")
    assert "\n" not in str(err.value)


def test_chosen_equal_to_rejected_is_a_one_line_error(tmp_path):
    pairs = preference_records()
    pairs[3]["rejected"] = pairs[3]["chosen"]
    with pytest.raises(DataError, match="record 4: chosen and rejected are the same response; DPO "
                                        "learns from their difference") as err:
        records.load(write_jsonl(tmp_path / "p.jsonl", pairs), "preference")
    assert "\n" not in str(err.value)


def test_prompt_response_trains_on_the_response_and_eos(tokenizer):
    seq = Encoder(tokenizer).sft({"prompt": "To be, or not", "response": " to be, that is"})
    assert seq.ids[0] == tokenizer.bos_id and not seq.trainable[0]
    assert seq.ids[-1] == tokenizer.eos_id and seq.trainable[-1]
    assert trained_text(tokenizer, seq) == "to be, that is"
    # the whole sequence tokenizes as the whole text does (as lm-eval splits context / continuation)
    assert seq.ids[1:-1].tolist() == tokenizer.encode("To be, or not to be, that is", bos=False,
                                                      eos=False)


def test_chat_template_trains_on_assistant_turns(tokenizer):
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "To be"},
                {"role": "assistant", "content": "or not"}, {"role": "user", "content": "To die"},
                {"role": "assistant", "content": "to sleep"}]
    chat = template(tokenizer)
    assert chat.render(messages[:2], generation_prompt=True) == (
        "<|system|>\nBe brief</s>\n<|user|>\nTo be</s>\n<|assistant|>\n")
    seq = Encoder(tokenizer, chat).sft({"messages": messages})
    assert (seq.ids == tokenizer.eos_id).sum() == 5  # each turn's </s> is the EOS id
    spans = np.flatnonzero(np.diff(np.r_[0, seq.trainable.astype(int), 0]))  # [start, end) pairs
    texts = [tokenizer.decode(seq.ids[a:b]) for a, b in zip(spans[::2], spans[1::2])]
    assert [t.strip() for t in texts] == ["or not", "to sleep"]
    assert all(seq.ids[b - 1] == tokenizer.eos_id or tokenizer.decode(seq.ids[b - 1:b]).isspace()
               for b in spans[1::2])


def test_the_tokenizers_own_template_wins_when_auto(tokenizer, tmp_path):
    own = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}" \
          "{% if add_generation_prompt %}[assistant]{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": own}))
    assert resolve_template("auto", [tmp_path]) == own
    assert resolve_template("auto", [tmp_path / "elsewhere"]) == DEFAULT_TEMPLATE
    assert resolve_template("default", [tmp_path]) == DEFAULT_TEMPLATE
    seq = Encoder(tokenizer, template(tokenizer, own)).sft(chat_records()[0])
    assert trained_text(tokenizer, seq).strip() == chat_records()[0]["messages"][1]["content"]


def test_changing_prompt_targets_never_changes_the_loss(tokenizer):
    """The loss of an SFT row reads only its response targets: scramble every target the mask
    leaves out and the loss sums stay bit for bit the same."""
    seq = Encoder(tokenizer).sft({"prompt": "Whether 'tis nobler in the mind to suffer",
                                  "response": " The slings and arrows"})
    row = encode.row([encode.fit(seq, 33)], 32, 150)
    batch = {k: np.stack([v, v]) for k, v in row.items()}
    cfg = ModelConfig(vocab_size=160, num_layers=2, model_dim=32, head_dim=8, num_gqa_groups=2,
                      ffn_dim_divisor=16)
    config = Config(model=cfg, data=DataConfig(seq_len=32, pad_id=150), train=TrainConfig(),
                    mesh=MeshConfig(1, 1, 1))
    params = nnx.to_pure_dict(nnx.state(build(cfg), nnx.Param))
    sums = jax.jit(lambda p, b: forward_sums(config, graphdef(config), p, b), compiler_options=FAST_COMPILE)
    before = sums(params, batch)
    prompt = batch["loss_mask"] == 0
    scrambled = dict(batch, targets=np.where(prompt, (batch["targets"] + 7) % 150, batch["targets"]))
    after = sums(params, scrambled)
    assert float(before.tokens) == (seq.trainable[1:]).sum() * 2
    for a, b in zip(before, after):
        assert float(a) == float(b)
    changed = dict(batch, targets=np.where(prompt, batch["targets"], (batch["targets"] + 7) % 150))
    assert float(sums(params, changed).cross_entropy) != float(before.cross_entropy)


def test_truncation_keeps_the_response():
    seq = encode.Encoded(np.arange(20, dtype=np.int32), np.r_[np.zeros(14, bool), np.ones(6, bool)])
    cut = encode.fit(seq, 10)
    assert cut.ids.tolist() == [0, 11, 12, 13, 14, 15, 16, 17, 18, 19]  # BOS, end of prompt, response
    assert encode.fit(seq, 10, max_prompt=2).ids.tolist() == [0, 12, 13, 14, 15, 16, 17, 18, 19]
    assert encode.fit(seq, 4).ids.tolist() == [0, 14, 15, 16]  # no prompt left, response cut
    assert encode.fit(encode.Encoded(seq.ids, np.zeros(20, bool)), 30) is None


def test_packed_rows_and_exact_resume(tokenizer):
    config = Config(model=ModelConfig(vocab_size=160), data=DataConfig(seq_len=96, pad_id=150, mode="pack"),
                    train=TrainConfig(batch_size=4), mesh=MeshConfig(1, 1, 1),
                    finetune=FinetuneConfig(format="chat"))
    data = FinetuneData({"train": chat_records()}, Encoder(tokenizer, template(tokenizer)))
    it = data(config, "train")
    first = next(it)
    assert {k: (v.dtype, v.shape) for k, v in first.items()} == {
        k: (np.dtype(t), (4, 96)) for k, t in BATCH_FIELDS.items()}
    assert first["segment_ids"].max() > 1  # several exchanges share a row
    assert ((first["loss_mask"] > 0) <= (first["segment_ids"] > 0)).all()  # never on padding
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    again = data(config, "train")
    again.set_state(state)
    for want in expected:
        got = next(again)
        for key in BATCH_FIELDS:
            np.testing.assert_array_equal(got[key], want[key])


def test_preference_rows_hold_one_pair(tokenizer):
    config = Config(model=ModelConfig(vocab_size=160), data=DataConfig(seq_len=64, pad_id=150),
                    train=TrainConfig(batch_size=2), mesh=MeshConfig(1, 1, 1),
                    finetune=FinetuneConfig(method="dpo", format="preference"))
    pairs = [records.preference(r, "x") for r in preference_records()]
    data = FinetuneData({"train": pairs}, Encoder(tokenizer, template(tokenizer)))
    batch = next(data(config, "train"))
    for r in range(2):
        seg, mask = batch["segment_ids"][r], batch["loss_mask"][r] > 0
        assert set(seg[mask].tolist()) == {1, 2}
        chosen = tokenizer.decode(batch["targets"][r][mask & (seg == 1)])
        rejected = tokenizer.decode(batch["targets"][r][mask & (seg == 2)])
        assert chosen != rejected
        assert any(chosen.startswith(p["chosen"]["content"]) for p in pairs)
