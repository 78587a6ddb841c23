"""Where the memory goes: the buffers live at the peak of a compiled step, from XLA's own dumps.

``compile_with_buffers(lowered)`` compiles with ``xla_dump_to`` set to a temporary directory and reads
two of the files XLA writes after buffer assignment: the live-range dump, whose "Live ranges at N
(peak)" section lists every buffer alive when the schedule needs most memory, and the optimised HLO,
which gives each of those instructions its shape, layout (memory space) and the JAX ``op_name`` that
made it. Buffers in an on-chip memory space (TPU VMEM, layouts ``S(1)`` and up) are left out: they
do not take HBM. What remains is what the chip's HBM holds at the peak, largest first.
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

_PEAK_HEADER = re.compile(r"^\s*Live ranges at \d+ \(peak\):")
_PEAK_LINE = re.compile(r"^\s+(\S+?)\{([\d,]*)\}: (\d+) bytes")
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
        """Temporaries of the same description and shape merged: (description, count, total bytes,
        one example), largest total first."""
        groups: dict[tuple[str, str], list[Buffer]] = {}
        for b in self.temporaries:
            groups.setdefault((b.describe(), b.shape), []).append(b)
        rows = [(what, len(bs), sum(b.bytes for b in bs), bs[0]) for (what, _), bs in groups.items()]
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


def peak_buffers(live_range_text: str, hlo_text: str) -> PeakBuffers:
    """The HBM buffers alive at the peak, from XLA's live-range dump and the optimised HLO."""
    table = _instructions(hlo_text.splitlines())
    arguments, temporaries = [], []
    in_peak = False
    for line in live_range_text.splitlines():
        if _PEAK_HEADER.match(line):
            in_peak = True
            continue
        if not in_peak:
            continue
        match = _PEAK_LINE.match(line)
        if not match:
            if line.strip():
                break  # the section ended
            continue
        name, index, size = match.group(1), match.group(2), int(match.group(3))
        shape, opcode, op_name = table.get(name, ("?", "?", ""))
        element = _element(shape, index)
        if on_chip_memory(element):
            continue
        buffer = Buffer(name, size, re.sub(r"\{[^}]*\}$", "", element), opcode, op_name)
        (arguments if buffer.is_argument else temporaries).append(buffer)
    key = lambda b: -b.bytes  # noqa: E731
    return PeakBuffers(tuple(sorted(arguments, key=key)), tuple(sorted(temporaries, key=key)))


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
