"""An lm-eval-harness model backed by elm_jax (the optional ``lmeval`` extra).

    pip install "elm_jax[lmeval]"
    elm-eval --checkpoint runs/tiny --harness --tasks arc_easy

lm-eval-harness finds models only in its own registry and loads no plugins, so we drive it
ourselves, as levanter does: ``elm-eval --harness`` calls ``lm_eval.simple_evaluate`` with an
``ElmJaxLM``. Python users do the same (``simple_evaluate(model=ElmJaxLM(...), ...)``); importing
this module also registers ``model="elm_jax"`` in lm-eval's registry for that process.
Context / continuation splitting and empty contexts come from lm-eval's ``TemplateLM``, scoring
and generation from ``elm_jax.eval.scoring`` and ``elm_jax.infer``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import jax
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

from elm_jax.errors import UsageError
from elm_jax.eval.scoring import score
from elm_jax.eval.zeroshot import encode_text
from elm_jax.infer import generate
from elm_jax.infer.loading import inference_mesh, load_checkpoint, load_tokenizer
from elm_jax.model import OpenELM
from elm_jax.parallel import distributed


@register_model("elm_jax")
class ElmJaxLM(TemplateLM):
    """``model_args``: checkpoint (run or HF directory), tokenizer, add_bos_token (default True,
    as OpenELM's own evaluation), batch_size, max_length, max_gen_toks, dtype, cache_dtype, seed,
    tensor_parallel (devices splitting each layer; the rest split the batch). Opening a checkpoint
    joins a multi-process run first when the environment names one (``ELM_*``, SLURM, TPU VM).
    """

    def __init__(self, checkpoint: str | None = None, *, model: OpenELM | None = None,
                 tokenizer: Any = None, add_bos_token: bool = True, batch_size: int | str = 16,
                 max_length: int | None = None, max_gen_toks: int = 256, dtype: str | None = None,
                 cache_dtype: str | None = None, seed: int = 0, tensor_parallel: int = 1,
                 **unused: Any):
        super().__init__()
        self.mesh = None
        if model is None:
            if checkpoint is None:
                raise UsageError("elm_jax needs model_args checkpoint=RUN_DIR|HF_DIR")
            distributed.initialize()  # a multi-process run (ELM_* / SLURM / TPU VM), if any
            self.mesh = inference_mesh(int(tensor_parallel))
            loaded = load_checkpoint(checkpoint, dtype=dtype, mesh=self.mesh)
            model = loaded.model
            tokenizer = load_tokenizer(loaded, tokenizer)
        elif tokenizer is None or isinstance(tokenizer, str):
            raise UsageError("with model= pass the tokenizer object too")
        self.model, self.tokenizer = model, tokenizer
        self.add_bos_token = add_bos_token
        self.batch_size = 16 if batch_size == "auto" else int(batch_size)
        self._max_length = int(max_length or model.cfg.max_context_length)
        self.max_gen_toks, self.cache_dtype, self.seed = int(max_gen_toks), cache_dtype, seed

    def _on_mesh(self) -> contextlib.AbstractContextManager:
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
        bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        ids = [self.tokenizer.bos_id] * bool(bos) + encode_text(self.tokenizer, string)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        with self._on_mesh():
            scored = score(self.model, [(ctx, cont) for _, ctx, cont in requests],
                           batch_size=self.batch_size, max_length=self.max_length)
        answers = [(s.logprob, s.greedy) for s in scored]
        for (key, _, _), answer in zip(requests, answers):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood over disjoint windows of the model's context."""
        windows, owners = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            for window in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, *window))
                owners.append(index)
        scored = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owners, scored):
            totals[index] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Decode each context (batched by identical settings) and cut at the first stop string."""
        eos_text = self.tok_decode([self.eot_token_id])
        results: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: repr(requests[i].args[1]))
        for _, group in itertools.groupby(order, key=lambda i: repr(requests[i].args[1])):
            group = list(group)
            kwargs = normalize_gen_kwargs(dict(requests[group[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text or None)
            max_new = int(kwargs.pop("max_gen_toks"))
            sample = dict(temperature=float(kwargs.get("temperature", 0.0)),
                          top_k=int(kwargs.get("top_k") or 0),
                          top_p=float(kwargs.get("top_p") or 1.0))
            for first in range(0, len(group), self.batch_size):
                chunk = group[first:first + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0],
                                           left_truncate_len=self.max_length - max_new)
                           for i in chunk]
                key = jax.random.fold_in(jax.random.key(self.seed), first)
                with self._on_mesh():
                    out = jax.device_get(generate(self.model, prompts, max_new, key=key,
                                                  eos_id=self.eot_token_id,
                                                  cache_dtype=self.cache_dtype, **sample))
                for i, prompt, row in zip(chunk, prompts, out.tolist()):
                    new = row[len(prompt):len(prompt) + max_new]
                    if self.eot_token_id in new:
                        new = new[:new.index(self.eot_token_id)]
                    text = self.tok_decode(new)
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results

