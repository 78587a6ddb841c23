"""Held-out loss over pipeline-shaped batches against the NumPy forward pass."""

import math

import jax
import numpy as np
import numpy_openelm
import pytest
from scipy.special import log_softmax

from elm_jax.config import MeshConfig
from elm_jax.errors import UsageError
from elm_jax.eval.perplexity import evaluate_loss
from elm_jax.infer.loading import place
from elm_jax.parallel.mesh import make_mesh


def _batches(seed=0, count=2):
    """Pack-mode style rows: two documents per row, positions restart, padding at the end."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        tokens = rng.integers(0, 97, (4, 13))
        segments = np.array([[1] * 5 + [2] * 6 + [0] * 2] * 4, np.int32)
        positions = np.array([list(range(5)) + list(range(6)) + [0, 0]] * 4, np.int32)
        mask = (segments[:, :-1] > 0) & (segments[:, 1:] == segments[:, :-1])
        out.append({"inputs": tokens[:, :-1].astype(np.int32),
                    "targets": tokens[:, 1:].astype(np.int32),
                    "loss_mask": mask.astype(np.float32),
                    "segment_ids": segments[:, :-1], "positions": positions[:, :-1]})
    return out


def _reference(tiny_hf, batches):
    _, config, tensors = tiny_hf
    total, count = 0.0, 0.0
    for b in batches:
        logits = numpy_openelm.forward(tensors, config, b["inputs"], b["segment_ids"],
                                       b["positions"])
        logp = np.take_along_axis(log_softmax(logits, -1), b["targets"][..., None], -1)[..., 0]
        total -= float((logp * b["loss_mask"]).sum())
        count += float(b["loss_mask"].sum())
    return total / count, count


def test_loss_matches_numpy_over_packed_batches(tiny_hf):
    batches = _batches(count=3)
    result = evaluate_loss(tiny_hf[0], iter(batches), max_batches=2)
    loss, count = _reference(tiny_hf, batches[:2])
    assert result.batches == 2 and result.tokens == count
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-5)


def test_sharded_over_the_data_axes_gives_the_same_loss(tiny_hf):
    batches = _batches(seed=1)
    single = evaluate_loss(tiny_hf[0], batches)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh):
        sharded = evaluate_loss(place(tiny_hf[0], mesh), batches)
    assert sharded.loss == pytest.approx(single.loss, rel=1e-5)


def test_empty_or_malformed_input_is_refused(tiny_hf):
    with pytest.raises(ValueError, match="no target tokens"):
        evaluate_loss(tiny_hf[0], [])
    with pytest.raises(UsageError, match="loss_mask"):
        evaluate_loss(tiny_hf[0], [{"inputs": np.zeros((1, 4), np.int32),
                                    "targets": np.zeros((1, 4), np.int32)}])


def test_held_out_loss_reads_the_validation_split_from_its_start(tmp_path):
    from cli_helpers import tiny_run_config

    from elm_jax.data.pipeline import make_iterator
    from elm_jax.eval.perplexity import held_out_loss
    from elm_jax.model import build

    config = tiny_run_config(tmp_path)
    model = build(config.model, seed=0)
    first, again = held_out_loss(model, config), held_out_loss(model, config)
    assert first == again and first.batches == 2  # a fresh iterator each call
    direct = evaluate_loss(model, make_iterator(config, "validation"), max_batches=2)
    assert first.loss == pytest.approx(direct.loss, rel=1e-6) and first.tokens == direct.tokens
    whole = held_out_loss(model, config, max_batches=0)  # one pass over the split
    tokens = sum(int(b["loss_mask"].sum())
                 for b in make_iterator(config, "validation", num_epochs=1))
    assert whole.tokens == tokens
