"""A sweep: a base experiment, axes to vary, optionally every cell matched to the base's cost.

A sweep file is a Python file whose ``get_config(arg)`` returns an ``ml_collections.ConfigDict``::

    sweep.name = "layerwise_vs_uniform"
    sweep.base = <an experiment ConfigDict, as experiments/*.py return>
    sweep.axes = [{"field": "schedule", "values": [{"family": "openelm_linear", ...}, ...]},
                  {"field": "train.seed", "values": [0, 1, 2]}]
    sweep.match = {"cost": "params", "convention": "non_embedding", "tolerance": 0.01,
                   "knob": "ffn_scale"}          # optional; see elm_jax.explore.solver
    sweep.compare = {"pair_by": "train.seed", "reference": "openelm_linear"}  # optional

Cells are the product of the axes, named from their values (``openelm_linear-seed0``), and each
runs in ``<out>/<name>-<hash of its config>``: the same sweep always maps to the same directories
(so it resumes), and an edited one to new directories (so nothing is mixed up).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elm_jax.common_types import CHECKPOINTS_DIR
from elm_jax.config import Config, default_config, from_config_dict, to_config_dict
from elm_jax.errors import ConfigError
from elm_jax.explore.costs import model_costs
from elm_jax.explore.runs import load_run
from elm_jax.explore.schedules import SCHEDULE_FIELDS, Schedule, apply, schedule_from_spec
from elm_jax.explore.solver import Match, match_cost

SCHEDULE_AXIS = "schedule"
SWEEP_KEYS = ("name", "description", "base", "axes", "match", "compare")
MATCH_DEFAULTS = {"cost": "params", "convention": "total", "tolerance": 0.01, "knob": "scale"}
ALWAYS_DIFFER = ("name", "train.run_dir")  # set per cell



@dataclasses.dataclass(frozen=True)
class Axis:
    field: str  # "schedule" or a dotted config field such as "train.seed"
    values: tuple[Any, ...]

    def label(self, value: Any) -> str:
        """``seed0``, ``peak_lr0.003``, ``ffn_multipliers1,3``: safe in a directory name."""
        if self.field == SCHEDULE_AXIS:
            return schedule_from_spec(value).name
        values = value if isinstance(value, (list, tuple)) else (value,)
        text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
        return re.sub(r"[^\w.,+-]", "_", f"{self.field.rsplit('.', 1)[-1]}{text}")

    def fields(self) -> tuple[str, ...]:
        """Config fields this axis may change."""
        if self.field == SCHEDULE_AXIS:
            return tuple(f"model.{f}" for f in SCHEDULE_FIELDS)
        return (self.field,)


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    base: Config
    axes: tuple[Axis, ...]
    match: dict[str, Any] | None
    pair_by: str | None
    reference: str | None
    source: str  # "path.py[:arg]" the sweep was loaded from (what launched cells load again)

    @property
    def knob_fields(self) -> tuple[str, ...]:
        if not self.match:
            return ()
        if self.match["knob"] == "model_dim":
            return ("model.model_dim",)
        return ("model.qkv_multipliers", "model.ffn_multipliers")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid, with its validated config (run directory set) and how it was built."""

    name: str
    labels: dict[str, str]  # axis field -> label of this cell's value
    values: dict[str, Any]  # axis field -> the value itself
    config: Config
    match: Match | None
    differs: dict[str, tuple[Any, Any]]  # field -> (base value, cell value)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.train.run_dir)

    @property
    def tokens(self) -> int:
        train = self.config.train
        return train.steps * train.batch_size * self.config.data.seq_len


def load_config_file(source: str) -> Any:
    """``get_config(arg)`` of a sweep or experiment file ``path.py[:arg]`` (the ``--config`` convention)."""
    path, _, arg = source.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"sweep file {path} not found; see experiments/ablations/ for examples")
    spec = importlib.util.spec_from_file_location("elm_sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def parse_sweep(raw: Any, source: str) -> Sweep:
    """The typed sweep of a sweep file's ConfigDict (or dict); ``ConfigError`` names what is wrong."""
    raw = {k: _plain(v) for k, v in (raw.items() if hasattr(raw, "items") else dict(raw).items())}
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key(s) {unknown}; known: {', '.join(SWEEP_KEYS)}")
    if not raw.get("base") or not raw.get("axes"):
        raise ConfigError("a sweep needs 'base' (an experiment config) and 'axes' (a list of "
                          "{'field': ..., 'values': [...]})")
    axes = []
    for i, axis in enumerate(raw["axes"]):
        if not isinstance(axis, Mapping) or set(axis) != {"field", "values"} or not axis["values"]:
            raise ConfigError(f"sweep axis {i} = {axis!r} is invalid: expected {{'field': name, "
                              "'values': [at least one value]}")
        axes.append(Axis(str(axis["field"]), tuple(axis["values"])))
    fields = [a.field for a in axes]
    if len(set(fields)) != len(fields):
        raise ConfigError(f"sweep axes repeat a field: {fields}")
    match = None
    if raw.get("match"):
        extra = sorted(set(raw["match"]) - set(MATCH_DEFAULTS))
        if extra:
            raise ConfigError(f"unknown match key(s) {extra}; known: {', '.join(MATCH_DEFAULTS)}")
        match = {**MATCH_DEFAULTS, **raw["match"]}
    compare = dict(raw.get("compare") or {})
    pair_by = compare.pop("pair_by", "train.seed" if "train.seed" in fields else None)
    reference = compare.pop("reference", None)
    if compare:
        raise ConfigError(f"unknown compare key(s) {sorted(compare)}; known: pair_by, reference")
    if pair_by is not None and pair_by not in fields:
        raise ConfigError(f"compare.pair_by {pair_by!r} is not one of the axes {fields}")
    return Sweep(name=str(raw.get("name") or Path(source.partition(":")[0]).stem),
                 description=str(raw.get("description") or ""), base=from_config_dict(raw["base"]),
                 axes=tuple(axes), match=match, pair_by=pair_by, reference=reference, source=source)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.seed": 0, ...}`` of a nested mapping (lists of sources stay one value)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set(raw: dict[str, Any], field: str, value: Any) -> None:
    *sections, name = field.split(".")
    node = raw
    for section in sections:
        if not isinstance(node.get(section), dict):
            raise ConfigError(f"sweep axis field {field!r} is not a config field (no section {section!r})")
        node = node[section]
    if name not in node:
        raise ConfigError(f"sweep axis field {field!r} is not a config field; known in that "
                          f"section: {', '.join(sorted(node))}")
    node[name] = value


def schedule_of(model) -> Schedule:
    """The schedule a model config already has (a pair stays ``openelm_linear``, lists ``explicit``)."""
    if model.num_query_heads is not None:
        return Schedule("explicit", ffn=model.ffn_multipliers, q_heads=model.num_query_heads,
                        kv_heads=model.num_kv_heads)
    if len(model.qkv_multipliers) == 2 and len(model.ffn_multipliers) == 2:
        return Schedule("openelm_linear", qkv=model.qkv_multipliers, ffn=model.ffn_multipliers)
    return Schedule("explicit", qkv=model.qkv_multipliers, ffn=model.ffn_multipliers)


def config_hash(config: Config) -> str:
    """Eight hex digits of the config's non-default fields (run directory aside): the cell's
    identity. Fields at their default do not count, so a field that a later elm_jax adds to the
    config (at its default) does not orphan the run directories of a finished sweep."""
    raw, default = _flat(to_config_dict(config).to_dict()), _flat(default_config().to_dict())
    changed = {k: v for k, v in raw.items() if k != "train.run_dir" and default.get(k) != v}
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def expand(sweep: Sweep, out_dir: str | Path) -> list[Cell]:
    """Every cell of the grid, solved and validated; ``ConfigError`` if a cell differs from the base
    in a field that is not swept (the pre-flight check) or if two cells share a name."""
    base_raw = to_config_dict(sweep.base).to_dict()
    base_flat = flatten(base_raw)
    cells = []
    for combo in itertools.product(*(axis.values for axis in sweep.axes)):
        raw = copy.deepcopy(base_raw)
        schedule = None
        for axis, value in zip(sweep.axes, combo):
            if axis.field == SCHEDULE_AXIS:
                schedule = schedule_from_spec(value)
            else:
                _set(raw, axis.field, value)
        config = from_config_dict(raw)
        model, solved = _shape(sweep, config, schedule)
        labels = {axis.field: axis.label(v) for axis, v in zip(sweep.axes, combo)}
        name = "-".join(labels.values())
        config = dataclasses.replace(config, model=model, name=f"{sweep.name}/{name}")
        run_dir = f"{str(out_dir).rstrip('/')}/{name}-{config_hash(config)}"  # gs:// stays intact
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, run_dir=run_dir))
        config.validate()
        flat = flatten(to_config_dict(config).to_dict())
        differs = {k: (base_flat.get(k), v) for k, v in flat.items() if base_flat.get(k) != v}
        cells.append(Cell(name, labels, {a.field: v for a, v in zip(sweep.axes, combo)}, config,
                          solved, differs))
    _preflight(sweep, cells)
    return cells


def _shape(sweep: Sweep, config: Config, schedule: Schedule | None):
    """The cell's model: its schedule applied, and with ``match`` solved to the base's cost."""
    if not sweep.match:
        return (config.model if schedule is None else apply(config.model, schedule)), None
    m = sweep.match
    solved = match_cost(sweep.base.model, schedule or schedule_of(config.model),
                        seq_len=config.data.seq_len, cost=m["cost"], convention=m["convention"],
                        knob=m["knob"], tolerance=float(m["tolerance"]), base=config.model)
    return solved.model, solved


def _preflight(sweep: Sweep, cells: list[Cell]) -> None:
    allowed = set(ALWAYS_DIFFER) | set(sweep.knob_fields)
    for axis in sweep.axes:
        allowed |= set(axis.fields())
    for cell in cells:
        stray = sorted(set(cell.differs) - allowed)
        if stray:
            raise ConfigError(f"cell {cell.name} differs from the base in field(s) that are not swept: "
                              f"{', '.join(stray)}; only {', '.join(sorted(allowed))} may differ")
    names = [c.name for c in cells]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"cells {repeated} share a name; give the schedules distinct 'label's")


def cell_by_name(cells: list[Cell], name: str) -> Cell:
    for cell in cells:
        if cell.name == name:
            return cell
    raise ConfigError(f"no cell {name!r} in this sweep; cells: {', '.join(c.name for c in cells)}")


def cell_experiment(reference: str) -> Any:
    """The ConfigDict of one cell, from ``"path.py[:arg]@cell"`` (``experiments/sweep_cell.py``)."""
    source, sep, name = reference.rpartition("@")
    if not sep or not source:
        raise ConfigError(f"sweep cell {reference!r} is invalid: expected path/to/sweep.py[:arg]@cell")
    sweep = parse_sweep(load_config_file(source), source)
    return to_config_dict(cell_by_name(expand(sweep, f"runs/sweeps/{sweep.name}"), name).config)


def status(cell: Cell) -> str:
    """``done`` (logged its last step), ``partial`` (has a checkpoint to resume), ``started``
    (a run directory without checkpoint) or ``new``."""
    if not (cell.run_dir / "config.json").exists():
        return "new"
    if load_run(cell.run_dir).finished:
        return "done"
    checkpoints = cell.run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return "partial"
    return "started"


def cell_costs(cell: Cell) -> dict[str, float]:
    """Parameters (both conventions) and training FLOPs per token of a cell."""
    costs = model_costs(cell.config.model, seq_len=cell.config.data.seq_len)
    return {"params": costs.params("total"), "non_embedding_params": costs.params("non_embedding"),
            "flops_per_token": costs.flops_per_token()}
