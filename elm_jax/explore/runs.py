"""Read training runs back: ``config.json`` and ``metrics.jsonl`` of many run directories, curves
aligned by step, tokens, FLOPs or fraction of the run.

A resumed run appends to ``metrics.jsonl``, so a step can appear twice (the killed process logged
it, then the resumed one logged it again from an older checkpoint); ``lineage`` keeps only the
records of the history that reached the end.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elm_jax.common_types import CONFIG_FILE, METRICS_FILE
from elm_jax.config import Config, from_config_dict
from elm_jax.errors import ConfigError
from elm_jax.explore.costs import model_costs

ALIGNMENTS = ("step", "tokens", "flops", "fraction")


def lineage(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records in file order, minus those a later resume rewound past."""
    kept: list[dict[str, Any]] = []
    for record in records:
        while kept and kept[-1]["step"] >= record["step"]:
            kept.pop()
        kept.append(dict(record))
    return kept


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lineage of a ``metrics.jsonl`` (empty when the run has not logged yet). A torn last line
    (the process died mid-write) is dropped; any other bad line is an error naming the file."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ConfigError(f"{path}:{number} is not a JSON metrics record; the file is damaged") from None
    return lineage(records)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory: its typed config and the records of its surviving history."""

    path: Path
    config: Config
    records: tuple[dict[str, Any], ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def tokens_per_step(self) -> int:
        return self.config.train.batch_size * self.config.data.seq_len

    @property
    def flops_per_token(self) -> float:
        """Training FLOPs per token (3x forward, attention at the run's sequence length)."""
        return model_costs(self.config.model, seq_len=self.config.data.seq_len).flops_per_token()

    @property
    def last_step(self) -> int:
        return self.records[-1]["step"] if self.records else 0

    @property
    def finished(self) -> bool:
        return self.last_step >= self.config.train.steps

    def final(self, key: str) -> float | None:
        """The last logged value of ``key`` (e.g. ``val_loss``, ``loss``), or None."""
        values = [r[key] for r in self.records if isinstance(r.get(key), (int, float))]
        return float(values[-1]) if values else None

    def curve(self, key: str = "val_loss", x: str = "tokens") -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of every record holding ``key``, ``x`` in ``ALIGNMENTS``."""
        if x not in ALIGNMENTS:
            raise ConfigError(f"alignment {x!r} is unknown; choose one of {', '.join(ALIGNMENTS)}")
        rows = [r for r in self.records if isinstance(r.get(key), (int, float))]
        steps = np.array([r["step"] for r in rows], np.float64)
        scale = {"step": 1.0, "tokens": self.tokens_per_step,
                 "flops": self.tokens_per_step * self.flops_per_token,
                 "fraction": 1.0 / self.config.train.steps}[x]
        return steps * scale, np.array([r[key] for r in rows], np.float64)

    def training_seconds(self) -> float:
        """Wall time of the training steps, from the logged step times (the first step, which
        compiles, evaluations and time lost to a kill are not counted)."""
        total, previous = 0.0, 0
        for record in self.records:
            if isinstance(record.get("step_time"), (int, float)):
                total += record["step_time"] * (record["step"] - previous)
            previous = record["step"]
        return total


def load_run(path: str | Path) -> Run:
    """A run directory written by ``elm-train`` (or a sweep); ``FileNotFoundError`` without config."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found; is {path} a training run directory?")
    config = from_config_dict(json.loads(config_path.read_text()))
    return Run(path=path, config=config, records=tuple(read_metrics(path / METRICS_FILE)))


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [load_run(p) for p in paths]


def mean_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation of several curves on the x values they share (curves of one
    sweep log at the same steps; others are interpolated onto the first curve's x within the
    range they all cover)."""
    if not curves:
        raise ConfigError("no curves to average")
    lo = max(x.min() for x, _ in curves if x.size)
    hi = min(x.max() for x, _ in curves if x.size)
    grid = curves[0][0][(curves[0][0] >= lo) & (curves[0][0] <= hi)]
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    std = ys.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(grid)
    return grid, ys.mean(axis=0), std
