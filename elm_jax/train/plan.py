"""Will it fit? Compile the real train step for a TPU slice on this CPU and read what XLA reports.

``plan(config, topology)`` builds the mesh over libtpu's compile-only devices, compiles the train
step ahead of time (optimizer state, donation and the attention kernel included) and reports, per
chip: argument / output / temporary bytes against the chip's HBM, compiled FLOPs, and the step time
a stated MFU implies. When the state alone cannot fit, it says so without compiling (the compiler
would only confirm it, minutes later); when XLA runs out of HBM it reports XLA's own numbers.
Every "does not fit" carries concrete suggestions, as config overrides, that can be verified by
planning again (``verify_suggestions``); ``fit`` searches microbatches and the remat policy by
compiling until the step fits. ``largest_batch`` searches the per-chip batch.

Next to XLA's figures every plan carries an analytic floor (``elm_jax.train.memory``: what any
implementation must hold) and the buffers alive at XLA's peak (``elm_jax.train.buffers``), so a
step that needs much more than its floor shows which buffers are the excess.
"""

from __future__ import annotations

import dataclasses
import math
import re
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax

from elm_jax.config import Config
from elm_jax.errors import ConfigError
from elm_jax.kernels.attention import resolve_impl
from elm_jax.model import flops_per_token
from elm_jax.parallel.mesh import make_mesh
from elm_jax.train import buffers as buffers_lib
from elm_jax.train import memory as memory_lib
from elm_jax.train import topology as topo_lib
from elm_jax.train.step import make_train_step, microbatch_count
from elm_jax.train.topology import GIB, Topology

# Leave room for what XLA's analysis does not see (runtime buffers, fragmentation, infeed).
DEFAULT_HBM_FRACTION = 0.95


class Step(Protocol):
    """What the planner needs of a train step (``elm_jax.train.step.TrainStep`` has it)."""

    state_shapes: Any  # ShapeDtypeStructs carrying their shardings
    batch_shapes: Any

    def lower(self) -> jax.stages.Lowered: ...


StepBuilder = Callable[[Config, jax.sharding.Mesh], Step]


def default_step_builder(config: Config, mesh: jax.sharding.Mesh) -> Step:
    return make_train_step(config, mesh)


def default_mesh_builder(config: Config, devices: Sequence[Any]) -> jax.sharding.Mesh:
    return make_mesh(config.mesh, devices)


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """A change that should make the step fit: config overrides and/or another topology."""

    why: str
    overrides: tuple[tuple[str, Any], ...] = ()
    topology: str | None = None
    verified: str | None = None  # filled in by verify_suggestions

    def flags(self) -> str:
        parts = [f"--topology {self.topology}"] if self.topology else []
        parts += [f"--config.{k}={v}" for k, v in self.overrides]
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one compile (or the pre-check that made it unnecessary) says about one setup."""

    config: Config
    topology: Topology
    mesh_shape: dict[str, int]
    hbm_bytes: int
    hbm_fraction: float
    state_bytes: int  # parameters + optimizer state + step counters, per chip (from shardings)
    batch_bytes: int
    microbatches: int = 1  # train.microbatches resolved for the mesh ("auto" included)
    bound: memory_lib.MemoryBound | None = None  # the analytic floor (real train steps only)
    buffers: buffers_lib.PeakBuffers | None = None  # what XLA holds at its peak
    optimizer_bytes: int = 0  # the optimizer state's share of state_bytes
    trainable: int = 0  # parameters with optimizer state (all in pretraining, adapters in LoRA)
    argument_bytes: int | None = None  # the rest come from compiled.memory_analysis()
    output_bytes: int | None = None
    alias_bytes: int | None = None
    temp_bytes: int | None = None
    code_bytes: int | None = None
    compiled_flops: float | None = None  # per chip, from cost_analysis()
    compile_seconds: float | None = None
    host_peak_bytes: int | None = None  # this process's peak RSS after the compile
    compiler_error: str | None = None  # XLA's out-of-memory message, if it gave one
    suggestions: tuple[Suggestion, ...] = ()

    @property
    def compiled(self) -> bool:
        return self.argument_bytes is not None

    @property
    def peak_bytes(self) -> int:
        """Per-chip HBM the step needs: inputs, new outputs (donated ones reuse inputs), temporaries,
        code. Without a compile: state + batch, plus the temporaries XLA's refusal named."""
        if not self.compiled:
            return self.state_bytes + self.batch_bytes + (self.temp_bytes or 0)
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)

    @property
    def not_compiled_because(self) -> str | None:
        """Why no compile was made or finished (None once one has been)."""
        if self.compiled:
            return None
        if self.compiler_error:
            return "XLA ran out of HBM"
        return "the state alone exceeds the chip's HBM"

    @property
    def budget_bytes(self) -> int:
        return int(self.hbm_bytes * self.hbm_fraction)

    @property
    def fits(self) -> bool:
        return self.compiler_error is None and self.peak_bytes <= self.budget_bytes

    @property
    def global_batch(self) -> int:
        return self.config.train.batch_size

    @property
    def per_chip_batch(self) -> float:
        return self.global_batch / (self.mesh_shape.get("data", 1) * self.mesh_shape.get("fsdp", 1))

    @property
    def per_chip_microbatch(self) -> float:
        """Sequences one chip computes at once (per microbatch)."""
        return self.per_chip_batch / self.microbatches

    @property
    def temp_ratio(self) -> float | None:
        """XLA's temporaries over the floor's: how far the compiled step is from the account."""
        if self.temp_bytes is None or self.bound is None or not self.bound.temp_bytes:
            return None
        return self.temp_bytes / self.bound.temp_bytes

    @property
    def model_flops(self) -> float:
        """Model FLOPs of one step (6N-style, causal attention), the MFU convention."""
        seq = self.config.data.seq_len
        return flops_per_token(self.config.model, seq) * self.global_batch * seq

    def step_seconds(self, mfu: float) -> float:
        """Step time if the slice ran at ``mfu`` of its peak bf16 FLOP/s."""
        return self.model_flops / (self.topology.chips * self.topology.chip.peak_bf16_flops * mfu)


def _unsharded_bytes(tree: Any) -> int:
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def _cost(compiled: jax.stages.Compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return cost or {}


def _is_out_of_memory(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    match = re.search(r"Ran out of memory[^\n]*", text)
    return match.group(0) if match else text.splitlines()[0][:300]


UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}  # XLA prints binary units


def _temporaries_in(message: str) -> int | None:
    """The HLO temporaries XLA said it needed, from its out-of-memory message."""
    match = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", message)
    return int(float(match.group(1)) * UNITS[match.group(2)]) if match else None


def with_overrides(config: Config, overrides: Sequence[tuple[str, Any]]) -> Config:
    """``config`` with dotted ``section.field`` values replaced (and validated again)."""
    for key, value in overrides:
        section, _, field = key.partition(".")
        part = getattr(config, section)
        config = dataclasses.replace(config, **{section: dataclasses.replace(part, **{field: value})})
    config.validate()
    return config


def _bound(config: Config, mesh: jax.sharding.Mesh, step: Step,
           microbatches: int) -> memory_lib.MemoryBound | None:
    """The analytic floor, for a real train step (a stand-in step has no TrainState)."""
    if not hasattr(step.state_shapes, "opt_state"):
        return None
    return memory_lib.memory_bound(config, dict(mesh.shape), step.state_shapes, step.batch_shapes,
                                   microbatches, attention_impl(config))


def _account(config: Config, topology: Topology, build_step: StepBuilder,
             build_mesh: Callable[[Config, Sequence[Any]], jax.sharding.Mesh],
             hbm_fraction: float) -> tuple[Plan, Step]:
    """The plan before any compile (shardings, state, the analytic floor) and the step to compile."""
    mesh = build_mesh(config, topo_lib.devices(topology))
    microbatches = microbatch_count(config, mesh)
    step = build_step(config, mesh)
    result = Plan(config=config, topology=topology, mesh_shape=dict(mesh.shape),
                  hbm_bytes=topology.chip.hbm_bytes, hbm_fraction=hbm_fraction,
                  state_bytes=memory_lib.shard_bytes(step.state_shapes),
                  batch_bytes=memory_lib.shard_bytes(step.batch_shapes),
                  optimizer_bytes=memory_lib.shard_bytes(getattr(step.state_shapes, "opt_state", ())),
                  trainable=sum(math.prod(x.shape) for x in jax.tree.leaves(
                      getattr(step.state_shapes, "params", ()))),
                  microbatches=microbatches, bound=_bound(config, mesh, step, microbatches))
    return result, step


def estimate(config: Config, topology: Topology, *, build_step: StepBuilder = default_step_builder,
             build_mesh: Callable[[Config, Sequence[Any]], jax.sharding.Mesh] = default_mesh_builder,
             hbm_fraction: float = DEFAULT_HBM_FRACTION, **_compile_options: Any) -> Plan:
    """``plan`` without the compile (seconds, not minutes): state per chip and the analytic floor.

    Takes (and ignores) ``plan``'s compile options, so a search can pass one set of arguments to both.
    """
    return _account(config, topology, build_step, build_mesh, hbm_fraction)[0]


def plan(config: Config, topology: Topology, *, build_step: StepBuilder = default_step_builder,
         build_mesh: Callable[[Config, Sequence[Any]], jax.sharding.Mesh] = default_mesh_builder,
         hbm_fraction: float = DEFAULT_HBM_FRACTION, precheck: bool = True,
         read_buffers: bool = True) -> Plan:
    """Compile ``config``'s train step for ``topology`` and report whether it fits one chip's HBM.

    ``read_buffers``: also list the buffers alive at XLA's peak (from its dumps; a few seconds).
    """
    result, step = _account(config, topology, build_step, build_mesh, hbm_fraction)
    # When the state alone is over budget the compile cannot succeed: skip it (minutes, for 3B).
    if not precheck or result.state_bytes + result.batch_bytes <= result.budget_bytes:
        result = _compile(result, step, read_buffers)
    if not result.fits:
        result = dataclasses.replace(result, suggestions=tuple(suggest(result, step)))
    return result


def _compile(result: Plan, step: Step, read_buffers: bool = True) -> Plan:
    """``result`` with XLA's memory and cost analysis, or with its out-of-memory message."""
    start = time.perf_counter()
    peak = None
    try:
        if read_buffers:
            compiled, peak = buffers_lib.compile_with_buffers(step.lower())
        else:
            compiled = step.lower().compile()
    except Exception as err:  # XLA reports HBM exhaustion as a runtime error
        if not _is_out_of_memory(err):
            raise
        message = _first_line(err)
        return dataclasses.replace(result, compiler_error=message, temp_bytes=_temporaries_in(message),
                                   compile_seconds=time.perf_counter() - start,
                                   host_peak_bytes=host_peak_bytes())
    memory = compiled.memory_analysis()
    return dataclasses.replace(
        result, argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes, code_bytes=memory.generated_code_size_in_bytes,
        compiled_flops=_cost(compiled).get("flops"), compile_seconds=time.perf_counter() - start,
        buffers=peak, host_peak_bytes=host_peak_bytes())


def host_peak_bytes() -> int:
    """Peak resident memory of this process so far (what a compile needs of the host)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _min_chips_for_state(total_state: int, chip: topo_lib.Chip, fraction: float) -> int:
    """Smallest power-of-two chip count whose HBM holds the fully sharded state in ``fraction``."""
    chips = 1
    while total_state / chips > chip.hbm_bytes * fraction:
        chips *= 2
    return chips


def suggest(result: Plan, step: Step) -> list[Suggestion]:
    """Concrete changes, most effective first, for a step that does not fit."""
    config, topology = result.config, result.topology
    mesh = result.mesh_shape
    out: list[Suggestion] = []
    total_state = _unsharded_bytes(step.state_shapes)
    tensor = mesh.get("tensor", 1)
    # FSDP over every chip of a slice; across slices only data parallelism (see multislice).
    full_fsdp = (("mesh.data", topology.slices), ("mesh.fsdp", -1))
    if config.mesh.tensor == -1:  # only one axis may be -1
        full_fsdp += (("mesh.tensor", tensor),)
    full_fsdp_state = total_state / topology.chips_per_slice
    # State (params + Adam moments) dominates: shard it over every chip, or take more chips.
    if result.state_bytes > 0.5 * result.budget_bytes:
        if mesh.get("fsdp", 1) * tensor < topology.chips_per_slice:
            out.append(Suggestion(
                f"parameters and optimizer state take {result.state_bytes / GIB:.1f} GiB per chip; "
                f"FSDP over all {topology.chips_per_slice} chips of a slice leaves "
                f"{full_fsdp_state / GIB:.1f} GiB", overrides=full_fsdp))
        if full_fsdp_state > 0.5 * result.budget_bytes:
            chips = _min_chips_for_state(total_state, topology.chip, 0.5 * result.hbm_fraction)
            bigger = topo_lib.for_chips(topology.chip, max(chips, 2 * topology.chips_per_slice))
            out.append(Suggestion(
                f"the full state is {total_state / GIB:.1f} GiB: even fully sharded it needs "
                f"{bigger.chips} {topology.chip.name} chips to leave half of HBM for activations",
                overrides=full_fsdp, topology=bigger.name))
    # Activations dominate: recompute them, split the batch into microbatches, or shrink it.
    if config.model.remat_policy == "none":
        out.append(Suggestion("activations are kept for the backward pass; recompute them per layer",
                              overrides=(("model.remat_policy", "full"),)))
    per_chip = result.per_chip_batch
    micro = result.microbatches
    factor = _activation_factor(result)
    rows = per_chip / micro  # sequences per chip in one microbatch
    while factor > 1 and (rows % factor or per_chip % (micro * factor)):
        factor //= 2  # keep microbatches and the batch divisible
    if factor > 1:
        out.append(Suggestion(
            f"accumulate gradients over {micro * factor} microbatches of {rows / factor:g} "
            "sequences per chip (same global batch; activations shrink about "
            f"{factor}x)", overrides=(("train.microbatches", micro * factor),)))
        out.append(Suggestion(
            f"cut the per-chip batch {per_chip:g} -> {per_chip / factor:g}; --batch_search finds "
            "the largest that fits", overrides=(("train.batch_size", result.global_batch // factor),)))
    return out


def _activation_factor(result: Plan) -> int:
    """By how much (a power of two) the per-microbatch activations must shrink to fit next to the
    state: temporaries scale about linearly with the sequences in one microbatch."""
    room = result.budget_bytes - result.state_bytes - result.batch_bytes
    needed = result.temp_bytes if result.temp_bytes is not None else result.peak_bytes
    if room <= 0 or needed is None:
        return 2
    factor = 2
    while factor * room < needed:
        factor *= 2
    return factor


def verify_suggestions(result: Plan, **plan_kwargs: Any) -> Plan:
    """Plan each suggestion in turn, recording whether it fits, until one does."""
    checked: list[Suggestion] = []
    found = False
    for suggestion in result.suggestions:
        if found:
            checked.append(suggestion)
            continue
        try:
            config = with_overrides(result.config, suggestion.overrides)
            topology = (topo_lib.parse(suggestion.topology, result.topology.slices)
                        if suggestion.topology else result.topology)
            trial = plan(config, topology, **plan_kwargs)
            verdict = (f"fits: {trial.peak_bytes / GIB:.2f} GiB per chip" if trial.fits
                       else f"still does not fit ({trial.peak_bytes / GIB:.2f} GiB per chip)")
            found = trial.fits
        except ConfigError as err:
            verdict = f"not applicable: {err}"
        checked.append(dataclasses.replace(suggestion, verified=verdict))
    return dataclasses.replace(result, suggestions=tuple(checked))


def with_per_chip_batch(config: Config, per_chip: int, batch_shards: int) -> Config:
    return with_overrides(config, (("train.batch_size", per_chip * batch_shards),))


def largest_batch(config: Config, topology: Topology, *, limit: int = 4096,
                  **plan_kwargs: Any) -> tuple[int, Plan | None, list[Plan]]:
    """The largest per-chip batch (a multiple of ``train.microbatches``) whose step fits.

    Doubles from one microbatch per chip until a compile does not fit, then bisects; returns
    (batch, its plan, every plan tried). (0, None, tried) when not even the smallest fits.
    """
    # a fixed count must divide every batch tried; "auto" adapts to each
    step_size = config.train.microbatches if config.train.microbatches != "auto" else 1
    build_mesh = plan_kwargs.get("build_mesh", default_mesh_builder)
    mesh = build_mesh(config, topo_lib.devices(topology))
    shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    tried: list[Plan] = []

    def attempt(per_chip: int) -> Plan:
        result = plan(with_per_chip_batch(config, per_chip, shards), topology, **plan_kwargs)
        tried.append(result)
        return result

    good, good_plan, bad = 0, None, None
    per_chip = step_size
    while per_chip <= limit:
        result = attempt(per_chip)
        if not result.fits:
            bad = per_chip
            break
        good, good_plan = per_chip, result
        per_chip *= 2
    if bad is None:
        return good, good_plan, tried
    while bad - good > step_size:
        middle = (good + bad) // 2 // step_size * step_size
        result = attempt(middle)
        if result.fits:
            good, good_plan = middle, result
        else:
            bad = middle
    return good, good_plan, tried


def attention_impl(config: Config) -> str:
    """The attention implementation the step compiles to on TPU (``auto`` resolved)."""
    return resolve_impl(config.model.attention_impl, platform="tpu",
                        interpret=config.model.attention_interpret,
                        dtype=config.model.dtype)


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:8.2f} GiB"


def microbatch_choice(result: Plan) -> str:
    """How the batch is split, and whether "auto" chose it (what elm-plan and elm-train print)."""
    train = result.config.train
    text = (f"{result.microbatches} microbatch(es) of {result.per_chip_microbatch:g} sequences "
            "per chip")
    if train.microbatches == "auto":
        text += f", chosen by train.microbatches=auto (<= {train.max_sequences_per_device} per chip)"
    return text


def memory_account(result: Plan, top: int = 10) -> list[str]:
    """The analytic floor, XLA's temporaries against it, and the largest buffers at XLA's peak."""
    lines: list[str] = []
    bound = result.bound
    if bound is not None:
        lines.append("memory floor per chip (analytic: what the step holds at least, as it is laid out):")
        for term in (*bound.held, *bound.temporaries):
            lines.append(f"  {term.name:<37}{_gib(term.bytes)}   ({term.how})")
        lines.append(f"  {'floor total':<37}{_gib(bound.total_bytes)}   (temporaries "
                     f"{_gib(bound.temp_bytes).strip()})")
        if result.temp_ratio is not None:
            lines.append(f"  XLA temporaries / floor temporaries: {result.temp_ratio:.2f}x")
    peak = result.buffers
    if peak is not None and peak.temporaries:
        lines.append(f"largest temporaries alive at XLA's peak ({_gib(peak.temporary_bytes).strip()} "
                     f"live in XLA's {_gib(peak.allocated_bytes).strip()} temporary allocation, "
                     "the rest its packing's gaps; arguments "
                     f"{_gib(peak.argument_bytes).strip()}):")
        for what, count, total, example in peak.grouped()[:top]:
            lines.append(f"  {_gib(total)}  {count:3d} x {example.shape:<26} {what}")
    return lines


def _size(value: int) -> str:
    """GiB, or MiB below one GiB (a LoRA run's optimizer state is a few MiB)."""
    return _gib(value) if value >= GIB else f"{value / 2 ** 20:8.2f} MiB"


def report(result: Plan, mfu: float) -> str:
    """The plan as the text ``elm-plan`` prints."""
    cfg, topology = result.config, result.topology
    mesh = " x ".join(f"{k} {v}" for k, v in result.mesh_shape.items())
    lines = [
        f"{cfg.name} on {topology} ({topology.chips} {topology.chip.name} chips, {topology.hosts} "
        f"hosts, {topology.chip.hbm_bytes / GIB:.0f} GiB HBM each); mesh {mesh}",
        f"batch {result.global_batch} x {cfg.data.seq_len} tokens ({result.per_chip_batch:g} "
        f"sequences per chip: {microbatch_choice(result)}); remat "
        f"{cfg.model.remat_policy}; compute {cfg.model.dtype}, params {cfg.model.param_dtype}; "
        f"attention: {attention_impl(cfg)}",
        "per-chip memory:",
        f"  parameters + optimizer state {_gib(result.state_bytes)}   (from the shardings)",
        f"    of which optimizer state   {_size(result.optimizer_bytes)}   (for "
        f"{result.trainable:,} trainable parameters)",
        f"  batch                        {_gib(result.batch_bytes)}",
    ]
    if result.compiled:
        lines += [
            f"  arguments                    {_gib(result.argument_bytes)}   (compiled)",
            f"  outputs                      {_gib(result.output_bytes)}   "
            f"({_gib(result.alias_bytes).strip()} of them reuse donated arguments)",
            f"  temporaries                  {_gib(result.temp_bytes)}",
            f"  generated code               {_gib(result.code_bytes)}",
        ]
    elif result.temp_bytes is not None:
        lines.append(f"  temporaries                  {_gib(result.temp_bytes)}   (XLA's refusal)")
    lines.append(f"  total                        {_gib(result.peak_bytes)}   of "
                  f"{_gib(result.budget_bytes).strip()} usable ({result.hbm_fraction:.0%} of HBM)")
    if result.compiler_error:
        lines.append(f"  XLA: {result.compiler_error}")
    elif not result.compiled:
        lines.append(f"  (not compiled: {result.not_compiled_because})")
    lines += memory_account(result)
    model_per_chip = result.model_flops / topology.chips
    lines.append(f"model FLOPs per step: {result.model_flops:.4g} ({model_per_chip:.4g} per chip)")
    if result.compiled_flops is not None:
        # XLA's cost analysis counts a loop's body once, whatever its trip count: the microbatch
        # loop's share is scaled by hand (the optimizer update, outside it, is small beside it).
        flops, how = result.compiled_flops, ""
        if result.microbatches > 1:
            flops *= result.microbatches
            how = f" = XLA's {result.compiled_flops:.4g} for one microbatch x {result.microbatches}"
        lines.append(f"compiled FLOPs per chip: {flops:.4g}{how} ({flops / model_per_chip:.2f}x "
                     "model: recompute, softmax, optimizer; custom kernels count 0)")
    seconds = result.step_seconds(mfu)
    tokens = result.global_batch * cfg.data.seq_len
    lines.append(f"at {mfu:.0%} MFU: {seconds:.3f} s per step, "
                 f"{tokens / seconds / topology.chips:,.0f} tokens/s per chip")
    if result.compile_seconds is not None:
        lines.append(f"compile time on this machine: {result.compile_seconds:.1f} s"
                     + (f", peak host memory {result.host_peak_bytes / GIB:.1f} GiB"
                        if result.host_peak_bytes else ""))
    lines.append(f"verdict: {'FITS' if result.fits else 'DOES NOT FIT'}")
    for i, s in enumerate(result.suggestions, 1):
        lines.append(f"suggestion {i}: {s.why}")
        lines.append(f"    {s.flags()}" + (f"   [{s.verified}]" if s.verified else ""))
    return "\n".join(lines)
