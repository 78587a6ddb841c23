"""Shared by the evaluation tests: a character tokenizer, a tiny HF model, a NumPy reference."""

import numpy as np
import numpy_openelm
from scipy.special import log_softmax

from elm_jax.convert.hf import load_hf


class CharTokenizer:
    """One token per character: id = code point - 29 (space is 3), newline 0, BOS 1, EOS 2.

    Tokenization is trivially hand-checkable, so expected log-likelihoods need no tokenizer.
    """

    bos_id, eos_id, vocab_size = 1, 2, 97

    def encode(self, text, *, bos=True, eos=True):
        ids = [0 if c == "\n" else ord(c) - 29 for c in text]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids):
        return "".join("\n" if i == 0 else chr(i + 29) for i in ids if i in range(3, 97) or i == 0)


def make_tiny_hf(path):
    """(model, hf_config, tensors) of a 3-layer model with random weights, written to ``path``."""
    import json

    from safetensors.numpy import save_file

    from elm_jax.config import ModelConfig
    from elm_jax.convert.hf import expected_shapes, hf_config

    cfg = ModelConfig(vocab_size=97, num_layers=3, model_dim=64, head_dim=16, num_gqa_groups=2,
                      qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 2.0), ffn_dim_divisor=32,
                      max_context_length=64)
    rng = np.random.default_rng(0)
    tensors = {name: (rng.standard_normal(shape) * 0.3 + (1.0 if len(shape) == 1 else 0.0))
               .astype(np.float32) for name, shape in expected_shapes(cfg).items()}
    config = hf_config(cfg)
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"), {"format": "pt"})
    _, model = load_hf(path)
    return model, config, tensors


def reference_logprob(tiny_hf, context, continuation):
    """Sum of log p(continuation) from the NumPy forward pass (float64)."""
    _, config, tensors = tiny_hf
    tokens = np.asarray([list(context) + list(continuation)])
    logp = log_softmax(numpy_openelm.forward(tensors, config, tokens[:, :-1]), axis=-1)[0]
    start = len(context) - 1
    return float(sum(logp[start + j, t] for j, t in enumerate(continuation)))
