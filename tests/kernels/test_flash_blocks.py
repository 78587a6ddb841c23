"""Block bookkeeping shared by both kernels, against a brute-force NumPy mask.

For every (query block, KV block) tile: a tile the kernels skip must be fully masked, a tile they
run without a mask must be fully visible to every real query row, and with a causal mask and no
segments the kernels must skip every fully-masked tile (the saving the issue asks for).
"""

import itertools

import numpy as np
import pytest

from elm_jax.kernels import flash_common as fc


def _config(seq_len, padded_len, causal, blocks):
    return fc.FlashConfig(causal=causal, sm_scale=1.0, seq_len=seq_len, padded_len=padded_len,
                          groups=1, has_segments=False, blocks=blocks, interpret=True)


def _visible(seq_len, padded_len, causal):
    q = np.arange(padded_len)[:, None]
    k = np.arange(padded_len)[None, :]
    allowed = (k < seq_len) & (q >= 0)
    if causal:
        allowed &= k <= q
    return allowed


@pytest.mark.parametrize("seq_len,block_q,block_kv,causal", [
    (seq, bq, bk, causal)
    for seq, (bq, bk), causal in itertools.product(
        (64, 57, 128), ((16, 16), (32, 16), (16, 64)), (True, False))
])
def test_block_classification_matches_brute_force(seq_len, block_q, block_kv, causal):
    largest = max(block_q, block_kv)
    padded = -(-seq_len // largest) * largest
    cfg = _config(seq_len, padded, causal, fc.BlockSizes(block_q, block_kv))
    visible = _visible(seq_len, padded, causal)
    real_rows = np.arange(padded) < seq_len
    n_q, n_kv = padded // block_q, padded // block_kv
    for i, j in itertools.product(range(n_q), range(n_kv)):
        rows, cols = slice(i * block_q, (i + 1) * block_q), slice(j * block_kv, (j + 1) * block_kv)
        tile, tile_rows = visible[rows, cols], real_rows[rows]
        full_end, end = (int(x) for x in fc.kv_block_bounds(i, cfg, block_q, block_kv))
        start, full_start = (int(x) for x in fc.q_block_bounds(j, cfg, block_q, block_kv))
        for skipped, unmasked in ((j >= end, j < full_end), (i < start, i >= full_start)):
            if skipped:
                assert not tile.any(), (i, j)
            if unmasked:
                assert tile[tile_rows].all(), (i, j)
            if causal and tile.any():
                assert not skipped, (i, j)
        if causal and not tile.any():
            assert j >= end and i < start, (i, j)


def test_segments_force_the_mask_everywhere():
    cfg = fc.FlashConfig(causal=True, sm_scale=1.0, seq_len=64, padded_len=64, groups=1,
                         has_segments=True, blocks=fc.BlockSizes(16, 16), interpret=True)
    assert int(fc.kv_block_bounds(3, cfg, 16, 16)[0]) == 0
    assert int(fc.q_block_bounds(0, cfg, 16, 16)[1]) == 4


def test_block_sizes_validate_and_fit_short_sequences():
    with pytest.raises(ValueError, match="block_kv=48"):
        fc.BlockSizes(block_kv=48)
    with pytest.raises(ValueError, match="block_q=8"):
        fc.BlockSizes(block_q=8)
    fitted = fc.BlockSizes(128, 256).fitted(40)
    assert (fitted.block_q, fitted.block_kv, fitted.largest) == (64, 64, 64)
    assert fc.BlockSizes(128, 256).fitted(4096) == fc.BlockSizes(128, 256)
