"""The training loop: restore -> steps -> eval -> save, until ``train.steps`` or SIGTERM.

The device runs ahead of the host: a step's metrics are fetched only at log, eval and save points,
so the next batch is read while the device computes. A run directory resumes exactly where its
newest complete checkpoint left off (parameters, optimizer, step and data stream).
"""

from __future__ import annotations

import dataclasses
import filecmp
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from elm_jax.config import Config
from elm_jax.model import flops_per_token
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.train import checkpoint as ckpt_lib
from elm_jax.train.metrics import MetricsWriter, Throughput, summarize, unigram_entropy
from elm_jax.train.step import (
    BATCH_FIELDS,
    TrainState,
    graphdef,
    make_eval_step,
    make_train_step,
    microbatch_note,
)

log = logging.getLogger(__name__)

IteratorFactory = Callable[..., Iterator[dict[str, np.ndarray]]]
ENTROPY_TOKENS = 1_000_000  # training tokens read to estimate the unigram entropy baseline


class TrainingError(RuntimeError):
    """The run cannot go on (NaN loss, exhausted data, a run directory of another model)."""


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


def _process_kwargs() -> dict[str, int]:
    return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def prepare_run_dir(config: Config, tokenizer_path: str | None) -> Path:
    """Create the run directory with ``config.json`` and ``tokenizer.model``; refuse one that holds
    a run of a different model or tokenizer (resuming it would mix two runs)."""
    run_dir = Path(config.train.run_dir)
    config_file = run_dir / ckpt_lib.CONFIG_FILE
    if config_file.exists():
        old = ckpt_lib.read_run_config(run_dir)
        if old.model != config.model:
            raise TrainingError(
                f"{run_dir} holds a run of a different model ({config_file} differs in its model "
                "section); choose a new --config.train.run_dir or restore the original config")
        if old.data != config.data:
            log.warning("%s: the data config differs from the run's; the resumed data stream will "
                        "not continue the original one", run_dir)
    if jax.process_index() != 0:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_path is not None:
        dest = run_dir / ckpt_lib.TOKENIZER_FILE
        if dest.exists() and not filecmp.cmp(dest, tokenizer_path, shallow=False):
            raise TrainingError(f"{dest} differs from the configured tokenizer {tokenizer_path}; "
                                "this run directory was trained with another tokenizer")
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(tokenizer_path, tmp)
            tmp.replace(dest)
    ckpt_lib.write_atomic(config_file, ckpt_lib.config_json(config))
    return run_dir


class Evaluator:
    """Held-out loss and perplexity over the first ``train.eval_batches`` validation batches (the
    same batches at every evaluation, read once and kept on the host)."""

    def __init__(self, config: Config, mesh: jax.sharding.Mesh, make_iterator: IteratorFactory,
                 compiler_options: dict[str, Any] | None = None):
        self.config, self.mesh, self._make_iterator = config, mesh, make_iterator
        self._step = make_eval_step(config, mesh, compiler_options=compiler_options)
        self._batches: list[dict[str, np.ndarray]] | None = None

    def batches(self) -> list[dict[str, np.ndarray]]:
        if self._batches is None:
            iterator = self._make_iterator(self.config, "validation", **_process_kwargs())
            self._batches = [batch for _, batch in zip(range(self.config.train.eval_batches), iterator)]
            if not self._batches:
                raise TrainingError("the validation split yielded no batch; check data.sources or "
                                    "set train.eval_batches=0")
        return self._batches

    def __call__(self, params: Any) -> dict[str, float]:
        sums = [self._step(params, mesh_lib.global_batch(b, self.mesh)) for b in self.batches()]
        ce, tokens = (sum(float(jax.device_get(getattr(s, k))) for s in sums)
                      for k in ("cross_entropy", "tokens"))
        loss = ce / max(tokens, 1.0)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0))}


def training_unigram_entropy(config: Config, make_iterator: IteratorFactory,
                             max_tokens: int = ENTROPY_TOKENS) -> float:
    """Entropy of the token frequencies in (up to ``max_tokens`` of) the training stream."""
    counts = np.zeros(config.model.vocab_size, np.int64)
    seen = 0
    for batch in make_iterator(config, "train", **_process_kwargs()):
        mask = np.asarray(batch["loss_mask"]) > 0
        counts += np.bincount(np.asarray(batch["targets"])[mask], minlength=counts.size)
        seen += int(mask.sum())
        if seen >= max_tokens:
            break
    return unigram_entropy(counts)


def _samples(config: Config, params: Any, evaluator: Evaluator, tokenizer: Any) -> list[str]:
    from elm_jax.train.sample import sample_tokens

    rows = np.concatenate([b["inputs"] for b in evaluator.batches()])[: config.train.sample_lines]
    prompt_len = min(8, config.data.seq_len // 4)
    tokens = sample_tokens(graphdef(config), params, [r[:prompt_len] for r in rows],
                           length=config.data.seq_len, new_tokens=48, seed=config.train.seed,
                           stop_ids=(config.data.eos_id, config.data.pad_id))
    decode = lambda ids: tokenizer.decode(ids.tolist())  # noqa: E731
    return [f"{decode(row[:prompt_len])} >> {decode(row[prompt_len:])}".replace("\n", " / ")
            for row in tokens]


def _export_hf(config: Config, params: Any, run_dir: Path, step: int) -> Path | None:
    from flax import nnx

    from elm_jax.convert.hf import save_hf

    path = run_dir / f"hf-step{step}"
    if jax.process_count() > 1:  # gather the shards so process 0 can write them
        params = jax.jit(lambda p: p, out_shardings=mesh_lib.replicated(
            jax.tree.leaves(params)[0].sharding.mesh))(params)
    if jax.process_index() != 0 or path.exists():
        return path if path.exists() else None
    return save_hf(config.model, nnx.merge(graphdef(config), params), path)


def _default_data(config: Config) -> tuple[IteratorFactory, Any]:
    from elm_jax.data.pipeline import make_iterator
    from elm_jax.data.prepare import ensure_prepared
    from elm_jax.data.tokenizer import load_tokenizer

    ensure_prepared(config)
    return make_iterator, load_tokenizer(config)


def train(config: Config, *, make_iterator: IteratorFactory | None = None, tokenizer: Any = None,
          mesh: jax.sharding.Mesh | None = None, export: bool = True,
          entropy_tokens: int = ENTROPY_TOKENS, show_progress: bool | None = None,
          compiler_options: dict[str, Any] | None = None) -> TrainResult:
    """Train ``config`` in ``config.train.run_dir``, resuming from its newest checkpoint.

    ``make_iterator(config, split, process_index=, process_count=)`` defaults to
    ``elm_jax.data.pipeline.make_iterator`` (which also supplies the tokenizer); tests pass their own.
    ``entropy_tokens`` training tokens are read first for the unigram-entropy baseline (0: skip).
    ``compiler_options`` go to XLA for the train and eval steps.
    """
    if make_iterator is None:
        make_iterator, tokenizer = _default_data(config)
    tcfg = config.train
    run_dir = prepare_run_dir(config, getattr(tokenizer, "model_path", None))
    mesh = mesh or mesh_lib.make_mesh(config.mesh)
    train_step = make_train_step(config, mesh, compiler_options=compiler_options)
    evaluator = Evaluator(config, mesh, make_iterator, compiler_options)
    checkpointer = ckpt_lib.Checkpointer(run_dir, config)
    train_iter = make_iterator(config, "train", **_process_kwargs())
    state = checkpointer.restore_latest(train_step.state_shapes, train_iter)
    step = 0 if state is None else int(jax.device_get(state.step))
    state = train_step.init() if state is None else state
    writer = MetricsWriter(run_dir, total_steps=tcfg.steps, start_step=step, show_progress=show_progress)
    say = writer.message
    say(f"{config.name}: mesh {dict(mesh.shape)} on {len(mesh.devices.flat)} "
        f"{jax.devices()[0].device_kind} device(s); run dir {run_dir}; "
        + (f"resumed at step {step}" if step else "starting from scratch"))
    say(microbatch_note(config, mesh))
    for note in mesh_lib.sharding_report(config.model, mesh, mesh_lib.rules_from_config(config.mesh)):
        say(f"sharding: {note}")
    result = TrainResult(step=step, preempted=False)
    if entropy_tokens > 0:
        result.unigram_entropy = training_unigram_entropy(config, make_iterator, entropy_tokens)
        say(f"unigram entropy of the training tokens: {result.unigram_entropy:.3f} nats")

    tokens_per_step = tcfg.batch_size * config.data.seq_len
    throughput = Throughput(tokens_per_step, flops_per_token(config.model, config.data.seq_len))
    pending: list[dict[str, jax.Array]] = []
    try:
        with ckpt_lib.PreemptionGuard() as guard:
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
                    say(f"step {step}: compiled and ran the first step in "
                        f"{throughput.measure()['step_time']:.1f} s")
                preempted = guard.reached(step, checkpointer)
                last = step == tcfg.steps or preempted
                do_eval = tcfg.eval_batches > 0 and (step % tcfg.eval_every == 0 or step == tcfg.steps)
                do_save = step % tcfg.save_every == 0 or last
                if pending and (step % tcfg.log_every == 0 or do_eval or do_save):
                    record = summarize(pending) | throughput.measure()
                    pending = []
                    _check_finite(config, state, record, say)
                    if do_eval:
                        record |= evaluator(state.params)
                        throughput.reset()  # eval time is not training throughput
                    result.train_loss = record["loss"]
                    result.val_loss = record.get("val_loss", result.val_loss)
                    writer.write(step, record)
                if do_save:
                    checkpointer.save(step, state, train_iter)
                if preempted:
                    checkpointer.wait()
                    say(f"preempted: saved the checkpoint of step {step} and stopped; rerun the same "
                        "command to resume")
                    return dataclasses.replace(result, step=step, preempted=True, state=state)
        checkpointer.wait()
        result.step, result.state = step, state
        if export:
            result.hf_path = _export_hf(config, state.params, run_dir, step)
            if result.hf_path is not None:
                say(f"exported HF weights to {result.hf_path}")
        if tokenizer is not None and tcfg.sample_lines > 0 and jax.process_count() == 1:
            result.samples = _samples(config, state.params, evaluator, tokenizer)
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
