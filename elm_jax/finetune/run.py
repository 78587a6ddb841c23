"""``elm-finetune``'s run: the base, the data and the objective, on elm-train's loop.

The loop gives the run everything ``elm-train`` has: checkpoints of what trains (with the data
stream), metrics and TensorBoard, evaluation, exact resume, SIGTERM, NaN handling, and at the end
``hf-step<N>/``, the merged model in HF layout. The run adds ``adapter-step<N>/`` (what it trained,
alone) and, for the Shakespeare demo, the held-out multiple-choice accuracy of the base and of the
tuned model, with the questions written to ``shakespeare_plays.jsonl`` for ``elm-eval``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax
from etils import epath
from flax import nnx

from elm_jax.config import Config
from elm_jax.data.prepare import prepare_shakespeare
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.errors import DataError
from elm_jax.eval.tasks import get_task
from elm_jax.eval.zeroshot import TaskResult, evaluate_questions
from elm_jax.finetune import records as records_lib
from elm_jax.finetune import shakespeare
from elm_jax.finetune.base import Base, load_params, loader, open_base, resolve, tokenizer_path
from elm_jax.finetune.chat import ChatTemplate, resolve_template
from elm_jax.finetune.data import FinetuneData, check_encodes
from elm_jax.finetune.encode import Encoder
from elm_jax.finetune.export import ADAPTER_CONFIG, ADAPTER_PREFIX, save_adapter
from elm_jax.finetune.objective import finetune_objective, layout, merged
from elm_jax.model import abstract_params
from elm_jax.parallel import mesh as mesh_lib
from elm_jax.storage import as_path, write_atomic
from elm_jax.train.loop import TrainResult, train
from elm_jax.train.step import graphdef

DEMO_TASK = "shakespeare_plays"


@dataclasses.dataclass
class FinetuneResult:
    config: Config  # as run: the base's model shapes
    train: TrainResult
    adapter_path: epath.Path | None = None
    before: TaskResult | None = None  # the demo's held-out accuracy of the base model
    after: TaskResult | None = None  # ... and of the tuned one


@dataclasses.dataclass
class Prepared:
    """A fine-tuning run's config (with the base's shapes), base, tokenizer, data and questions."""

    config: Config
    base: Base
    tokenizer: Tokenizer
    data: FinetuneData
    questions: list[dict[str, Any]]


def _template(config: Config, tokenizer: Tokenizer, base: Base) -> ChatTemplate | None:
    if config.finetune.format not in ("chat", "preference"):
        return None
    text = resolve_template(config.finetune.chat_template, [tokenizer.model_path.parent, base.path])
    return ChatTemplate(text, bos_token=tokenizer.id_to_piece(tokenizer.bos_id),
                        eos_token=tokenizer.id_to_piece(tokenizer.eos_id))


def prepare(config: Config) -> Prepared:
    """Everything but the model, checked before any array is allocated."""
    base = open_base(config.finetune.base)
    config = resolve(config, base)
    layout(config)  # bad targets, ranks or selections fail here
    ft = config.finetune
    tokenizer = Tokenizer(tokenizer_path(config, base), pad_id=config.data.pad_id)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise DataError(f"tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} pieces but "
                        f"the base model {config.model.vocab_size} embeddings; give the base's "
                        "tokenizer (--config.data.tokenizer)")
    questions: list[dict[str, Any]] = []
    if ft.format == DEMO_TASK:
        prepare_shakespeare(config.data.cache_dir)
        train_records, questions = shakespeare.demo_data(ft.questions, config.data.shuffle_seed,
                                                         config.data.cache_dir)
        splits = {"train": train_records, "validation": [shakespeare.as_record(q) for q in questions]}
    else:
        if not ft.train_file:
            raise DataError(f"finetune.train_file is empty; point it at the {ft.format} records")
        splits = {"train": records_lib.load(ft.train_file, ft.format)}
        if ft.validation_file:
            splits["validation"] = records_lib.load(ft.validation_file, ft.format)
        elif config.train.eval_batches:
            raise DataError("train.eval_batches > 0 needs finetune.validation_file; set one or "
                            "--config.train.eval_batches=0")
    data = FinetuneData(splits, Encoder(tokenizer, _template(config, tokenizer, base)))
    check_encodes(data, config)
    return Prepared(config, base, tokenizer, data, questions)


def accuracy(model_params: Any, prepared: Prepared, mesh: jax.sharding.Mesh) -> TaskResult:
    """Held-out multiple-choice accuracy of the model with ``model_params``."""
    task = get_task(DEMO_TASK)
    model = nnx.merge(graphdef(prepared.config), model_params)
    with jax.set_mesh(mesh):
        return evaluate_questions(model, prepared.tokenizer, DEMO_TASK,
                                  [task.build(q) for q in prepared.questions])


def finetune(config: Config, *, mesh: jax.sharding.Mesh | None = None,
             show_progress: bool | None = None, compiler_options: dict[str, Any] | None = None,
             log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune ``config`` in ``config.train.run_dir`` (resuming it if it has checkpoints)."""
    prepared = prepare(config)
    config = prepared.config
    mesh = mesh or mesh_lib.make_mesh(config.mesh)
    load_base = loader(prepared.base, config.model)
    before = None
    if prepared.questions:
        shardings = mesh_lib.param_shardings(abstract_params(config.model), mesh)
        before = accuracy(load_params(prepared.base, config.model, shardings), prepared, mesh)
        log(f"{DEMO_TASK} before fine-tuning: {before.line()}")
    result = train(config, make_iterator=prepared.data, tokenizer=prepared.tokenizer, mesh=mesh,
                   entropy_tokens=0, show_progress=show_progress, compiler_options=compiler_options,
                   objective=finetune_objective(load_base))
    out = FinetuneResult(config, result, before=before)
    if result.preempted or result.state is None:
        return out
    run_dir = as_path(config.train.run_dir)
    out.adapter_path = run_dir / f"{ADAPTER_PREFIX}{result.step}"
    if not (out.adapter_path / ADAPTER_CONFIG).exists():  # not yet saved by an earlier run
        save_adapter(out.adapter_path, config, result.state.params)
        log(f"saved what was trained to {out.adapter_path}")
    if prepared.questions:
        tuned = jax.jit(lambda p, f: merged(config, f["model"], p))(result.state.params,
                                                                      result.state.frozen)
        out.after = accuracy(tuned, prepared, mesh)
        log(f"{DEMO_TASK} after fine-tuning:  {out.after.line()}")
        write_atomic(run_dir / f"{DEMO_TASK}.jsonl", "".join(json.dumps(q) + "\n"
                                                            for q in prepared.questions))
    return out
