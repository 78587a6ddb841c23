"""Typed, frozen, validated view of an experiment's ``ml_collections.ConfigDict``.

Every impossible value is caught here, before any array is allocated, with one message that names
the field and what it may be. Experiment files in ``experiments/`` start from ``default_config()``
and override what differs. Pure Python (numpy for the layer-wise scaling arithmetic): configs are
built and validated on machines without jax.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

from elm_jax.common_types import (
    ADAPTERS,
    ATTENTION_IMPLS,
    AXES,
    DATA_SPLITS,
    DEFAULT_RULES,
    DISTRIBUTED_MODES,
    DPO_LOSSES,
    DTYPES,
    FILE_ID,
    FINETUNE_FORMATS,
    FINETUNE_METHODS,
    NONFINITE_POLICIES,
    REMAT_POLICIES,
    SEQUENCE_MODES,
    SOURCE_COMMON_KEYS,
    SOURCE_KEYS,
    SOURCE_KINDS,
    TEXT_UNITS,
    Rules,
)
from elm_jax.errors import ConfigError
from elm_jax.scaling import LayerShape, layer_shapes


def _fail(field: str, value: Any, expected: str) -> typing.NoReturn:
    raise ConfigError(f"config field '{field}' = {value!r} is invalid: expected {expected}")


def _positive(field: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        _fail(field, value, "a non-negative number" if allow_zero else "a positive number")


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(field, value, f"one of {', '.join(allowed)}")


def check_source(index: int, src: Mapping[str, Any]) -> None:
    """Validate one ``data.sources`` entry's keys against ``SOURCE_KEYS`` (touches no file)."""
    kind = src.get("kind")
    where = f"data.sources[{index}]"
    if kind not in SOURCE_KEYS:
        return  # the kind itself is reported by DataConfig.validate
    allowed, required = SOURCE_KEYS[kind]
    unknown = sorted(set(src) - SOURCE_COMMON_KEYS - allowed)
    if unknown:
        raise ConfigError(f"{where} ({kind}) has unknown key(s) {unknown}; allowed: "
                          f"{sorted(SOURCE_COMMON_KEYS | allowed)}")
    for key in required:
        if not src.get(key):
            raise ConfigError(f"{where} ({kind}) needs '{key}'")
    if kind == "text" and src.get("unit", "line") not in TEXT_UNITS:
        raise ConfigError(f"{where}.unit = {src['unit']!r} is invalid: expected one of {TEXT_UNITS}")
    if "field" in src and src["field"] is not None and not isinstance(src["field"], str):
        raise ConfigError(f"{where}.field = {src['field']!r} is invalid: expected a field name")
    if "file_ids" in allowed:
        _check_file_ids(where, src)


def _check_file_ids(where: str, src: Mapping[str, Any]) -> None:
    """``file_ids`` is a [start, stop) pair, given exactly when a path has a {file_id} template."""
    ids = src.get("file_ids")
    specs = [s for split in DATA_SPLITS for s in ([src.get(split)] if isinstance(src.get(split), str)
                                                  else list(src.get(split) or ()))]
    templated = any(FILE_ID in str(s) for s in specs)
    if ids is None:
        if templated:
            raise ConfigError(f"{where} has a {{file_id}} path but no 'file_ids': [start, stop]")
        return
    if (not isinstance(ids, (list, tuple)) or len(ids) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            or not 0 <= ids[0] < ids[1]):
        raise ConfigError(f"{where}.file_ids = {ids!r} is invalid: expected [start, stop] with "
                          "0 <= start < stop")
    if not templated:
        raise ConfigError(f"{where}.file_ids is set but no path has a {{file_id}} template")


def parse_rules(text: str) -> dict[str, tuple[str, ...] | None]:
    """``"activation_embed=tensor,mlp=fsdp+tensor,vocab="`` -> overrides (empty = replicated).

    Raises ``ValueError`` naming the bad entry; ``MeshConfig.validate`` makes it a ``ConfigError``.
    """
    overrides: dict[str, tuple[str, ...] | None] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, axes_text = entry.partition("=")
        name = name.strip()
        if not sep or name not in DEFAULT_RULES:
            raise ValueError(f"{entry!r} is not name=axes with a known logical axis name "
                             f"({', '.join(DEFAULT_RULES)})")
        axes = tuple(a.strip() for a in axes_text.split("+") if a.strip())
        unknown = [a for a in axes if a not in AXES]
        if unknown or len(set(axes)) != len(axes):
            raise ValueError(f"{entry!r}: mesh axes must be distinct names among {', '.join(AXES)} "
                             "joined by '+' (or nothing, for replicated)")
        overrides[name] = axes or None
    return overrides


def rules_from_config(mesh_config: MeshConfig) -> Rules:
    """``DEFAULT_RULES`` with the config's ``mesh.rules`` overrides applied."""
    return {**DEFAULT_RULES, **parse_rules(mesh_config.rules)}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of one OpenELM model (fields named as in the paper and HF configs)."""

    vocab_size: int = 32128  # CoreNet training vocab; released checkpoints use 32000
    model_dim: int = 1280
    num_layers: int = 16
    head_dim: int = 64
    num_gqa_groups: int = 4
    qkv_multipliers: tuple[float, ...] = (0.5, 1.0)
    ffn_multipliers: tuple[float, ...] = (0.5, 4.0)
    ffn_dim_divisor: int = 256
    num_query_heads: tuple[int, ...] | None = None
    num_kv_heads: tuple[int, ...] | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_length: int = 4096
    max_context_length: int = 2048
    tie_embeddings: bool = True
    param_dtype: str = "float32"
    dtype: str = "float32"
    attention_impl: str = "auto"
    # Run the Pallas attention kernels in the Pallas interpreter (any platform, numerics only,
    # slow): lets attention_impl="pallas" be tested on CPU. Ignored by "xla" and "cudnn".
    attention_interpret: bool = False
    remat_policy: str = "none"
    remat_layers: tuple[int, ...] | None = None  # None = every layer gets remat_policy

    def validate(self) -> None:
        for name in ("vocab_size", "model_dim", "num_layers", "head_dim", "num_gqa_groups",
                     "ffn_dim_divisor", "rope_max_length", "max_context_length"):
            _positive(f"model.{name}", getattr(self, name))
        _positive("model.norm_eps", self.norm_eps)
        _positive("model.rope_theta", self.rope_theta)
        if self.head_dim % 2:
            _fail("model.head_dim", self.head_dim, "an even number (RoPE rotates pairs)")
        for name in ("qkv_multipliers", "ffn_multipliers"):
            mults = getattr(self, name)
            if len(mults) not in (1, 2, self.num_layers) or any(m <= 0 for m in mults):
                _fail(f"model.{name}", mults,
                      f"positive (first, last) multipliers or {self.num_layers} per-layer values")
        if not self.tie_embeddings:
            _fail("model.tie_embeddings", False, "True (OpenELM ties input and output embeddings)")
        _choice("model.param_dtype", self.param_dtype, DTYPES)
        _choice("model.dtype", self.dtype, DTYPES)
        _choice("model.attention_impl", self.attention_impl, ATTENTION_IMPLS)
        if not isinstance(self.attention_interpret, bool):
            _fail("model.attention_interpret", self.attention_interpret, "True or False")
        _choice("model.remat_policy", self.remat_policy, REMAT_POLICIES)
        if self.remat_layers is not None and any(
            not 0 <= i < self.num_layers for i in self.remat_layers
        ):
            _fail("model.remat_layers", self.remat_layers, f"layer indices in [0, {self.num_layers})")
        for name in ("num_query_heads", "num_kv_heads"):
            heads = getattr(self, name)
            if heads is not None and (len(heads) != self.num_layers or min(heads) <= 0):
                _fail(f"model.{name}", heads, f"{self.num_layers} positive per-layer head counts")
        if self.num_kv_heads is not None and self.num_query_heads is None:
            _fail("model.num_kv_heads", self.num_kv_heads, "None unless num_query_heads is set too")
        for i, shape in enumerate(self.layer_shapes()):
            if shape.kv_heads <= 0 or shape.q_heads % shape.kv_heads:
                raise ConfigError(
                    f"layer {i}: {shape.q_heads} query heads are not divisible by "
                    f"{shape.kv_heads} kv heads; fix model.num_gqa_groups or the per-layer "
                    "num_query_heads / num_kv_heads lists"
                )

    def layer_shapes(self) -> tuple[LayerShape, ...]:
        """Per-layer (q_heads, kv_heads, ffn_dim), see ``elm_jax.scaling``."""
        return layer_shapes(
            num_layers=self.num_layers, model_dim=self.model_dim, head_dim=self.head_dim,
            num_gqa_groups=self.num_gqa_groups, qkv_multipliers=self.qkv_multipliers,
            ffn_multipliers=self.ffn_multipliers, ffn_dim_divisor=self.ffn_dim_divisor,
            num_query_heads=self.num_query_heads, num_kv_heads=self.num_kv_heads,
        )

    def remat_for_layer(self, index: int) -> str:
        """The remat policy of layer ``index`` (``"none"`` outside ``remat_layers``)."""
        if self.remat_layers is None or index in self.remat_layers:
            return self.remat_policy
        return "none"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where tokens come from and how documents become rows (docs/OPENELM.md, "Pretraining")."""

    sources: tuple[Mapping[str, Any], ...] = ({"kind": "shakespeare", "weight": 1.0},)
    tokenizer: str = "shakespeare"  # path to a SentencePiece model, or "shakespeare"
    tokenizer_vocab_size: int = 8000
    seq_len: int = 2048
    mode: str = "pad"
    words_per_piece: int = 2048
    min_chars: int = 200
    min_tokens: int = 256
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 32000
    shuffle_seed: int = 0
    num_workers: int = 0
    tokenizer_threads: int = 1
    cache_dir: str | None = None  # None: $ELM_JAX_CACHE or $XDG_CACHE_HOME/elm_jax
    data_root: str = ""  # relative source paths are taken from here ("": the working directory)
    nfc_normalize: bool = False  # Unicode NFC before the character filter and tokenization (CoreNet)

    def validate(self) -> None:
        if not self.sources:
            _fail("data.sources", self.sources, "at least one source")
        for i, src in enumerate(self.sources):
            kind = src.get("kind")
            _choice(f"data.sources[{i}].kind", kind, SOURCE_KINDS)
            if float(src.get("weight", 1.0)) <= 0:
                _fail(f"data.sources[{i}].weight", src.get("weight"), "a positive mixture weight")
            check_source(i, src)
        for name in ("seq_len", "words_per_piece", "tokenizer_vocab_size", "tokenizer_threads"):
            _positive(f"data.{name}", getattr(self, name))
        for name in ("min_chars", "min_tokens", "num_workers", "shuffle_seed", "bos_id",
                     "eos_id", "pad_id"):
            _positive(f"data.{name}", getattr(self, name), allow_zero=True)
        _choice("data.mode", self.mode, SEQUENCE_MODES)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, loss and loop settings (the paper's recipe by default)."""

    steps: int = 350_000
    batch_size: int = 2048  # global, in sequences
    # Gradient accumulation: a count, or "auto": the fewest microbatches that keep every device at
    # or under max_sequences_per_device sequences per microbatch (resolved for the mesh).
    microbatches: int | str = 1
    max_sequences_per_device: int = 16  # the paper's recipe: 16 sequences per GPU
    loss_chunk: int = 256  # sequence positions whose logits exist at once (0: the whole batch)
    peak_lr: float = 5.3e-3
    min_lr_ratio: float = 0.1
    warmup_init_lr: float = 1e-6
    warmup_steps: int = 5000
    cosine_period: int = 345_001
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    z_loss: float = 1e-4
    seed: int = 0
    log_every: int = 100
    eval_every: int = 5000
    eval_batches: int = 8
    nonfinite: str = "stop"
    run_dir: str = "runs/default"
    save_every: int = 1000
    keep_checkpoints: int = 3
    keep_every: int = 0  # 0: no permanent checkpoints
    sample_lines: int = 3
    # Resume with the data stream from its beginning instead of the checkpoint's position (e.g.
    # when a step's data-iterator state is lost); a checkpoint without it is otherwise skipped.
    restart_data_stream: bool = False

    def validate(self) -> None:
        for name in ("steps", "batch_size", "peak_lr", "cosine_period", "log_every", "eval_every",
                     "save_every", "keep_checkpoints", "max_sequences_per_device"):
            _positive(f"train.{name}", getattr(self, name))
        for name in ("warmup_steps", "weight_decay", "grad_clip", "z_loss", "eval_batches",
                     "keep_every", "sample_lines", "warmup_init_lr", "seed", "loss_chunk"):
            _positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if self.microbatches != "auto" and (not isinstance(self.microbatches, int)
                                            or self.microbatches < 1):
            _fail("train.microbatches", self.microbatches, 'a positive integer or "auto"')
        if not 0 <= self.min_lr_ratio <= 1:
            _fail("train.min_lr_ratio", self.min_lr_ratio, "a fraction in [0, 1]")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                _fail(f"train.{name}", getattr(self, name), "a value in [0, 1)")
        if self.microbatches != "auto" and self.batch_size % self.microbatches:
            _fail("train.microbatches", self.microbatches,
                  f"a divisor of train.batch_size={self.batch_size}")
        _choice("train.nonfinite", self.nonfinite, NONFINITE_POLICIES)

    def microbatch_count(self, batch_shards: int) -> int:
        """``microbatches`` for a mesh whose data x fsdp axes hold ``batch_shards`` devices: the
        number given, or for "auto" the smallest count that divides the global batch into
        microbatches splitting evenly over the devices with at most ``max_sequences_per_device``
        sequences on each."""
        if self.microbatches != "auto":
            return int(self.microbatches)
        if self.batch_size % batch_shards:
            raise ConfigError(
                f"train.batch_size={self.batch_size} does not split over the {batch_shards} devices "
                "of the mesh's data x fsdp axes; make it a multiple of them")
        per_device = self.batch_size // batch_shards
        count = -(-per_device // self.max_sequences_per_device)
        while per_device % count:
            count += 1
        return count


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; one axis may be -1 (all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # overrides of the logical-axis rules (elm_jax.parallel.rules), e.g.
    # "activation_embed=tensor,mlp=fsdp+tensor" ("name=" replicates that dimension)
    rules: str = ""

    def validate(self) -> None:
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
            _fail("mesh", dict(data=self.data, fsdp=self.fsdp, tensor=self.tensor),
                  "positive axis sizes with at most one -1 (= the remaining devices)")
        try:
            parse_rules(self.rules)
        except ValueError as err:
            raise ConfigError(f"mesh.rules: {err}") from None


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-host run (``elm_jax.parallel.distributed.initialize``).

    Empty values (``""``, ``0``, ``-1``, ``()``) mean "take it from the environment": the
    ``ELM_*`` variables, SLURM, or the TPU VM. Launchers set the environment, so the experiment
    file rarely names these; ``--config.distributed.x=y`` overrides them for one run.
    """

    mode: str = "auto"  # auto: explicit values, else SLURM, else TPU VM, else single process
    coordinator_address: str = ""  # host:port of process 0
    num_processes: int = 0
    process_id: int = -1
    local_device_ids: tuple[int, ...] = ()  # (): jax's default for the cluster
    initialization_timeout: int = 300  # seconds to wait for every process to join

    def validate(self) -> None:
        _choice("distributed.mode", self.mode, DISTRIBUTED_MODES)
        _positive("distributed.num_processes", self.num_processes, allow_zero=True)
        _positive("distributed.initialization_timeout", self.initialization_timeout)
        if self.process_id < -1:
            _fail("distributed.process_id", self.process_id, "a process index >= 0 (or -1: from env)")
        if self.num_processes and self.process_id >= self.num_processes:
            _fail("distributed.process_id", self.process_id,
                  f"below distributed.num_processes={self.num_processes}")
        if self.coordinator_address and not _is_host_port(self.coordinator_address):
            _fail("distributed.coordinator_address", self.coordinator_address,
                  "host:port of process 0, e.g. 10.0.0.2:8476")
        if any(i < 0 for i in self.local_device_ids):
            _fail("distributed.local_device_ids", self.local_device_ids, "non-negative device ids")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """``elm-finetune``: the model to start from, what trains, the data and the loss (unused by
    ``elm-train``). Defaults are the paper's LoRA recipe (docs/OPENELM.md, "Fine-tuning") but for
    dropout (the recipes in experiments/finetune/ set its 0.1)."""

    base: str = ""  # HF OpenELM directory or elm-train run directory to start from
    method: str = "sft"  # sft: cross-entropy on response tokens; dpo: preference pairs
    adapter: str = "lora"  # lora | dora | none (full fine-tuning of `trainable`)
    # regexes (re.search) over parameter paths such as layers/0/attn/q_proj, or CoreNet's names
    targets: tuple[str, ...] = ("token_embeddings", "qkv_proj", "out_proj", "proj_1", "proj_2")
    trainable: tuple[str, ...] = ()  # base parameters that train too (adapter none: () = all)
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    rslora: bool = False  # scale by alpha / sqrt(rank) instead of alpha / rank
    format: str = "alpaca"
    train_file: str = ""  # JSON list or JSON lines
    validation_file: str = ""
    chat_template: str = "auto"  # auto (the tokenizer's own, else ours), default, or a Jinja text
    max_prompt_tokens: int = 0  # prompts keep their last N tokens (0: only seq_len limits them)
    dpo_loss: str = "sigmoid"
    dpo_beta: float = 0.1
    questions: int = 200  # shakespeare_plays: held-out questions scored before and after

    def validate(self) -> None:
        _choice("finetune.method", self.method, FINETUNE_METHODS)
        _choice("finetune.adapter", self.adapter, ADAPTERS)
        _choice("finetune.format", self.format, FINETUNE_FORMATS)
        _choice("finetune.dpo_loss", self.dpo_loss, DPO_LOSSES)
        for name in ("rank", "alpha", "dpo_beta"):
            _positive(f"finetune.{name}", getattr(self, name))
        for name in ("max_prompt_tokens", "questions"):
            _positive(f"finetune.{name}", getattr(self, name), allow_zero=True)
        if not 0 <= self.dropout < 1:
            _fail("finetune.dropout", self.dropout, "a probability in [0, 1)")
        if (self.method == "dpo") != (self.format == "preference"):
            _fail("finetune.format", self.format, "'preference' with method 'dpo' and only then")
        for name in ("targets", "trainable"):
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except re.error as err:
                    _fail(f"finetune.{name}", pattern, f"a regular expression ({err})")


def _is_host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole experiment."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    mesh: MeshConfig
    name: str = "experiment"
    distributed: DistributedConfig = DistributedConfig()
    finetune: FinetuneConfig = FinetuneConfig()

    def validate(self) -> None:
        for part in (self.model, self.data, self.train, self.mesh, self.distributed, self.finetune):
            part.validate()
        if self.data.seq_len > self.model.rope_max_length:
            _fail("data.seq_len", self.data.seq_len,
                  f"at most model.rope_max_length={self.model.rope_max_length}")
        if self.data.pad_id >= self.model.vocab_size:
            # The pad id only appears in targets, which are masked; inputs may hold it too,
            # so the embedding table must have a row for it.
            _fail("data.pad_id", self.data.pad_id,
                  f"an id below model.vocab_size={self.model.vocab_size} (CoreNet trains with "
                  "vocab 32128 and pad 32000)")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "mesh": MeshConfig,
            "distributed": DistributedConfig, "finetune": FinetuneConfig}


def _convert(field: str, value: Any, annotation: Any) -> Any:
    """Coerce one ConfigDict value to the dataclass field's declared type, or fail clearly."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for member in inner[:-1]:  # the first member type that takes the value
            try:
                return _convert(field, value, member)
            except ConfigError:
                continue
        return _convert(field, value, inner[-1])
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            _fail(field, value, "a list of values")
        return tuple(_convert(f"{field}[{i}]", v, args[0]) for i, v in enumerate(value))
    if annotation is Any or origin is not None and issubclass(origin, Mapping):
        return dict(value) if isinstance(value, Mapping) else value
    if annotation is bool:
        if not isinstance(value, bool):
            _fail(field, value, "True or False")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(field, value, "an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(field, value, "a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            _fail(field, value, "a string")
        return value
    return value


def _section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    fields = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(f'{name}.{u}' for u in unknown)}; "
            f"known fields: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _convert(f"{name}.{k}", v, fields[k]) for k, v in values.items()}
    return cls(**kwargs)


def from_config_dict(cd: ml_collections.ConfigDict | Mapping[str, Any]) -> Config:
    """Build and validate the typed config; raises ``ConfigError`` naming the bad field."""
    raw = cd.to_dict() if hasattr(cd, "to_dict") else dict(cd)
    unknown = sorted(set(raw) - set(SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(
            f"unknown config section(s) {unknown}; known: {sorted(SECTIONS)} and 'name'"
        )
    parts = {name: _section(name, cls, raw.get(name) or {}) for name, cls in SECTIONS.items()}
    config = Config(name=str(raw.get("name", "experiment")), **parts)
    config.validate()
    return config


def to_config_dict(config: Config) -> ml_collections.ConfigDict:
    """The inverse of ``from_config_dict`` (stored next to checkpoints and HF exports)."""
    raw = dataclasses.asdict(config)
    raw["data"]["sources"] = [dict(s) for s in config.data.sources]
    return ml_collections.ConfigDict(raw)


def default_config() -> ml_collections.ConfigDict:
    """Every field with its default: what experiment files start from."""
    config = to_config_dict(
        Config(model=ModelConfig(), data=DataConfig(), train=TrainConfig(), mesh=MeshConfig())
    )
    # a count or "auto", in experiment files and on the command line alike
    config.train.microbatches = ml_collections.FieldReference(config.train.microbatches,
                                                           field_type=object)
    return config
