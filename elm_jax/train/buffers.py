"""Where the memory goes: the buffers live at the peak of a compiled step, from XLA's own dumps.

``compile_with_buffers(lowered)`` compiles with ``xla_dump_to`` set to a temporary directory and reads
two of the files XLA writes after buffer assignment: the live-range dump (the start and end, in the
final schedule, of every value) and the optimised HLO, which gives each value's instruction its
shape, layout (memory space) and the JAX ``op_name`` that made it. Values in an on-chip memory space
(TPU VMEM, layouts ``S(1)`` and up) are left out: they do not take HBM. A sweep over the schedule
finds the moment the remaining temporaries (every value but the entry computation's parameters)
add up to most, and lists what is alive then, largest first. XLA's own "peak" in that dump counts
all memory spaces together, which on a TPU can put it where HBM is not at its fullest.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax

# dtype names in HLO shapes -> bytes per element
HLO_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                   "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                   "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}

_RANGES_HEADER = re.compile(r"^\s*BufferLiveRange:")
_RANGE_LINE = re.compile(r"^\s+(\S+?)\{([\d,]*)\}:(\d+)-(\d+)$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')
_ARRAY = re.compile(r"([a-z0-9]+)\[([\d,]*)\](?:\{([^}]*)\})?")


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One HLO value alive at the peak."""

    instruction: str
    bytes: int
    shape: str  # e.g. "bf16[16,2048,3072]"
    opcode: str
    op_name: str  # the JAX source of the value (jit path, or the argument's pytree path)

    @property
    def is_argument(self) -> bool:
        return self.opcode == "parameter" and not self.op_name.startswith("jit(")

    def describe(self) -> str:
        """What this buffer is, in words (from its op_name and opcode)."""
        return describe(self.op_name, self.opcode)


@dataclasses.dataclass(frozen=True)
class PeakBuffers:
    """The buffers in HBM at the step's peak, arguments and temporaries apart, largest first."""

    arguments: tuple[Buffer, ...]
    temporaries: tuple[Buffer, ...]

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


def _split_top_level(text: str) -> list[str]:
    """``(a, (b, c), d)`` -> ``["a", "(b, c)", "d"]`` (the elements of a tuple shape)."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [re.sub(r"/\*index=\d+\*/", "", p).strip() for p in parts if p]


def _element(shape: str, index: str) -> str:
    """The tuple element ``index`` ("0,1") of an HLO shape (the shape itself for "")."""
    for i in filter(None, index.split(",")):
        elements = _split_top_level(shape)
        shape = elements[int(i)] if int(i) < len(elements) else shape
    return shape


def array_bytes(shape: str) -> int:
    """Bytes of an HLO array shape such as ``bf16[16,2048]{1,0}`` (0 for tuples / tokens)."""
    match = _ARRAY.match(shape.strip())
    if not match or match.group(1) not in HLO_DTYPE_BYTES:
        return 0
    dims = [int(d) for d in match.group(2).split(",") if d]
    return math.prod(dims) * HLO_DTYPE_BYTES[match.group(1)]


def on_chip_memory(shape: str) -> bool:
    """Whether the layout puts the array in a memory space other than HBM (``S(1)`` and up)."""
    match = _ARRAY.match(shape.strip())
    layout = (match.group(3) or "") if match else ""
    space = re.search(r"S\((\d+)\)", layout)
    return bool(space and space.group(1) != "0")


def _instructions(hlo_lines: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """instruction name -> (shape, opcode, op_name) over every computation of an HLO text dump."""
    table = {}
    for line in hlo_lines:
        match = _INSTRUCTION.match(line)
        if match:
            op = _OP_NAME.search(line)
            table[match.group(1)] = (match.group(2), match.group(3),
                                     op.group(1).replace("\\'", "'") if op else "")
    return table


def _live_ranges(live_range_text: str) -> Iterator[tuple[str, str, int, int]]:
    """(instruction, tuple index, first, last schedule position) of every value in the dump."""
    inside = False
    for line in live_range_text.splitlines():
        if _RANGES_HEADER.match(line):
            inside = True
            continue
        if inside:
            match = _RANGE_LINE.match(line)
            if not match:
                break
            yield match.group(1), match.group(2), int(match.group(3)), int(match.group(4))


def peak_buffers(live_range_text: str, hlo_text: str) -> PeakBuffers:
    """The HBM buffers alive when the temporaries peak, from XLA's live-range dump and the HLO."""
    table = _instructions(hlo_text.splitlines())
    values = []
    for name, index, first, last in _live_ranges(live_range_text):
        shape, opcode, op_name = table.get(name, ("?", "?", ""))
        element = _element(shape, index)
        size = array_bytes(element)
        if size and not on_chip_memory(element):
            buffer = Buffer(name, size, re.sub(r"\{[^}]*\}$", "", element), opcode, op_name)
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
    alive = [b for first, last, b in values if first <= when <= last]
    key = lambda b: -b.bytes  # noqa: E731
    return PeakBuffers(tuple(sorted((b for b in alive if b.is_argument), key=key)),
                       tuple(sorted((b for b in alive if not b.is_argument), key=key)))


def read_dump(directory: Path) -> PeakBuffers | None:
    """The peak buffers of the largest module XLA dumped into ``directory`` (None if absent)."""
    ranges = sorted(directory.glob("*after_optimizations-live-range.txt"),
                    key=lambda p: p.stat().st_size)
    if not ranges:
        return None
    live = ranges[-1]
    hlo = live.with_name(live.name.replace("-live-range.txt", ".txt"))
    if not hlo.exists():
        return None
    return peak_buffers(live.read_text(), hlo.read_text())


def compile_with_buffers(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled,
                                                              PeakBuffers | None]:
    """Compile ``lowered`` and read which buffers are alive at its memory peak.

    XLA writes its dumps only for a successful compile; the directory is removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="elm_buffers_") as tmp:
        compiled = lowered.compile(compiler_options={"xla_dump_to": tmp,
                                                     "xla_dump_hlo_as_text": True})
        return compiled, read_dump(Path(tmp))
