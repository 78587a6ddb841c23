"""The training loop: restore -> steps -> eval -> save, until ``train.steps`` or SIGTERM.

The device runs ahead of the host: a step's metrics are fetched only at log, eval and save points,
so the next batch is read while the device computes. A run directory resumes exactly where its
newest complete checkpoint left off (parameters, optimizer, step and data stream).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils

from elm_jax import rundir
from elm_jax.checkpoint import Checkpointer
from elm_jax.common_types import BATCH_FIELDS
from elm_jax.config import Config, rules_from_config
from elm_jax.data.pipeline import make_iterator as pipeline_iterator
from elm_jax.data.prepare import ensure_prepared
from elm_jax.data.tokenizer import load_tokenizer
from elm_jax.errors import TrainingError
from elm_jax.model import abstract_params, flops_per_token
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.parallel.consensus import decided_by_process_0
from elm_jax.runlock import RunLock
from elm_jax.storage import as_path
from elm_jax.train.evaluate import Evaluator, IteratorFactory, process_kwargs, training_unigram_entropy
from elm_jax.train.metrics import MetricsWriter, Throughput, summarize
from elm_jax.train.preemption import PreemptionGuard
from elm_jax.train.preflight import check_run_dir_writable
from elm_jax.train.sample import sample_lines
from elm_jax.train.step import ObjectiveBuilder, TrainState, make_train_step, microbatch_note, pretraining

ENTROPY_TOKENS = 1_000_000  # training tokens read to estimate the unigram entropy baseline


@dataclasses.dataclass
class TrainResult:
    """What a finished (or preempted) run reports."""

    step: int
    preempted: bool
    train_loss: float | None = None
    val_loss: float | None = None
    unigram_entropy: float | None = None
    hf_path: Path | None = None
    samples: list[str] = dataclasses.field(default_factory=list)
    state: TrainState | None = None


def restore_state(checkpointer: Checkpointer, abstract: TrainState,
                  data_iterator: Any | None = None) -> TrainState | None:
    """The newest restorable ``TrainState`` on ``abstract``'s shardings (None: no checkpoint yet);
    ``data_iterator`` resumes where that checkpoint's stream stopped."""
    restored = checkpointer.restore_latest(*abstract.checkpoint_items(), data_iterator)
    return None if restored is None else TrainState.from_checkpoint_items(*restored)


def due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (log, eval, save) falls on ``step``: every ``every`` steps and at
    the last one."""
    return step % every == 0 or step == total


def train(config: Config, **kwargs: Any) -> TrainResult:
    """``_train`` holding the run directory's lock (process 0 holds it for all processes)."""
    check_run_dir_writable(config.train.run_dir)
    lock = RunLock(as_path(config.train.run_dir))
    decided_by_process_0(lock.acquire, TrainingError)
    try:
        return _train(config, **kwargs)
    finally:
        lock.release()


def _train(config: Config, *, make_iterator: IteratorFactory | None = None, tokenizer: Any = None,
           mesh: jax.sharding.Mesh | None = None, export: bool = True,
           entropy_tokens: int = ENTROPY_TOKENS, show_progress: bool | None = None,
           compiler_options: dict[str, Any] | None = None,
           objective: ObjectiveBuilder = pretraining) -> TrainResult:
    """Train ``config`` in ``config.train.run_dir``, resuming from its newest checkpoint.

    ``make_iterator(config, split, process_index=, process_count=)`` (this process's data shard,
    ``elm_jax.parallel.mesh.data_shard``) defaults to the data pipeline
    (which also supplies the tokenizer); tests pass their own. ``entropy_tokens`` training tokens
    are read first for the unigram-entropy baseline (0: skip). ``compiler_options`` go to XLA for
    the train and eval steps. ``objective`` says what is trained (``elm_jax.finetune`` passes its
    own: adapters over a frozen base, SFT or DPO).
    """
    if make_iterator is None:
        ensure_prepared(config)
        make_iterator, tokenizer = pipeline_iterator, load_tokenizer(config)
    tcfg = config.train
    tokenizer_path = getattr(tokenizer, "model_path", None)
    decided_by_process_0(lambda: rundir.check_run_dir(config, tokenizer_path), TrainingError)
    run_dir = as_path(tcfg.run_dir)
    rundir.clean_stale_exports(run_dir)
    mesh = mesh or mesh_lib.make_mesh(config.mesh)
    train_step = make_train_step(config, mesh, compiler_options=compiler_options, objective=objective)
    evaluator = Evaluator(config, mesh, make_iterator, compiler_options, objective)
    if tcfg.eval_batches or (tokenizer is not None and tcfg.sample_lines):
        evaluator.batches()  # read the held-out rows now: an unusable split fails before any step
    checkpointer = Checkpointer(run_dir, config)
    train_iter = make_iterator(config, "train", **process_kwargs(mesh))
    restored = restore_state(checkpointer, train_step.state_shapes, train_iter)
    state = train_step.init() if restored is None else train_step.resume(restored)
    step = 0 if restored is None else int(jax.device_get(state.step))
    writer = MetricsWriter(run_dir, total_steps=tcfg.steps, start_step=step, show_progress=show_progress)
    say = writer.message
    say(f"{config.name}: mesh {dict(mesh.shape)} on {len(mesh.devices.flat)} "
        f"{jax.devices()[0].device_kind} device(s); run dir {run_dir}; "
        + (f"resumed at step {step}" if step else "starting from scratch"))
    say(microbatch_note(config, mesh))
    for note in mesh_lib.sharding_report(config.model, abstract_params(config.model), mesh,
                                         rules_from_config(config.mesh)):
        say(f"sharding: {note}")
    result = TrainResult(step=step, preempted=False)
    if entropy_tokens > 0:
        result.unigram_entropy = training_unigram_entropy(config, make_iterator, entropy_tokens,
                                                         mesh)
        say(f"unigram entropy of the training tokens: {result.unigram_entropy:.3f} nats")

    throughput = Throughput(tcfg.batch_size * config.data.seq_len,
                            flops_per_token(config.model, config.data.seq_len))
    pending: list[dict[str, jax.Array]] = []
    try:
        with PreemptionGuard() as guard:
            while step < tcfg.steps:
                try:
                    batch = next(train_iter)
                except StopIteration:
                    raise TrainingError(f"the training data ran out after {step} steps; add data or "
                                    "lower train.steps") from None
                state, metrics = train_step(state, mesh_lib.global_batch(
                    {k: batch[k] for k in BATCH_FIELDS}, mesh))
                step += 1
                pending.append(metrics)
                throughput.step()
                writer.advance()
                if step == result.step + 1:  # the first step of this process compiled the step
                    jax.block_until_ready(metrics)
                    rundir.record_identity(config, tokenizer_path)  # the run has started
                    say(f"step {step}: compiled and ran the first step in "
                        f"{throughput.measure()['step_time']:.1f} s")
                preempted = guard.reached(step, checkpointer)
                do_eval = tcfg.eval_batches > 0 and due(step, tcfg.eval_every, tcfg.steps)
                do_save = due(step, tcfg.save_every, tcfg.steps) or preempted
                if pending and (due(step, tcfg.log_every, tcfg.steps) or do_eval or do_save):
                    record = summarize(pending) | throughput.measure()
                    pending = []
                    _check_finite(config, state, record, say)
                    if do_eval:
                        record |= evaluator(state.params, state.frozen)
                        throughput.reset()  # eval time is not training throughput
                    result.train_loss = record["loss"]
                    result.val_loss = record.get("val_loss", result.val_loss)
                    writer.write(step, record)
                if do_save:
                    checkpointer.save(step, *state.checkpoint_items(), train_iter)
                if preempted:
                    checkpointer.wait()
                    say(f"preempted: saved the checkpoint of step {step} and stopped; rerun the same "
                        "command to resume")
                    return dataclasses.replace(result, step=step, preempted=True, state=state)
        checkpointer.wait()
        result.step, result.state = step, state
        if export:
            result.hf_path = rundir.export_hf(config, train_step.model_params(state), run_dir, step)
            if result.hf_path is not None:
                say(f"exported HF weights to {result.hf_path}")
            if jax.process_count() > 1:  # nobody exits while process 0 still writes the export
                multihost_utils.sync_global_devices("elm_jax: HF export written")
        if tokenizer is not None and tcfg.sample_lines > 0 and jax.process_count() == 1:
            rows = [row for b in evaluator.batches() for row in b["inputs"]][:tcfg.sample_lines]
            result.samples = sample_lines(config, train_step.model_params(state), rows, tokenizer,
                                          mesh)
            for text in result.samples:
                say(f"sample: {text}")
        return result
    finally:
        writer.close()
        checkpointer.close()


def _check_finite(config: Config, state: TrainState, record: dict[str, Any], say) -> None:
    """NaN / Inf: stop naming the step (the bad update was never applied, and nothing after it is
    saved), or with ``train.nonfinite='skip'`` report the skipped steps and go on."""
    if not record.get("nonfinite"):
        return
    first = int(jax.device_get(state.first_nonfinite)) + 1
    if config.train.nonfinite == "stop":
        raise TrainingError(
            f"the loss or gradient became NaN/Inf at step {first}; stopped without saving, so the "
            f"newest checkpoint in {config.train.run_dir} is the last good state. Lower "
            "train.peak_lr, or set train.nonfinite='skip' to drop such steps")
    say(f"warning: skipped {int(record['nonfinite'])} step(s) with a NaN/Inf loss since the last log "
        f"(first ever at step {first}, {int(jax.device_get(state.skipped))} in total)")
