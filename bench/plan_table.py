"""Write docs/PLANNING.md: every OpenELM size on a few TPU slices, as elm-plan compiles them.

    python bench/plan_table.py                        # the default cells (size:slice pairs)
    python bench/plan_table.py --cells 270m:v5e-8 --out /tmp/t.md

Each cell is one ahead-of-time compile of the real train step (libtpu on this CPU): the paper's
recipe (global batch 2048 x 2048 tokens, the preset's remat and mesh) with ``--per-chip`` sequences
per chip per microbatch, gradient accumulation making up the rest of the global batch. A setup
that does not fit is planned again with the planner's first suggestion added, up to three times.
Compiles of the larger models take minutes each on a small machine: the table is rewritten after
every cell, so an interrupted run keeps what it finished (``--resume``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from elm_jax.config import from_config_dict  # noqa: E402
from elm_jax.errors import ConfigError  # noqa: E402
from elm_jax.presets import SIZES, openelm_config  # noqa: E402
from elm_jax.train import plan as plan_lib  # noqa: E402
from elm_jax.train import topology as topo_lib  # noqa: E402
from elm_jax.train.topology import GIB  # noqa: E402

# Each size on slices where the question is interesting (small chips for small models, larger
# slices for the 3B); every cell is one or two compiles of minutes on two CPU cores.
CELLS = ("270m:v5e-8", "450m:v5p-8", "1_1b:v5p-8", "3b:v5p-32", "1_1b:v5e-16", "3b:v5e-32",
         "270m:v6e-8", "450m:v5e-8", "3b:v5p-128")


def recipe(size: str, topology: topo_lib.Topology, per_chip: int, mesh_shards) -> plan_lib.Config:
    """The paper's config for ``size`` with ``per_chip`` sequences per chip per microbatch."""
    config = from_config_dict(openelm_config(size))
    shards = mesh_shards(config, topology)
    micro = max(1, config.train.batch_size // (per_chip * shards))
    return plan_lib.with_overrides(config, (("train.microbatches", micro),))


def batch_shards(config, topology) -> int:
    from elm_jax.parallel.mesh import mesh_shape

    data, fsdp, _ = mesh_shape(config.mesh, topology.chips)
    return data * fsdp


def cell(result: plan_lib.Plan, mfu: float) -> dict[str, str]:
    peak = result.peak_bytes / GIB
    how = "compiled" if result.compiled else ("XLA: out of HBM" if result.compiler_error
                                               else "state alone exceeds HBM")
    return {
        "mesh": "x".join(str(result.mesh_shape[a]) for a in ("data", "fsdp", "tensor")),
        "per chip": f"{result.per_chip_batch / result.config.train.microbatches:g} x "
                    f"{result.config.train.microbatches}",
        "remat": result.config.model.remat_policy,
        "state GiB": f"{result.state_bytes / GIB:.2f}",
        "temp GiB": "-" if result.temp_bytes is None else f"{result.temp_bytes / GIB:.2f}"
                    + ("" if result.compiled else " (XLA)"),
        "total GiB": f"{peak:.2f}" if result.compiled else f">= {peak:.2f}",
        "HBM GiB": f"{result.hbm_bytes / GIB:.0f}",
        "fits": "yes" if result.fits else f"no ({how})",
        f"s/step @{mfu:.0%}": f"{result.step_seconds(mfu):.2f}",
        "compile s": "-" if result.compile_seconds is None else f"{result.compile_seconds:.0f}",
    }


def plan_row(size: str, topology: topo_lib.Topology, overrides: list, per_chip: int,
             mfu: float) -> dict:
    """One compile: the recipe with ``overrides`` (cumulative suggestions) on ``topology``; the
    row, plus under ``"next"`` the planner's first suggestion when it does not fit."""
    try:
        config = plan_lib.with_overrides(recipe(size, topology, per_chip, batch_shards),
                                         [tuple(o) for o in overrides])
    except ConfigError as err:
        return {"size": size, "slice": str(topology), "fits": f"not planned: {err}"}
    result = plan_lib.plan(config, topology)
    row = {"size": size, "slice": str(topology), **cell(result, mfu)}
    if not result.fits and result.suggestions:
        fix = result.suggestions[0]
        row["next"] = {"overrides": [list(o) for o in fix.overrides], "topology": fix.topology,
                       "flags": fix.flags()}
    return row


def markdown(rows: list[dict], args: argparse.Namespace, seconds: float, pending: int) -> str:
    import jax

    header = max((list(r) for r in rows), key=len)
    lines = [
        "# Will it fit? OpenELM on TPU slices",
        "",
        "Produced by `python bench/plan_table.py` (elm-plan's machinery): each row is the real",
        "train step (optimizer state, donation, attention kernel) compiled ahead of time for the",
        "slice through libtpu on a CPU, with XLA's per-chip memory analysis. Recipe: the paper's",
        f"global batch 2048 x 2048 tokens, {args.per_chip} sequences per chip per microbatch, gradient",
        "accumulation for the rest; the preset's remat and mesh (3B: full FSDP). A preset that does",
        "not fit is followed by rows that each add the planner's first suggestion for the row above",
        "(`+ flags`, cumulative), until one fits (at most three). Step times assume",
        f"{args.mfu:.0%} MFU on the published peak bf16 FLOP/s; they are not measurements.",
        "",
        f"Generated {datetime.date.today()} with jax {jax.__version__} on {platform.machine()} "
        f"({os.cpu_count()} CPUs, shared with other jobs: the compile times vary with their load)"
        + (f"; {pending} cell(s) still to plan." if pending else "."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(r.get(h, "-")) for h in header) + " |" for r in rows]
    lines += ["", "Reproduce one row: `elm-plan --config experiments/openelm_<size>.py --topology "
              "<slice> --config.train.microbatches=<n>` plus the row's `+` flags and those above it.", ""]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """A half-written table never replaces a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def plan_in_child(size: str, slice_name: str, overrides: list,
                  args: argparse.Namespace) -> dict | None:
    """``plan_row`` in a child process, killed when its host memory passes ``--max-host-gib``
    (compiling the larger models takes many GiB of RAM, and this machine is shared); None then."""
    argv = [sys.executable, __file__, "--one", f"{size}:{slice_name}", "--overrides",
            json.dumps(overrides), "--per-chip", str(args.per_chip), "--mfu", str(args.mfu)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    peak = 0.0
    while child.poll() is None:
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
            peak = max(peak, int(status.split("VmRSS:")[1].split()[0]) / 2 ** 20)
        except (OSError, IndexError):
            pass
        if peak > args.max_host_gib:
            child.kill()
            child.wait()
            return None
        time.sleep(2)
    found = [line for line in child.stdout.read().splitlines() if line.startswith("ROW ")]
    if child.returncode or not found:
        raise SystemExit(f"planning {size}:{slice_name} {overrides} failed (exit {child.returncode})")
    return json.loads(found[-1][len("ROW "):])


def rows_for_cell(size: str, slice_name: str, args: argparse.Namespace,
                  follow_ups: int = 3) -> list[dict]:
    """The preset's row, then while it does not fit, the planner's first suggestion applied on top
    of the previous setup (so the last row is the whole recipe of changes), at most ``follow_ups``.
    Every compile runs in a fresh process, so one cell's compiles do not pile up in memory."""
    rows: list[dict] = []
    overrides: list = []
    setup = "preset"
    for _ in range(follow_ups + 1):
        row = plan_in_child(size, slice_name, overrides, args)
        if row is None:
            rows.append({"size": size, "slice": slice_name, "setup": setup,
                         "fits": f"not planned: the compile passed {args.max_host_gib:g} GiB of "
                                 "host RAM"})
            break
        fix = row.pop("next", None)
        rows.append({"size": size, "slice": row.pop("slice"), "setup": setup, **row})
        if fix is None:
            break
        overrides = overrides + fix["overrides"]
        slice_name = fix["topology"] or slice_name
        setup = "+ " + fix["flags"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default=",".join(CELLS), help="size:slice pairs, e.g. 3b:v5p-32")
    p.add_argument("--per-chip", type=int, default=16, help="sequences per chip per microbatch")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--out", default=str(REPO / "docs" / "PLANNING.md"))
    p.add_argument("--max-host-gib", type=float, default=12.0,
                   help="stop a cell whose compile needs more host RAM than this")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells already in the rows file next to --out")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one compile, print its row
    p.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)  # with --one: JSON pairs
    args = p.parse_args()
    if args.one:
        size, name = args.one.split(":")
        row = plan_row(size, topo_lib.parse(name), json.loads(args.overrides), args.per_chip,
                       args.mfu)
        print("ROW " + json.dumps(row))
        return
    cells = [c.split(":") for c in args.cells.split(",")]
    bad = [c for c in cells if len(c) != 2 or c[0] not in SIZES]
    if bad:
        p.error(f"cells must be size:slice with size in {', '.join(SIZES)}; got {bad}")
    rows_file = Path(args.out).with_suffix(".rows.json")
    done_cells = json.loads(rows_file.read_text()) if args.resume and rows_file.exists() else {}
    start = time.perf_counter()
    for count, (size, name) in enumerate(cells, 1):
        key = f"{size}:{name}"
        if key not in done_cells:
            began = time.perf_counter()
            print(f"[{count}/{len(cells)}] {key} ...", flush=True)
            done_cells[key] = rows_for_cell(size, name, args)
            print(f"  {done_cells[key][-1]['fits']}, {time.perf_counter() - began:.0f} s", flush=True)
            write_atomic(rows_file, json.dumps(done_cells, indent=1))
        rows = [r for c in cells if f"{c[0]}:{c[1]}" in done_cells for r in done_cells[f"{c[0]}:{c[1]}"]]
        pending = sum(f"{c[0]}:{c[1]}" not in done_cells for c in cells)
        text = markdown(rows, args, time.perf_counter() - start, pending)
        write_atomic(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
