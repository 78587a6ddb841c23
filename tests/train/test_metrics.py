"""MFU peaks by device kind, "n/a" on CPU, and the unigram-entropy baseline by hand."""

import math
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from elm_jax.train.metrics import mfu, peak_flops, summarize, unigram_entropy


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12),
    ("TPU v5", 459e12), ("TPU v6 lite", 918e12), ("TPU v6e", 918e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
])
def test_peak_table(kind, peak):
    assert peak_flops(SimpleNamespace(device_kind=kind)) == peak


def test_mfu_is_unknown_on_cpu_and_a_fraction_on_known_chips():
    assert peak_flops(jax.devices()[0]) is None and mfu(1e12) is None
    h100s = [SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")] * 2
    assert mfu(989e12, h100s) == pytest.approx(0.5)


def test_unigram_entropy_by_hand():
    # frequencies 1/4, 1/4, 1/2 (and an unused id): H = 1.5 ln 2
    assert unigram_entropy(np.array([1, 1, 2, 0])) == pytest.approx(1.5 * math.log(2))


def test_summarize_averages_values_and_sums_counts():
    steps = [{"loss": np.float32(2.0), "nonfinite": np.int32(0), "target_tokens": np.float32(10)},
             {"loss": np.float32(4.0), "nonfinite": np.int32(1), "target_tokens": np.float32(6)}]
    assert summarize(steps) == {"loss": 3.0, "nonfinite": 1.0, "target_tokens": 16.0}
