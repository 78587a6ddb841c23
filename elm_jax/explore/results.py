"""A sweep's results table (one row per cell) and its grouped comparison over seeds.

Rows come from the cells' run directories alone (``config.json`` + ``metrics.jsonl``), so the table
can be rebuilt at any time, from a local sweep or from run directories copied back from a pod.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from typing import Any

from elm_jax.explore.runs import load_run
from elm_jax.explore.stats import Difference, Summary, paired_difference, summarize
from elm_jax.explore.sweep import SCHEDULE_AXIS, Cell, Sweep, cell_costs, status

METRICS = ("params", "non_embedding_params", "flops_per_token", "tokens", "flops", "val_loss",
           "train_loss", "wall_s", "tokens_per_s")


def collect(sweep: Sweep, cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """One row per cell: its axis values, status, costs and (when it ran) its final numbers."""
    rows = []
    for cell in cells:
        row: dict[str, Any] = {"cell": cell.name}
        for axis in sweep.axes:
            value = cell.values[axis.field]
            row[axis.field] = cell.labels[axis.field] if axis.field == SCHEDULE_AXIS else value
        row["group"] = cell_group(sweep, cell)
        row["status"] = status(cell)
        costs = cell_costs(cell)
        row |= {"params": costs["params"], "non_embedding_params": costs["non_embedding_params"],
                "flops_per_token": costs["flops_per_token"]}
        row |= dict.fromkeys(("tokens", "flops", "val_loss", "train_loss", "wall_s", "tokens_per_s"))
        if row["status"] != "new":
            run = load_run(cell.run_dir)
            tokens = run.last_step * run.tokens_per_step
            wall = run.training_seconds()
            row |= {"tokens": tokens, "flops": tokens * costs["flops_per_token"],
                    "val_loss": run.final("val_loss"), "train_loss": run.final("loss"),
                    "wall_s": wall, "tokens_per_s": tokens / wall if wall else None}
        row["run_dir"] = cell.config.train.run_dir
        rows.append(row)
    return rows


@dataclasses.dataclass(frozen=True)
class Group:
    """One group of finished cells (every axis but the pairing one fixed) and its comparison."""

    label: str
    summary: Summary
    difference: Difference | None  # against the reference group, paired; None for the reference


def cell_group(sweep: Sweep, cell: Cell) -> str:
    """The cell's group: its labels on every axis but the pairing one (``uniform``)."""
    return "-".join(cell.labels[a.field] for a in sweep.axes if a.field != sweep.pair_by) or "all"


def group_curves(sweep: Sweep, cells: Sequence[Cell], key: str = "val_loss",
                 x: str = "tokens") -> dict[str, list[tuple[Any, Any]]]:
    """``{group: [(x, y) of each finished cell]}`` for plotting mean curves."""
    curves: dict[str, list[tuple[Any, Any]]] = {}
    for cell in cells:
        if status(cell) == "done":
            curves.setdefault(cell_group(sweep, cell), []).append(load_run(cell.run_dir).curve(key, x))
    return curves


def grouped(sweep: Sweep, rows: Sequence[dict[str, Any]], metric: str = "val_loss") -> list[Group]:
    """Finished cells grouped over the pairing axis (seeds): mean, standard deviation and the
    paired difference to the reference group (``compare.reference``, else the first group)."""
    values: dict[str, dict[Any, float]] = {}
    for row in rows:
        if row["status"] == "done" and row.get(metric) is not None:
            key = row[sweep.pair_by] if sweep.pair_by else row["cell"]
            values.setdefault(row["group"], {})[key] = float(row[metric])
    if not values:
        return []
    reference = sweep.reference if sweep.reference in values else next(iter(values))
    out = []
    for label, by_pair in values.items():
        difference = None
        if label != reference and sweep.pair_by and set(by_pair) & set(values[reference]):
            difference = paired_difference(values[reference], by_pair)
        out.append(Group(label, summarize(list(by_pair.values())), difference))
    return out


def reference_label(sweep: Sweep, groups: Sequence[Group]) -> str | None:
    labels = [g.label for g in groups]
    return sweep.reference if sweep.reference in labels else (labels[0] if labels else None)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.{digits}f}"
    return str(value)


def to_markdown(sweep: Sweep, rows: Sequence[dict[str, Any]], groups: Sequence[Group],
                metric: str = "val_loss") -> str:
    """The per-cell table, then the grouped comparison (paired over ``compare.pair_by``)."""
    head = ["cell", "status", "params", "non-emb params", "train GFLOP/token", "tokens", "val loss",
            "train loss", "wall s", "tokens/s"]
    lines = [f"## {sweep.name}: {len(rows)} cells", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["cell"], r["status"], f"{r['params']:,}", f"{r['non_embedding_params']:,}",
            f"{r['flops_per_token'] / 1e9:.4f}", _fmt(r["tokens"]), _fmt(r["val_loss"]),
            _fmt(r["train_loss"]), _fmt(r["wall_s"], 3), _fmt(r["tokens_per_s"], 3)]) + " |")
    if groups:
        reference = reference_label(sweep, groups)
        over = f"over {sweep.pair_by}" if sweep.pair_by else "per cell"
        lines += ["", f"### {metric} by group ({over}); differences paired, 95 % bootstrap interval", "",
                  f"| group | n | {metric} mean ± std | difference vs {reference} |", "|---|---|---|---|"]
        for g in groups:
            diff = "reference" if g.label == reference else "n/a (no pairs)" if g.difference is None else (
                f"{g.difference.mean:+.4f} [{g.difference.low:+.4f}, {g.difference.high:+.4f}] "
                f"(n={g.difference.n})")
            lines.append(f"| {g.label} | {g.summary.n} | {g.summary.mean:.4f} ± {g.summary.std:.4f} | "
                         f"{diff} |")
    return "\n".join(lines) + "\n"
