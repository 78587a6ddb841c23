"""Cross-entropy and z-loss sums against a NumPy log-softmax; the chunked loss against the plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elm_jax.train.loss import chunk_count, chunked_objective, loss_sums


def test_loss_sums_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (2, 5))
    mask = (rng.random((2, 5)) > 0.3).astype(np.float32)
    sums = loss_sums(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), jnp.asarray(targets),
                     jnp.asarray(mask))
    x = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), np.float64)
    log_z = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    nll = log_z - np.take_along_axis(x, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums.cross_entropy), (nll * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums.z_loss), (log_z ** 2 * mask).sum(), rtol=1e-5)
    assert float(sums.tokens) == mask.sum()
    objective = float(sums.objective(1e-4))
    np.testing.assert_allclose(objective, ((nll + 1e-4 * log_z ** 2) * mask).sum() / mask.sum(),
                               rtol=1e-5)


def test_fully_masked_batch_gives_zero_not_nan():
    sums = loss_sums(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3)))
    assert float(sums.objective(1e-4)) == 0.0


def _reference(hidden, embedding, targets, mask, z_weight):
    """Objective sum and its gradients in float64 NumPy, written out by hand."""
    h, w = np.asarray(hidden, np.float64), np.asarray(embedding, np.float64)
    logits = h @ w.T
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    objective = ((nll + z_weight * log_z ** 2) * mask).sum()
    probs = np.exp(logits - log_z[..., None])
    onehot = np.eye(w.shape[0])[targets]
    d_logits = (probs * (1 + 2 * z_weight * log_z)[..., None] - onehot) * mask[..., None]
    return objective, (nll * mask).sum(), (log_z ** 2 * mask).sum(), d_logits @ w, \
        np.einsum("bsv,bsd->vd", d_logits, h)


def _plain(hidden, embedding, targets, mask, z_weight):
    """The unchunked loss through optax and autodiff: whole float32 logits."""
    logits = jnp.einsum("bsd,vd->bsv", hidden, embedding)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum((ce + z_weight * jnp.square(jax.nn.logsumexp(logits, -1))) * mask)


@pytest.mark.parametrize("chunk", [0, 4, 5, 12])
def test_chunked_objective_equals_plain_loss_and_gradients(chunk):
    rng = np.random.default_rng(1)
    b, s, d, vocab, z_weight = 2, 12, 8, 37, 0.1  # a large z weight, so its gradient matters
    hidden = rng.standard_normal((b, s, d)).astype(np.float32)
    embedding = rng.standard_normal((vocab, d)).astype(np.float32)
    targets = rng.integers(0, vocab, (b, s))
    mask = (rng.random((b, s)) > 0.3).astype(np.float32)

    def chunked(h, w):
        return chunked_objective(h, w, jnp.asarray(targets), jnp.asarray(mask),
                                 z_loss_weight=z_weight, chunk=chunk)

    (objective, sums), grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(
        jnp.asarray(hidden), jnp.asarray(embedding))
    plain, plain_grads = jax.value_and_grad(_plain, argnums=(0, 1))(
        jnp.asarray(hidden), jnp.asarray(embedding), jnp.asarray(targets), jnp.asarray(mask),
        z_weight)
    ref_objective, ref_ce, ref_z, ref_dh, ref_dw = _reference(hidden, embedding, targets, mask,
                                                              z_weight)
    np.testing.assert_allclose(float(objective), float(plain), rtol=1e-6)
    np.testing.assert_allclose(float(objective), ref_objective, rtol=1e-6)
    np.testing.assert_allclose(float(sums.cross_entropy), ref_ce, rtol=1e-6)
    np.testing.assert_allclose(float(sums.z_loss), ref_z, rtol=1e-6)
    assert float(sums.tokens) == mask.sum()
    for got, plain_grad, ref in zip(grads, plain_grads, (ref_dh, ref_dw)):
        scale = np.abs(ref).max()
        np.testing.assert_allclose(np.asarray(got), np.asarray(plain_grad), rtol=1e-6,
                                   atol=1e-6 * scale)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-6 * scale)
    # Without differentiation (evaluation) the same sums come from the forward alone.
    _, eval_sums = jax.jit(chunked)(jnp.asarray(hidden), jnp.asarray(embedding))
    np.testing.assert_allclose(float(eval_sums.cross_entropy), ref_ce, rtol=1e-6)


def _shapes(jaxpr) -> set[tuple[int, ...]]:
    """Shapes of every value in a jaxpr and the jaxprs nested in it (loop bodies, custom rules)."""
    found = set()
    for eqn in jaxpr.eqns:
        for var in (*eqn.invars, *eqn.outvars):
            found.add(tuple(getattr(var.aval, "shape", ())))
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (list, tuple)) else (param,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found |= _shapes(inner)
    return found


def test_chunked_gradient_never_holds_whole_logits():
    b, s, d, vocab = 2, 64, 16, 101
    hidden = jnp.ones((b, s, d))
    embedding = jnp.ones((vocab, d))
    targets = jnp.zeros((b, s), jnp.int32)
    mask = jnp.ones((b, s))

    def objective(h, w, chunk):
        return chunked_objective(h, w, targets, mask, z_loss_weight=1e-4, chunk=chunk)[0]

    chunked = _shapes(jax.make_jaxpr(jax.grad(objective, argnums=(0, 1)), static_argnums=2)(
        hidden, embedding, 16).jaxpr)
    assert (b, 16, vocab) in chunked and (b, s, vocab) not in chunked
    whole = _shapes(jax.make_jaxpr(jax.grad(objective, argnums=(0, 1)), static_argnums=2)(
        hidden, embedding, 0).jaxpr)
    assert (b, s, vocab) in whole  # the check sees whole logits when they are there


def test_chunk_count_tiles_the_sequence():
    assert chunk_count(2048, 256) == 8
    assert chunk_count(12, 5) == 3  # 3 chunks of 4: the fewest equal chunks of at most 5
    assert chunk_count(7, 2) == 7
    assert chunk_count(128, 0) == chunk_count(128, 256) == 1


def test_the_steps_chunked_loss_sums_equal_whole_logits_in_value_and_gradient(tmp_path):
    """Through what the train step differentiates (the pretraining Objective's sums, accumulated
    over two microbatches by ``loss_and_grads``): ``train.loss_chunk`` changes nothing but memory."""
    from synthetic import FAST_COMPILE, make_row, replace_train, tiny_config

    from elm_jax.config import rules_from_config
    from elm_jax.parallel.mesh import single_device_mesh
    from elm_jax.train.step import loss_and_grads, pretraining

    base = replace_train(tiny_config(tmp_path), microbatches=2, z_loss=0.1)
    rows = [make_row(i, seq_len=16, vocab=64, seed=3) for i in range(8)]
    batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
    mesh = single_device_mesh()
    results = []
    for chunk in (0, 4):  # whole logits (the reference), then 4 chunks of 4 positions
        config = replace_train(base, loss_chunk=chunk)
        objective = pretraining(config, mesh, rules_from_config(config.mesh))
        params = objective.start({})[0]
        with jax.set_mesh(mesh):
            results.append(jax.jit(lambda p, b, o=objective, c=config: loss_and_grads(
                c, o, p, {}, b, mesh), compiler_options=FAST_COMPILE)(params, batch))
    ((whole, _), whole_grads), ((chunked, _), chunked_grads) = results
    for name in ("cross_entropy", "z_loss", "tokens"):
        np.testing.assert_allclose(float(getattr(chunked, name)), float(getattr(whole, name)),
                                   rtol=1e-6)
    for got, want in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(whole_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                                   atol=1e-6 * float(np.abs(want).max()))
