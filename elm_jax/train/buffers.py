"""Where the memory goes: the buffers live at the peak of a compiled step, from XLA's own dumps.

``compile_with_buffers(lowered)`` compiles with ``xla_dump_to`` set to a temporary directory and reads
three of the files XLA writes: the buffer assignment (which allocation every value went to: an
argument, an output, a constant or the temporary allocation, and in which memory space), the
live-range dump (the start and end, in the final schedule, of every value) and the optimised HLO,
which gives each value's instruction its opcode and the JAX ``op_name`` that made it. Only values
XLA placed in a temporary allocation of HBM count as temporaries: a loop carry that XLA keeps in the
output's buffer, or a value in TPU VMEM (memory space 1 and up), does not. A sweep over the schedule
finds the moment those temporaries add up to most, and lists what is alive then, largest first;
what XLA's temporary allocation holds beyond that is the packing's fragmentation. (XLA's own "peak"
in the live-range dump counts arguments and every memory space together.)
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax

_RANGES_HEADER = re.compile(r"^\s*BufferLiveRange:")
_ALLOCATION = re.compile(r"^allocation \d+: size (\d+)(.*):$")
_VALUE = re.compile(r"^\s*value: <\d+ ([^\s{]+)(\{[\d,]*\})?(?: \(phi\))? @\d+> "
                    r"\(size=(\d+),offset=\d+\): (.*)$")
_RANGE_LINE = re.compile(r"^\s+(\S+?)\{([\d,]*)\}:(\d+)-(\d+)$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .+? ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One HLO value alive at the peak."""

    instruction: str
    bytes: int  # as XLA placed it (TPU tiles pad small dimensions)
    shape: str  # e.g. "bf16[16,2048,3072]"
    opcode: str
    op_name: str  # the JAX source of the value (jit path, or the argument's pytree path)
    argument: bool = False  # in an argument's allocation (else in XLA's temporary allocation)

    @property
    def is_argument(self) -> bool:
        return self.argument

    def describe(self) -> str:
        """What this buffer is, in words (from its op_name and opcode)."""
        return describe(self.op_name, self.opcode)


@dataclasses.dataclass(frozen=True)
class PeakBuffers:
    """The buffers in HBM at the step's peak, arguments and temporaries apart, largest first."""

    arguments: tuple[Buffer, ...]
    temporaries: tuple[Buffer, ...]
    allocated_bytes: int = 0  # XLA's temporary allocations in HBM: the peak plus the packing's gaps

    @property
    def temporary_bytes(self) -> int:
        return sum(b.bytes for b in self.temporaries)

    @property
    def argument_bytes(self) -> int:
        return sum(b.bytes for b in self.arguments)

    def grouped(self) -> list[tuple[str, int, int, Buffer]]:
        """Temporaries of the same shape and description, but for the layer, merged: (description,
        count, total bytes, one example), largest total first. ``layer_*`` stands for several."""
        groups: dict[tuple[str, str], list[Buffer]] = {}
        for b in self.temporaries:
            groups.setdefault((re.sub(r"layer_\d+", "layer_*", b.describe()), b.shape), []).append(b)
        rows = []
        for (what, _), members in groups.items():
            if len({m.describe() for m in members}) == 1:
                what = members[0].describe()
            rows.append((what, len(members), sum(m.bytes for m in members), members[0]))
        return sorted(rows, key=lambda r: -r[2])


def describe(op_name: str, opcode: str) -> str:
    """A short account of a buffer from the JAX op that produced it."""
    path = op_name.removeprefix("jit(train_step)/")
    if opcode == "parameter" and not op_name.startswith("jit("):
        return f"argument {op_name}" if op_name else "argument"
    backward = "transpose(" in path
    scope = "/".join(s for s in _scopes(path) if s)
    if opcode in ("all-gather", "all-gather-start", "all-gather-done"):
        what = "gathered weights (FSDP all-gather)"
    elif opcode in ("reduce-scatter", "all-reduce", "all-reduce-start", "all-reduce-done"):
        what = "gradient being reduced over devices"
    elif opcode == "while" or path.endswith("while"):
        what = "loop carry (gradient accumulator / scan state)"
    elif "pallas_call" in path or "flash" in path:
        what = "attention kernel output"
    elif "dot_general" in path:
        what = "matmul result"
    elif opcode in ("copy", "copy-start", "copy-done"):
        what = "copy (layout change or prefetch)"
    else:
        what = opcode
    if backward:
        what = f"backward: {what}"
    elif op_name.startswith("jit("):
        what = f"forward: {what}"  # alive at a peak in the backward pass: kept for it
    if "checkpoint" in path or "remat" in path:
        what += " (recomputed)"
    return f"{what} [{scope}]" if scope else what


def _scopes(path: str) -> Iterator[str]:
    """The named scopes of an op_name (``layer_3``, ``attention``, ``loss`` ...), without JAX's
    transformation wrappers."""
    wrapper = re.compile(r"^(?:transpose|jvp|checkpoint|remat|jit|pjit|rematted_computation)\((.*)\)$")
    for part in path.split("/"):
        while wrapper.match(part):
            part = wrapper.sub(r"\1", part)
        if re.fullmatch(r"(?:layer_\d+|attention|ffn|loss|logits|embed|microbatch)", part):
            yield part


def _instructions(hlo_lines: Iterable[str]) -> dict[str, tuple[str, str]]:
    """instruction name -> (opcode, op_name) over every computation of an HLO text dump."""
    table = {}
    for line in hlo_lines:
        match = _INSTRUCTION.match(line)
        if match:
            op = _OP_NAME.search(line)
            table[match.group(1)] = (match.group(2), op.group(1).replace("\\'", "'") if op else "")
    return table


def _allocation_kind(flags: str) -> str | None:
    """What an allocation of XLA's buffer assignment holds, from its header's flags; None for one
    outside HBM (another memory space) or private to a thread."""
    color = re.search(r"\bcolor (\d+)", flags)
    if (color and color.group(1) != "0") or "thread-local" in flags:
        return None
    if "parameter" in flags:
        return "argument"  # a donated argument that the output reuses is still an argument
    if "maybe-live-out" in flags or "output shape" in flags:
        return "output"
    return "constant" if "constant" in flags else "temporary"


def placements(assignment_lines: Iterable[str]) -> tuple[dict[str, tuple[str, int, str]], int]:
    """Every HBM value of a buffer-assignment dump, ``"name{index}" -> (kind, bytes, shape)``, and
    the bytes of XLA's temporary allocations in HBM (XLA's ``temp_size_in_bytes`` may count more)."""
    values, temporary_bytes, kind = {}, 0, None
    for line in assignment_lines:
        line = line.rstrip("\n")
        header = _ALLOCATION.match(line)
        if header:
            kind = _allocation_kind(header.group(2))
            temporary_bytes += int(header.group(1)) if kind == "temporary" else 0
            continue
        value = _VALUE.match(line)
        if value and kind:
            values[value.group(1) + (value.group(2) or "{}")] = (kind, int(value.group(3)),
                                                                 value.group(4).strip())
    return values, temporary_bytes


def _live_ranges(live_range_lines: Iterable[str]) -> Iterator[tuple[str, str, int, int]]:
    """(instruction, "{tuple index}", first, last schedule position) of every value in the dump."""
    inside = False
    for line in live_range_lines:
        line = line.rstrip("\n")
        if _RANGES_HEADER.match(line):
            inside = True
            continue
        if inside:
            match = _RANGE_LINE.match(line)
            if not match:
                break
            yield match.group(1), f"{{{match.group(2)}}}", int(match.group(3)), int(match.group(4))


def peak_buffers(assignment: Iterable[str], live_ranges: Iterable[str],
                 hlo: Iterable[str]) -> PeakBuffers:
    """The HBM buffers alive when the temporaries peak, from the lines of XLA's buffer assignment,
    live-range and HLO dumps (read line by line: a large model's dumps take hundreds of MB)."""
    table = _instructions(hlo)
    placed, allocated = placements(assignment)
    values = []
    for name, index, first, last in _live_ranges(live_ranges):
        kind, size, shape = placed.get(name + index, (None, 0, ""))
        opcode, op_name = table.get(name, ("?", ""))
        # a donated argument's buffer also holds the new value the step writes into it: only the
        # parameter itself is the argument
        if size and (kind == "temporary" or (kind == "argument" and opcode == "parameter")):
            buffer = Buffer(name, size, re.sub(r"\{[^}]*\}$", "", shape), opcode, op_name,
                            argument=kind == "argument")
            values.append((first, last, buffer))
    # sweep: +size at the first position, -size after the last; the peak of the temporaries
    events: dict[int, int] = {}
    for first, last, buffer in values:
        if not buffer.is_argument:
            events[first] = events.get(first, 0) + buffer.bytes
            events[last + 1] = events.get(last + 1, 0) - buffer.bytes
    level, best, when = 0, -1, 0
    for position in sorted(events):
        level += events[position]
        if level > best:
            best, when = level, position
    alive = [b for first, last, b in values if b.is_argument or first <= when <= last]
    key = lambda b: -b.bytes  # noqa: E731
    return PeakBuffers(tuple(sorted((b for b in alive if b.is_argument), key=key)),
                       tuple(sorted((b for b in alive if not b.is_argument), key=key)),
                       allocated_bytes=allocated)


def read_dump(directory: Path) -> PeakBuffers | None:
    """The peak buffers of the largest module XLA dumped into ``directory`` (None if absent)."""
    ranges = sorted(directory.glob("*after_optimizations-live-range.txt"),
                    key=lambda p: p.stat().st_size)
    if not ranges:
        return None
    live = ranges[-1]
    hlo = live.with_name(live.name.replace("-live-range.txt", ".txt"))
    assignment = live.with_name(live.name.replace("-live-range.txt", "-buffer-assignment.txt"))
    if not hlo.exists() or not assignment.exists():
        return None
    with assignment.open() as a, live.open() as r, hlo.open() as h:
        return peak_buffers(a, r, h)


def compile_with_buffers(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled,
                                                              PeakBuffers | None]:
    """Compile ``lowered`` and read which buffers are alive at its memory peak.

    XLA writes its dumps only for a successful compile; the directory is removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="elm_buffers_") as tmp:
        compiled = lowered.compile(compiler_options={"xla_dump_to": tmp,
                                                     "xla_dump_hlo_as_text": True})
        return compiled, read_dump(Path(tmp))
