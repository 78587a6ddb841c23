"""The pure, jitted train and eval steps, built for a mesh (a one-device mesh is still a mesh).

``make_train_step(config, mesh)`` returns a ``TrainStep``: the jitted function with explicit in/out
shardings and the state donated, plus the abstract state and batch (``ShapeDtypeStruct`` with
shardings). Nothing is allocated to build it, so ``step.lower().compile()`` is an ahead-of-time
compile of the real step for any mesh, e.g. a TPU topology on this CPU. ``step.init()`` creates the
state already sharded (``jax.jit(init, out_shardings=...)``); the whole model never sits on one
device.

Parameters are a pure nested dict (``nnx.to_pure_dict`` layout, the same as
``elm_jax.convert.hf``), turned back into the model inside the step with ``nnx.merge``. What is
trained and how is an ``Objective``: ``pretraining`` (elm-train's) by default; ``elm_jax.finetune``
builds others (adapters over a frozen base model, SFT, DPO) on the same step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from elm_jax.common_types import BATCH_AXES, BATCH_FIELDS, Rules
from elm_jax.config import Config, rules_from_config
from elm_jax.model import abstract_model, abstract_params, build
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.parallel import rules as rules_lib
from elm_jax.train.loss import LossSums, chunked_loss_sums, loss_sums
from elm_jax.train.optimizer import learning_rate_schedule, make_optimizer

Params = dict[str, Any]
Batch = Mapping[str, jax.Array]

# XLA options of every TPU compile of the train and eval steps. libtpu's "windowed einsum" rewrites
# each FSDP all-gather or reduce-scatter that feeds or follows a matmul into a loop of
# collective-permutes. In the 3B step on 16 v5p chips (16 sequences per chip per microbatch) those
# loops held every layer's weight-gradient inputs (activations and their gradients) until the end
# of the backward pass: 82.5 GiB of temporaries, against 13.6 GiB without them (elm-plan's buffer
# list, libtpu AOT compile); the compile also took twice as long and more host memory. Without them
# the all-gathers and reduce-scatters stay asynchronous, overlapped by XLA's scheduler.
TPU_COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                        "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def compiler_options_for(mesh: jax.sharding.Mesh,
                         options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``options`` over ``TPU_COMPILER_OPTIONS`` on a TPU mesh; unchanged elsewhere."""
    if mesh.devices.flat[0].platform != "tpu":
        return dict(options) if options else None
    return {**TPU_COMPILER_OPTIONS, **(options or {})}


class TrainState(NamedTuple):
    """Everything a step reads and writes (checkpointed whole but for ``frozen``)."""

    step: jax.Array  # int32: steps taken (updates applied + non-finite steps skipped)
    params: Params  # the trainable parameters
    opt_state: optax.OptState
    skipped: jax.Array  # int32: non-finite steps whose update was dropped
    first_nonfinite: jax.Array  # int32: the first step with a NaN / Inf loss or gradient, -1 if none
    # what the loss reads but never trains (a fine-tuning run's base model): not checkpointed, the
    # objective reads it again on resume; empty in pretraining
    frozen: Params = {}

    def checkpoint_items(self) -> tuple[Params, dict[str, Any]]:
        """``(params, train)``: what ``elm_jax.checkpoint.Checkpointer`` saves as two items."""
        return self.params, {"step": self.step, "opt_state": self.opt_state,
                             "skipped": self.skipped, "first_nonfinite": self.first_nonfinite}

    @classmethod
    def from_checkpoint_items(cls, params: Params, train: Mapping[str, Any]) -> TrainState:
        return cls(train["step"], params, train["opt_state"], train["skipped"],
                   train["first_nonfinite"])


def graphdef(config: Config) -> nnx.GraphDef:
    """The model's structure without parameters (merged with a params dict inside the step)."""
    return nnx.split(abstract_model(config.model))[0]


def _batch_shards(mesh: jax.sharding.Mesh) -> int:
    return rules_lib.axis_size(mesh, BATCH_AXES)


def microbatch_count(config: Config, mesh: jax.sharding.Mesh) -> int:
    """``train.microbatches`` resolved for ``mesh`` ("auto": from the devices on the batch axes)."""
    return config.train.microbatch_count(_batch_shards(mesh))


def microbatch_note(config: Config, mesh: jax.sharding.Mesh) -> str:
    """One line on how each step's batch is split (what ``elm-train`` prints at the start)."""
    count = microbatch_count(config, mesh)
    rows = config.train.batch_size // (_batch_shards(mesh) * count)
    note = (f"batch {config.train.batch_size} x {config.data.seq_len}: {count} microbatch(es) of "
            f"{rows} sequence(s) per device")
    if config.train.microbatches == "auto":
        note += (f" (train.microbatches=auto: at most {config.train.max_sequences_per_device} per "
                 "device)")
    return note


def forward_logits(gdef: nnx.GraphDef, params: Params, batch: Batch) -> jax.Array:
    """The model's logits on one (micro)batch under ``params``."""
    model = nnx.merge(gdef, params)
    return model(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"])


def forward_sums(config: Config, gdef: nnx.GraphDef, params: Params, batch: Batch) -> LossSums:
    """Loss sums of one (micro)batch under ``params``.

    With ``train.loss_chunk`` > 0 the logits exist one chunk of the sequence at a time
    (``chunked_loss_sums``: the float32 ``[batch, seq, vocab]`` logits and their gradient are never
    whole); 0 computes the whole logits, as a reference.
    """
    if config.train.loss_chunk <= 0:
        return loss_sums(forward_logits(gdef, params, batch), batch["targets"], batch["loss_mask"])
    model = nnx.merge(gdef, params)
    hidden = model.hidden_states(batch["inputs"], positions=batch["positions"],
                                 segment_ids=batch["segment_ids"])
    with jax.named_scope("loss"):
        return chunked_loss_sums(model.final_norm(hidden), model.output_embedding(),
                                 batch["targets"], batch["loss_mask"],
                                 z_loss_weight=config.train.z_loss, chunk=config.train.loss_chunk)


Sums = tuple[LossSums, dict[str, jax.Array]]


class Objective(NamedTuple):
    """What a step trains, from where, and the loss it minimises.

    ``sums(params, frozen, batch, key)`` returns the loss as sums (``LossSums``: its objective is
    ``(cross_entropy + z_loss weight * z_loss) / tokens``) and further metric sums, each reported
    divided by ``tokens``; ``key`` is None in evaluation. The state's ``params`` are the trainable
    parameters and alone get optimizer state; ``frozen`` is what the loss reads but never changes,
    rebuilt from ``load_base()`` on resume rather than checkpointed. ``start(base)`` gives the first
    ``(params, frozen)`` and ``model_params(params, frozen)`` the model's own parameter dict (what is
    exported and sampled).
    """

    params: Params  # ShapeDtypeStruct leaves
    param_shardings: Params
    frozen: Params
    frozen_shardings: Params
    load_base: Callable[[], Params]
    start: Callable[[Params], tuple[Params, Params]]
    sums: Callable[[Params, Params, Batch, jax.Array | None], Sums]
    model_params: Callable[[Params, Params], Params]


ObjectiveBuilder = Callable[[Config, jax.sharding.Mesh, Rules], Objective]


def pretraining(config: Config, mesh: jax.sharding.Mesh, rules: Rules) -> Objective:
    """elm-train's objective: next-token cross-entropy (+ z-loss) of all the model's parameters,
    freshly initialised."""
    gdef = graphdef(config)
    params_state = abstract_params(config.model)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            nnx.to_pure_dict(params_state))

    def start(base: Params) -> tuple[Params, Params]:
        del base
        return nnx.to_pure_dict(nnx.state(build(config.model, config.train.seed), nnx.Param)), {}

    return Objective(abstract, mesh_lib.param_shardings(params_state, mesh, rules), {}, {},
                     load_base=dict, start=start,
                     sums=lambda params, frozen, batch, key: (
                         forward_sums(config, gdef, params, batch), {}),
                     model_params=lambda params, frozen: params)


def _tree_where(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _opt_state_shardings(abstract_opt: Any, abstract_params: Params, param_shardings: Params,
                         mesh: jax.sharding.Mesh) -> Any:
    """Each optimizer-state leaf whose trailing dict path names a parameter of its shape takes that
    parameter's sharding (Adam's mu / nu); counts and other scalars are replicated."""
    def flat(tree: Params) -> dict[tuple, Any]:
        return {tuple(k.key for k in path): leaf
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    shapes, flat_shardings = flat(abstract_params), flat(param_shardings)

    def pick(path: tuple, leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        keys = []
        for entry in reversed(path):
            if not isinstance(entry, jax.tree_util.DictKey):
                break
            keys.insert(0, entry.key)
        keys = tuple(keys)
        if keys in shapes and shapes[keys].shape == leaf.shape:
            return flat_shardings[keys]
        return mesh_lib.replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def batch_shapes(config: Config, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch as abstract arrays sharded over the batch axes."""
    shape = (config.train.batch_size, config.data.seq_len)
    sharding = mesh_lib.batch_sharding(mesh)
    return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for name, dtype in BATCH_FIELDS.items()}


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _split_microbatches(batch: Batch, count: int, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """[B, ...] -> [count, B / count, ...] with microbatch j = rows j, count + j, 2 count + j, ...

    Rows are sharded contiguously over the batch axes, so this split keeps every microbatch spread
    over all devices and moves no data.
    """
    def split(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, BATCH_AXES, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return {name: split(x) for name, x in batch.items()}


def loss_and_grads(config: Config, objective: Objective, params: Params, frozen: Params,
                   batch: Batch, mesh: jax.sharding.Mesh, key: jax.Array | None = None
                   ) -> tuple[Sums, Params]:
    """Loss (and metric) sums and the gradient of the mean objective with respect to ``params``,
    accumulated over ``train.microbatches``.

    Each microbatch's gradients and the accumulator are pinned to the parameters' layout
    (``objective.param_shardings``), so gradients are reduce-scattered as they are made and never
    held whole.
    """
    z_weight = config.train.z_loss

    def grad_of_sums(p: Params, mb: Batch) -> tuple[Sums, Params]:
        def loss(q: Params) -> tuple[jax.Array, Sums]:
            sums, extra = objective.sums(q, frozen, mb, key)
            return sums.cross_entropy + z_weight * sums.z_loss, (sums, extra)

        (_, sums), grads = jax.value_and_grad(loss, has_aux=True)(p)
        grads = jax.lax.with_sharding_constraint(grads, objective.param_shardings)
        return sums, grads

    count = microbatch_count(config, mesh)
    if count == 1:
        sums, grads = grad_of_sums(params, batch)
    else:
        def accumulate(carry, mb):
            return jax.tree.map(jnp.add, carry, grad_of_sums(params, mb)), None

        microbatches = _split_microbatches(batch, count, mesh)
        shapes = jax.eval_shape(grad_of_sums, params, jax.tree.map(lambda x: x[0], microbatches))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
        zeros = (zeros[0], jax.lax.with_sharding_constraint(zeros[1], objective.param_shardings))
        (sums, grads), _ = jax.lax.scan(accumulate, zeros, microbatches)
    scale = 1.0 / jnp.maximum(sums[0].tokens, 1.0)
    return sums, jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, params)


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A jitted ``fn(state, batch) -> (state, metrics)`` and what it takes, abstractly.

    ``state_shapes`` / ``batch_shapes`` carry their shardings, so ``lower()`` compiles the real step
    ahead of time without allocating anything; ``init()`` makes the first state, already sharded.
    """

    fn: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]
    init_fn: Callable[[Params], TrainState]
    mesh: jax.sharding.Mesh
    state_shapes: TrainState
    batch_shapes: dict[str, jax.ShapeDtypeStruct]
    state_shardings: TrainState
    batch_shardings: dict[str, NamedSharding]
    objective: Objective
    frozen_fn: Callable[[Params], Params]
    model_params_fn: Callable[[Params, Params], Params]

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with jax.set_mesh(self.mesh):
            return self.fn(state, batch)

    def init(self) -> TrainState:
        with jax.set_mesh(self.mesh):
            return self.init_fn(self.objective.load_base())

    def resume(self, restored: TrainState) -> TrainState:
        """A state restored from a checkpoint, with its frozen part rebuilt (nothing to rebuild in
        pretraining)."""
        if not self.objective.frozen:
            return restored
        with jax.set_mesh(self.mesh):
            return restored._replace(frozen=self.frozen_fn(self.objective.load_base()))

    def model_params(self, state: TrainState) -> Params:
        """The model's own parameters that ``state`` describes (what is exported and sampled)."""
        with jax.set_mesh(self.mesh):
            return self.model_params_fn(state.params, state.frozen)

    def lower(self) -> jax.stages.Lowered:
        with jax.set_mesh(self.mesh):
            return self.fn.lower(self.state_shapes, self.batch_shapes)


def state_shardings(config: Config, mesh: jax.sharding.Mesh, rules: Rules | None = None,
                    objective: Objective | None = None) -> tuple[TrainState, TrainState]:
    """(abstract state, its shardings) for ``config`` on ``mesh``, without allocating.

    ``rules`` default to the config's (``mesh.rules`` over ``DEFAULT_RULES``), ``objective`` to
    ``pretraining``."""
    rules = rules_from_config(config.mesh) if rules is None else rules
    objective = objective or pretraining(config, mesh, rules)
    tx = make_optimizer(config.train)
    params, param_sh = objective.params, objective.param_shardings
    abstract_opt = jax.eval_shape(tx.init, params)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    abstract = TrainState(scalar, params, abstract_opt, scalar, scalar, objective.frozen)
    rep = mesh_lib.replicated(mesh)
    opt_sh = _opt_state_shardings(abstract_opt, params, param_sh, mesh)
    shardings = TrainState(rep, param_sh, opt_sh, rep, rep, objective.frozen_shardings)
    return abstract, shardings


def make_train_step(config: Config, mesh: jax.sharding.Mesh, *, donate: bool = True,
                    rules: Rules | None = None,
                    compiler_options: Mapping[str, Any] | None = None,
                    objective: ObjectiveBuilder = pretraining) -> TrainStep:
    """The train step of ``config`` for ``mesh`` (jitted, not yet compiled).

    ``compiler_options`` are XLA options for this step's compilation (e.g. TPU scheduler flags, or
    ``{"xla_backend_optimization_level": 0}`` for quick CPU compiles in tests), on top of
    ``TPU_COMPILER_OPTIONS`` on TPUs.
    """
    compiler_options = compiler_options_for(mesh, compiler_options)
    mesh_lib.check_batch_divides(mesh, config.train.batch_size, microbatch_count(config, mesh))
    rules = rules_from_config(config.mesh) if rules is None else rules
    tx = make_optimizer(config.train)
    schedule = learning_rate_schedule(config.train)
    task = objective(config, mesh, rules)
    abstract, shardings = state_shardings(config, mesh, rules, task)
    batches = batch_shapes(config, mesh)
    batch_sh = {name: b.sharding for name, b in batches.items()}
    rep = mesh_lib.replicated(mesh)

    def init(base: Params) -> TrainState:
        params, frozen = task.start(base)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(zero, params, tx.init(params), zero, zero - 1, frozen)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(jax.random.key(config.train.seed), state.step)  # e.g. dropout
        with rules_lib.use_rules(rules):  # the model's activation constraints read them
            (sums, extra), grads = loss_and_grads(config, task, state.params, state.frozen, batch,
                                                  mesh, key)
        grad_norm = optax.tree.norm(grads)
        loss = sums.objective(config.train.z_loss)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params, opt_state = _tree_where(finite, (params, opt_state), (state.params, state.opt_state))
        first_bad = jnp.where((state.first_nonfinite < 0) & ~finite, state.step, state.first_nonfinite)
        new_state = TrainState(state.step + 1, params, opt_state,
                               state.skipped + (~finite).astype(jnp.int32), first_bad, state.frozen)
        tokens = jnp.maximum(sums.tokens, 1.0)
        metrics = {"loss": sums.cross_entropy / tokens,
                   "z_loss": config.train.z_loss * sums.z_loss / tokens,
                   "grad_norm": grad_norm,
                   "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
                   "target_tokens": sums.tokens,
                   "nonfinite": (~finite).astype(jnp.int32)}
        return new_state, metrics | {name: value / tokens for name, value in extra.items()}

    jitted = jax.jit(train_step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, rep),
                     donate_argnums=(0,) if donate else (), compiler_options=compiler_options)
    # the loaded base is donated: the frozen part of the state takes its buffers over
    init_fn = jax.jit(init, out_shardings=shardings, donate_argnums=(0,),
                      compiler_options=compiler_options)
    frozen_fn = jax.jit(lambda base: task.start(base)[1], out_shardings=shardings.frozen,
                        donate_argnums=(0,), compiler_options=compiler_options)
    model_params_fn = jax.jit(task.model_params, compiler_options=compiler_options)
    return TrainStep(fn=jitted, init_fn=init_fn, mesh=mesh,
                     state_shapes=_with_shardings(abstract, shardings), batch_shapes=batches,
                     state_shardings=shardings, batch_shardings=batch_sh, objective=task,
                     frozen_fn=frozen_fn, model_params_fn=model_params_fn)


def make_eval_step(config: Config, mesh: jax.sharding.Mesh, *, batch_size: int | None = None,
                   rules: Rules | None = None,
                   compiler_options: Mapping[str, Any] | None = None,
                   objective: ObjectiveBuilder = pretraining
                   ) -> Callable[..., LossSums]:
    """Jitted ``fn(params, batch, frozen={}) -> LossSums`` for held-out loss and perplexity."""
    compiler_options = compiler_options_for(mesh, compiler_options)
    mesh_lib.check_batch_divides(mesh, batch_size or config.train.batch_size)
    rules = rules_from_config(config.mesh) if rules is None else rules
    task = objective(config, mesh, rules)
    batch_sh = {name: mesh_lib.batch_sharding(mesh) for name in BATCH_FIELDS}

    def sums(params: Params, batch: Batch, frozen: Params) -> LossSums:
        with rules_lib.use_rules(rules):
            return task.sums(params, frozen, batch, None)[0]

    jitted = jax.jit(sums, in_shardings=(task.param_shardings, batch_sh, task.frozen_shardings),
                     out_shardings=mesh_lib.replicated(mesh), compiler_options=compiler_options)

    def eval_step(params: Params, batch: Batch, frozen: Params | None = None) -> LossSums:
        with jax.set_mesh(mesh):
            return jitted(params, {name: batch[name] for name in BATCH_FIELDS},
                          {} if frozen is None else frozen)

    return eval_step
