"""Training metrics: JSONL + TensorBoard event files in the run directory, a tqdm bar, throughput and
MFU (model FLOPs over the devices' peak; "n/a" where we do not know the peak, e.g. on CPU).

In an object-store run directory (``gs://...``) ``metrics.jsonl`` is rewritten whole at most every
``URI_FLUSH_SECONDS`` (objects cannot be appended to; ``elm_jax.storage.LineLog``) and so are the
event files (tensorboardX's own GCS writer, through ``google-cloud-storage``); other URI schemes
get no event files, with one warning."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

from elm_jax.common_types import METRICS_FILE, TENSORBOARD_DIR, peak_flops_of
from elm_jax.storage import LineLog, as_path, is_uri

log = logging.getLogger(__name__)
URI_FLUSH_SECONDS = 30.0  # how often metrics reach an object store (and at the end of the run)


def peak_flops(device: jax.Device | None = None) -> float | None:
    """Peak bf16 FLOP/s of one device, or None when the chip is unknown (CPU)."""
    return peak_flops_of((device or jax.devices()[0]).device_kind)


def mfu(model_flops_per_sec: float, devices: Sequence[jax.Device] | None = None) -> float | None:
    """Model FLOP/s as a fraction of the devices' summed peak (None if the peak is unknown)."""
    devices = list(devices or jax.devices())
    peak = peak_flops(devices[0])
    return None if peak is None else model_flops_per_sec / (peak * len(devices))


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the token distribution ``counts / counts.sum()``: the loss of a model that
    knows the token frequencies and nothing else, the bar a language model must clear."""
    p = np.asarray(counts, np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def summarize(steps: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Fetch a log interval's per-step device metrics (one host sync) and average them; counts
    (``nonfinite``, ``target_tokens``) are summed."""
    fetched = jax.device_get(list(steps))
    out = {}
    for key in fetched[0]:
        values = np.asarray([m[key] for m in fetched], np.float64)
        out[key] = float(values.sum() if key in ("nonfinite", "target_tokens") else values.mean())
    return out


class Throughput:
    """Tokens/s, step time and MFU between two log points (wall clock, so host overhead counts)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.reset()

    def reset(self) -> None:
        self._time = time.perf_counter()
        self._steps = 0

    def step(self) -> None:
        self._steps += 1

    def measure(self) -> dict[str, Any]:
        """Call right after a host sync; starts the next interval."""
        elapsed = time.perf_counter() - self._time
        steps = max(self._steps, 1)
        tokens_per_sec = self.tokens_per_step * steps / elapsed
        util = mfu(tokens_per_sec * self.flops_per_token)
        self.reset()
        return {"step_time": elapsed / steps, "tokens_per_sec": tokens_per_sec,
                "model_tflops_per_sec": tokens_per_sec * self.flops_per_token / 1e12,
                "mfu": "n/a" if util is None else util}


class MetricsWriter:
    """One JSON object per logged step in ``metrics.jsonl`` (appended on resume, so a step logged
    twice means the run was resumed from before it), the same scalars as TensorBoard events, and a
    progress bar on a terminal; where no bar is drawn (a log file, CI, SLURM) one plain line per
    logged step instead (step, loss, tokens/s, ETA). Only process 0 writes."""

    def __init__(self, run_dir: str | os.PathLike, *, total_steps: int, start_step: int,
                 show_progress: bool | None = None):
        self.enabled = jax.process_index() == 0
        self._jsonl = self._tb = self._bar = None
        if not self.enabled:
            return
        run_dir = as_path(run_dir)
        self._total = total_steps
        self._flush_seconds = URI_FLUSH_SECONDS if is_uri(run_dir) else 0.0
        self._flushed = time.monotonic()
        self._jsonl = LineLog(run_dir / METRICS_FILE, flush_seconds=self._flush_seconds)
        self._tb = _event_writer(run_dir / TENSORBOARD_DIR)
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         disable=None if show_progress is None else not show_progress)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **record}
        self._jsonl.write_line(json.dumps(record))
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            if time.monotonic() - self._flushed >= self._flush_seconds:
                self._tb.flush()
                self._flushed = time.monotonic()
        shown = {k: record[k] for k in ("loss", "val_loss", "grad_norm", "tokens_per_sec", "mfu")
                 if k in record}
        self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()},
                              refresh=False)
        if self._bar.disable:
            self.message(plain_line(step, self._total, record))

    def message(self, text: str) -> None:
        """A line above the progress bar (printed by every caller on process 0)."""
        if self.enabled:
            self._bar.write(text)  # tqdm.write prints plainly when the bar is disabled

    def close(self) -> None:
        if self.enabled:
            self._bar.close()
            if self._tb is not None:
                self._tb.close()
            self._jsonl.close()


def _event_writer(directory) -> SummaryWriter | None:
    """TensorBoard events in ``directory``: local or ``gs://`` (None, with a warning, elsewhere)."""
    if not is_uri(directory):
        return SummaryWriter(os.fspath(directory))
    if os.fspath(directory).startswith("gs://"):
        try:
            return SummaryWriter(os.fspath(directory))
        except Exception as err:  # noqa: BLE001 (no google-cloud-storage, no credentials...)
            reason = f"{type(err).__name__}: {err}"
    else:
        reason = "tensorboardX writes only local and gs:// event files"
    log.warning("no TensorBoard events in %s (%s); metrics.jsonl still has every logged step",
                directory, reason)
    return None


def plain_line(step: int, total: int, record: Mapping[str, Any]) -> str:
    """``step 100/300: loss 4.123, val_loss 4.5, 12.3k tokens/s, ETA 0:03:12`` for log files."""
    parts = [f"{key} {record[key]:.4g}" for key in ("loss", "val_loss") if key in record]
    if "tokens_per_sec" in record:
        parts.append(f"{record['tokens_per_sec'] / 1e3:.1f}k tokens/s")
    if record.get("step_time"):
        eta = round(record["step_time"] * max(total - step, 0))
        parts.append(f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")
    return f"step {step}/{total}: " + ", ".join(parts)
