"""Write docs/PLANNING.md: every OpenELM size on a few TPU slices, as elm-plan compiles them.

    python bench/plan_table.py                        # the default cells (size:slice pairs)
    python bench/plan_table.py --cells 270m:v5e-8 --out /tmp/t.md

Each cell is what ``elm-plan --config experiments/openelm_<size>.py --topology <slice>`` does with
no other flag: one ahead-of-time compile of the real train step (libtpu on this CPU) of the paper's
recipe as the preset ships it (global batch 2048 x 2048 tokens, ``train.microbatches=auto``, the
preset's remat and mesh); when that does not fit, the planner's search for microbatches and remat
policy (``elm_jax.train.fit``), one row per compile it makes. Every compile runs in a child process
killed past ``--max-host-gib`` of host memory, resident or swapped out (this machine is shared);
its peak is recorded.
Compiles of the larger models take minutes each on a small machine: the table is rewritten after
every cell, so an interrupted run keeps what it finished (``--resume``); ``--cache DIR`` keeps every
finished compile, so a rerun repeats none.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import hashlib
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from elm_jax.config import from_config_dict  # noqa: E402
from elm_jax.presets import SIZES, openelm_config  # noqa: E402
from elm_jax.train import fit as fit_lib  # noqa: E402
from elm_jax.train import plan as plan_lib  # noqa: E402
from elm_jax.train import topology as topo_lib  # noqa: E402
from elm_jax.train.topology import GIB  # noqa: E402

# Each size on slices where the question is interesting (small chips for small models, larger
# slices for the 3B); every cell is one or more compiles of minutes on two CPU cores.
# A third field adds flags to the preset: FSDP over 16 of the v5p-128's 64 chips (4 data-parallel
# groups) is the 3B's mesh whose compile fits in 16 GiB of host RAM (docs/PLANNING.md).
CELLS = ("270m:v5e-8", "450m:v5p-8", "1_1b:v5p-8", "3b:v5p-32", "1_1b:v5e-16", "3b:v5e-32",
         "270m:v6e-8", "450m:v5e-8", "3b:v5p-128", "3b:v5p-128:mesh.data=4,mesh.fsdp=16")


class HostMemoryExceeded(RuntimeError):
    """A compile needed more host RAM than the table allows."""


def _gib(value: int | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value / GIB:.{digits}f}"


def cell(result: plan_lib.Plan, mfu: float) -> dict[str, str]:
    peak = result.peak_bytes / GIB
    bound = result.bound
    return {
        "mesh": "x".join(str(result.mesh_shape[a]) for a in ("data", "fsdp", "tensor")),
        "per chip": f"{result.per_chip_microbatch:g} x {result.microbatches}",
        "remat": result.config.model.remat_policy,
        "state GiB": _gib(result.state_bytes),
        "floor temp GiB": _gib(bound.temp_bytes if bound else None),
        "XLA temp GiB": _gib(result.temp_bytes) + ("" if result.compiled or result.temp_bytes is None
                                                   else " (refusal)"),
        "XLA / floor": "-" if result.temp_ratio is None else f"{result.temp_ratio:.2f}",
        "total GiB": f"{peak:.2f}" if result.compiled else f">= {peak:.2f}",
        "HBM GiB": f"{result.hbm_bytes / GIB:.0f}",
        "fits": "yes" if result.fits else f"no ({result.not_compiled_because or 'compiled'})",
        f"s/step @{mfu:.0%}": f"{result.step_seconds(mfu):.2f}",
        "compile s": "-" if result.compile_seconds is None else f"{result.compile_seconds:.0f}",
        "host GiB": _gib(result.host_peak_bytes, 1),
    }


def plan_in_child(config: plan_lib.Config, topology: topo_lib.Topology,
                  args: argparse.Namespace, **plan_kwargs) -> plan_lib.Plan:
    """``plan_lib.plan`` in a child process, killed when its resident memory passes
    ``--max-host-gib`` (compiling the larger models takes many GiB, and this machine is shared)."""
    job_bytes = pickle.dumps((config, topology, plan_kwargs))
    cached = Path(args.cache) / f"{hashlib.sha256(job_bytes).hexdigest()[:24]}.pkl" if args.cache else None
    if cached is not None and cached.exists():
        return pickle.loads(cached.read_bytes())
    with tempfile.TemporaryDirectory(prefix="plan_table_") as tmp:
        job, answer = Path(tmp) / "job.pkl", Path(tmp) / "plan.pkl"
        job.write_bytes(job_bytes)
        # TMPDIR: XLA's dumps (elm_jax.train.buffers) go under tmp, removed even if the child is killed
        child = subprocess.Popen([sys.executable, __file__, "--one", str(job), "--answer",
                                  str(answer)], env={**os.environ, "TMPDIR": tmp})
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, held_gib(child.pid))
            if peak > args.max_host_gib:
                child.kill()
                child.wait()
                raise HostMemoryExceeded(f"the compile passed {args.max_host_gib:g} GiB of host RAM")
            time.sleep(1)
        if child.returncode or not answer.exists():
            raise SystemExit(f"planning {config.name} on {topology} failed (exit {child.returncode})")
        result = pickle.loads(answer.read_bytes())
        # ru_maxrss counts resident pages only: on a host with swap the compile can hold more
        result = dataclasses.replace(result, host_peak_bytes=max(result.host_peak_bytes or 0,
                                                                 int(peak * GIB)))
        if cached is not None:
            write_atomic(cached, pickle.dumps(result))
        return result


def held_gib(pid: int) -> float:
    """What process ``pid`` holds now, resident or swapped out, in GiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    kib = sum(int(fields[name].split()[0]) for name in ("VmRSS", "VmSwap") if name in fields)
    return kib / 2 ** 20


def _flags(config: plan_lib.Config, preset: plan_lib.Config) -> str:
    """The flags that turn ``preset`` into ``config``."""
    changes = []
    for section in ("model", "train", "mesh"):
        old, new = getattr(preset, section), getattr(config, section)
        for field in old.__dataclass_fields__:
            if getattr(old, field) != getattr(new, field):
                changes.append(f"--config.{section}.{field}={getattr(new, field)}")
    return " ".join(changes)


def _setup_label(config: plan_lib.Config, preset: plan_lib.Config) -> str:
    """A cell's first row: the preset as shipped, or the flags the cell adds to it."""
    given = _flags(config, preset)
    return "flags: " + given if given else "preset"


def _setup(result: plan_lib.Plan, first: plan_lib.Plan, label: str) -> str:
    """A search row: the cell's setup and the flags elm-plan's search added to it."""
    search = "search: " + _flags(result.config, first.config)
    return search if label == "preset" else f"{label}; {search}"


def parse_overrides(text: str) -> tuple[tuple[str, object], ...]:
    """``section.field=value,...`` -> ((section.field, value), ...); '' -> ()."""
    pairs = [item.split("=", 1) for item in text.split(",")] if text else []
    if any(len(pair) != 2 or "." not in pair[0] for pair in pairs):
        raise ValueError(f"flags are section.field=value,... (e.g. mesh.data=4,mesh.fsdp=16); "
                         f"got {text!r}")
    return tuple((key, _value(value)) for key, value in pairs)


def parse_cell(text: str) -> tuple[str, str, tuple[tuple[str, object], ...]]:
    """``size:slice[:section.field=value,...]`` -> (size, slice, overrides)."""
    parts = text.split(":", 2)
    if len(parts) < 2 or parts[0] not in SIZES or not parts[1]:
        raise ValueError(f"cells are size:slice[:section.field=value,...] with size in "
                         f"{', '.join(SIZES)}; got {text!r}")
    return parts[0], parts[1], parse_overrides(parts[2] if len(parts) > 2 else "")


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word, e.g. a remat policy


def _save_report(args: argparse.Namespace, name: str, text: str) -> None:
    """Keep elm-plan's full text of a cell (memory account, largest buffers) under --reports."""
    if args.reports:
        write_atomic(Path(args.reports) / f"{name}.txt", text + "\n")


def rows_for_cell(text: str, args: argparse.Namespace) -> list[dict]:
    """The cell's row (the preset, with the cell's flags if any), then, when it does not fit, one
    row per compile of the fit search."""
    size, slice_name, overrides = parse_cell(text)
    topology = topo_lib.parse(slice_name)
    preset = from_config_dict(openelm_config(size))
    config = plan_lib.with_overrides(preset, overrides)
    base = {"size": size, "slice": slice_name}
    setup = _setup_label(config, preset)

    def plan_fn(cfg, topo, **kwargs):
        return plan_in_child(cfg, topo, args, **kwargs)

    try:
        first = plan_fn(config, topology)
    except HostMemoryExceeded as err:
        return [{**base, "setup": setup, "fits": f"not planned: {err}",
                 "host GiB": f"> {args.max_host_gib:g}"}]
    rows = [{**base, "setup": setup, **cell(first, args.mfu)}]
    text = plan_lib.report(first, args.mfu)  # what elm-plan prints for this cell
    name = f"{size}_{slice_name}" + ("_" + "_".join(f"{k}={v}" for k, v in overrides) if overrides else "")
    _save_report(args, name, text)
    if first.fits:
        return rows
    try:
        found = fit_lib.fit(first, plan_fn=plan_fn)
        trials = [t for t in found.tried if t is not first]
    except HostMemoryExceeded as err:
        rows.append({**base, "setup": "search", "fits": f"not planned: {err}",
                     "host GiB": f"> {args.max_host_gib:g}"})
        return rows
    _save_report(args, name, text + "\n" + fit_lib.fit_report(found))
    for trial in trials:
        rows.append({**base, "setup": _setup(trial, first, setup), **cell(trial, args.mfu)})
    if found.plan is None:
        rows.append({**base, "setup": "search", "fits": "nothing found"})
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, seconds: float, pending: int) -> str:
    import jax

    header = max((list(r) for r in rows), key=len)
    lines = [
        "# Will it fit? OpenELM on TPU slices",
        "",
        "Produced by `python bench/plan_table.py` (elm-plan's machinery): each row is the real",
        "train step (optimizer state, donation, attention kernel, chunked loss) compiled ahead of",
        "time for the slice through libtpu on a CPU, with XLA's per-chip memory analysis. The",
        "`preset` row of a cell is exactly what `elm-plan --config experiments/openelm_<size>.py",
        "--topology <slice>` prints with no other flag: the paper's recipe as shipped (global batch",
        "2048 x 2048 tokens, `train.microbatches=auto` = at most `train.max_sequences_per_device`",
        "sequences per chip per microbatch (16, the paper's; 4 for the 270M, which recomputes",
        "nothing), the preset's remat and mesh; 3B: full FSDP). When it does not fit, the rows",
        "below it are the compiles of elm-plan's search (microbatches, then full remat; FSDP first",
        "when the state needs it), with the flags each adds to the preset.",
        "",
        "Columns: `per chip` = sequences per chip per microbatch x microbatches; `floor temp` = the",
        "analytic floor of the temporaries (gradients, activations kept under the remat policy, the",
        "larger of the loss and largest-layer working sets; `elm_jax/train/memory.py`); `XLA temp` =",
        "XLA's temporaries (from its refusal when it ran out of HBM); `XLA / floor` their ratio;",
        "`total` = arguments + outputs not aliased + temporaries + code; `compile s` and `host GiB` =",
        "compile time and peak host memory (resident or swapped out) of the compiling process on",
        "this machine. Step",
        f"times assume {args.mfu:.0%} MFU on the published peak bf16 FLOP/s; they are not",
        "measurements.",
        "",
        f"Generated {datetime.date.today()} with jax {jax.__version__} on {platform.machine()} "
        f"({os.cpu_count()} CPUs, shared with other jobs: the compile times vary with their load)"
        + (f"; {pending} cell(s) still to plan." if pending else "."),
        *_not_planned(args),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(r.get(h, "-")) for h in header) + " |" for r in rows]
    lines += ["", "Reproduce one row: `elm-plan --config experiments/openelm_<size>.py --topology "
              "<slice>` plus the row's `flags:` and `search:` flags; `elm-plan` prints the memory "
              "account and the largest buffers at XLA's peak for it.", ""]
    return "\n".join(lines)


NOTES_MARK = "<!-- notes: kept when the table is regenerated -->"


def kept_notes(path: Path) -> str:
    """The hand-written notes of the existing table (from ``NOTES_MARK`` on), to carry over."""
    text = path.read_text() if path.exists() else ""
    return text[text.index(NOTES_MARK):] if NOTES_MARK in text else NOTES_MARK + "\n"


def stopped_below(rows: list[dict], cap: float) -> bool:
    """Whether a cell's compile was stopped at a host-RAM cap below ``cap`` (so --resume retries it)."""
    limit = str(rows[-1].get("host GiB", ""))
    return (str(rows[-1].get("fits", "")).startswith("not planned") and limit.startswith("> ")
            and float(limit[2:]) < cap)


def _not_planned(args: argparse.Namespace) -> list[str]:
    """A line naming the default cells this table leaves out (planned with ``--cells``)."""
    left = [c for c in CELLS if c not in args.cells.split(";")]
    return [f"Default cells not planned in this run: {', '.join(left)}."] if left else []


def write_atomic(path: Path, data: str | bytes) -> None:
    """A half-written table (or cached plan) never replaces a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=";".join(CELLS),
                   help="';'-separated size:slice[:section.field=value,...], e.g. "
                        "'3b:v5p-32;3b:v5p-128:mesh.data=4,mesh.fsdp=16'")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--out", default=str(REPO / "docs" / "PLANNING.md"))
    p.add_argument("--max-host-gib", type=float, default=16.0,
                   help="stop a cell whose compile needs more host RAM than this")
    p.add_argument("--reports", default="",
                   help="directory for each cell's elm-plan report (memory account, buffers)")
    p.add_argument("--cache", default="",
                   help="directory keeping every finished compile's plan, so a rerun (or a cell "
                        "interrupted in its search) repeats none of them")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells already in the rows file next to --out (but those stopped "
                        "at a lower --max-host-gib)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child mode: a pickled (config, topology)
    p.add_argument("--answer", help=argparse.SUPPRESS)  # with --one: where the pickled plan goes
    args = p.parse_args()
    if args.one:
        config, topology, kwargs = pickle.loads(Path(args.one).read_bytes())
        Path(args.answer).write_bytes(pickle.dumps(plan_lib.plan(config, topology, **kwargs)))
        return
    cells = args.cells.split(";")
    for text in cells:
        try:
            size, slice_name, overrides = parse_cell(text)
            topo_lib.parse(slice_name)
            plan_lib.with_overrides(from_config_dict(openelm_config(size)), overrides)
        except (ValueError, TypeError, AttributeError) as err:  # ConfigError is a ValueError
            p.error(f"cell {text!r}: {err}")
    rows_file = Path(args.out).with_suffix(".rows.json")
    done_cells = json.loads(rows_file.read_text()) if args.resume and rows_file.exists() else {}
    start = time.perf_counter()
    for count, key in enumerate(cells, 1):
        if key not in done_cells or stopped_below(done_cells[key], args.max_host_gib):
            began = time.perf_counter()
            print(f"[{count}/{len(cells)}] {key} ...", flush=True)
            done_cells[key] = rows_for_cell(key, args)
            print(f"  {done_cells[key][-1]['fits']}, {time.perf_counter() - began:.0f} s", flush=True)
            write_atomic(rows_file, json.dumps(done_cells, indent=1))
        rows = [r for c in cells if c in done_cells for r in done_cells[c]]
        pending = sum(c not in done_cells for c in cells)
        text = markdown(rows, args, time.perf_counter() - start, pending)
        write_atomic(Path(args.out), text + "\n" + kept_notes(Path(args.out)))
    print(text)


if __name__ == "__main__":
    main()
