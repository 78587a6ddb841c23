"""The grain stages that read a ``StreamSource``: units front to back, interleaved, window-shuffled.

See ``elm_jax.data.streams`` for the reading order and why these sources are not shuffled
document by document.
"""

from __future__ import annotations

import functools
from typing import Any

import grain

from elm_jax.data.streams import StreamSource, Unit
from elm_jax.errors import DataError

CYCLE = 4  # units read at once by each worker
WINDOW = 512  # documents shuffled together (held in memory: WINDOW x document size per worker)


class UnitDataset(grain.IterDataset):
    """The records of one unit as ``((file, part, position), raw)``."""

    def __init__(self, source: StreamSource, unit: Unit):
        super().__init__()
        self.source, self.unit = source, unit

    def __iter__(self) -> grain.DatasetIterator:
        return _UnitIterator(self.source, self.unit)

    def __str__(self) -> str:
        return f"UnitDataset({self.source.name}, {self.unit})"


class _UnitIterator(grain.DatasetIterator):
    """State: the position of the next record to read."""

    def __init__(self, source: StreamSource, unit: Unit):
        super().__init__()
        self._source, self._unit = source, unit
        self._next, self._records = 0, None

    def __next__(self) -> tuple[tuple[int, int, int], Any]:
        if self._records is None:
            self._records = self._source.records(self._unit, self._next)
        position, raw = next(self._records)
        self._next = position + 1
        return (self._unit.file, self._unit.part, position), raw

    def get_state(self) -> dict[str, int]:
        return {"next": self._next}

    def set_state(self, state: dict[str, int]) -> None:
        self.close()
        self._next = int(state["next"])

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None


def stream_documents(source: StreamSource, *, seed: int, process_index: int, process_count: int,
                     num_epochs: int | None) -> grain.IterDataset:
    """This process's documents of ``source``: shuffled units, interleaved, window-shuffled."""
    units = source.units(min_units=process_count)
    if not units:
        raise DataError(f"source {source.name!r} has no documents (its Parquet files have no rows)")
    mine = grain.MapDataset.source(units).shuffle(seed=seed)[process_index::process_count]
    datasets = mine.repeat(num_epochs).map(functools.partial(UnitDataset, source))
    ds = grain.experimental.InterleaveIterDataset(datasets, cycle_length=CYCLE)
    return grain.experimental.WindowShuffleIterDataset(ds, window_size=WINDOW, seed=seed)


def first_documents(source: StreamSource, count: int) -> grain.IterDataset:
    """The first ``count`` documents in file order (the pipeline's up-front probe)."""
    datasets = grain.MapDataset.source(source.units()).map(functools.partial(UnitDataset, source))
    ds = grain.experimental.InterleaveIterDataset(datasets, cycle_length=1)
    return grain.experimental.LimitIterDataset(ds, count=count)
