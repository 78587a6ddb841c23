"""Fine-tuning batches: normalised records -> shuffled, this process's share, repeated -> encoded
-> rows -> batches, as a checkpointable grain iterator with the pretraining pipeline's fields.

SFT rows hold one sequence each (``data.mode='pad'``) or several, first-fit packed with segment ids
(``'pack'``); DPO rows hold one pair each (``elm_jax.finetune.dpo``). Records are shuffled with
``data.shuffle_seed`` and reshuffled every epoch; the iterator state is saved with each checkpoint,
so a resumed run continues the stream exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from elm_jax.config import Config
from elm_jax.data.stages import CheckedStateIterDataset, batch_row
from elm_jax.errors import ConfigError, DataError
from elm_jax.finetune import encode
from elm_jax.finetune.encode import Encoder
from elm_jax.finetune.records import Record

PACKING_BINS = 8  # rows first-fit packing fills at once


def _sft(record: Record, *, encoder: Encoder, limit: int, max_prompt: int) -> encode.Encoded | None:
    return encode.fit(encoder.sft(record), limit, max_prompt)


def _pair(record: Record, *, encoder: Encoder, config: Config) -> dict[str, np.ndarray] | None:
    """One preference row; each side gets half of the row (plus the shared first position)."""
    half = config.data.seq_len // 2 + 1
    sides = [encode.fit(seq, half, config.finetune.max_prompt_tokens)
             for seq in encoder.pair(record)]
    if None in sides:
        return None
    return encode.pair_row(*sides, config.data.seq_len, config.data.pad_id)


def _row(seq: encode.Encoded, *, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    return encode.row([seq], seq_len, pad_id)


def _from_packed(packed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batch_row(inputs=packed["inputs"], targets=packed["targets"],
                     loss_mask=packed["loss_mask"], segment_ids=packed["inputs_segment_ids"],
                     positions=packed["inputs_positions"])


def fingerprint(config: Config) -> str:
    """Hash of what the stream depends on (stored with the iterator state)."""
    parts = {"data": dataclasses.asdict(config.data), "finetune": dataclasses.asdict(config.finetune),
             "batch_size": config.train.batch_size}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclasses.dataclass
class FinetuneData:
    """The ``make_iterator`` of a fine-tuning run (the training loop's ``IteratorFactory``)."""

    records: Mapping[str, Sequence[Record]]  # split -> normalised records
    encoder: Encoder

    def __call__(self, config: Config, split: str, *, process_index: int | None = None,
                 process_count: int | None = None) -> grain.DatasetIterator:
        records = self.records.get(split)
        if not records:
            raise DataError(f"no fine-tuning records for the {split} split; set "
                            f"finetune.{split}_file" + (" or train.eval_batches=0"
                                                        if split == "validation" else ""))
        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        if config.train.batch_size % count or len(records) < count:
            raise ConfigError(f"train.batch_size={config.train.batch_size} and the {len(records)} "
                              f"{split} records must split over {count} processes")
        ds = (grain.MapDataset.source(list(records)).shuffle(seed=config.data.shuffle_seed)
              [index::count].repeat(None).to_iter_dataset())
        ds = self._rows(config, ds).batch(config.train.batch_size // count, drop_remainder=True)
        meta = {"split": split, "num_workers": 0, "process_index": index, "process_count": count,
                "fingerprint": fingerprint(config)}
        return iter(CheckedStateIterDataset(ds, meta))

    def _rows(self, config: Config, ds: grain.IterDataset) -> grain.IterDataset:
        seq_len, pad_id = config.data.seq_len, config.data.pad_id
        if config.finetune.method == "dpo":
            rows = ds.map(functools.partial(_pair, encoder=self.encoder, config=config))
            return rows.filter(_kept)
        seqs = ds.map(functools.partial(_sft, encoder=self.encoder, limit=seq_len + 1,
                                        max_prompt=config.finetune.max_prompt_tokens)).filter(_kept)
        if config.data.mode == "pad":
            return seqs.map(functools.partial(_row, seq_len=seq_len, pad_id=pad_id))
        lengths = {"inputs": seq_len, "targets": seq_len, "loss_mask": seq_len}
        packed = grain.experimental.FirstFitPackIterDataset(
            seqs.map(encode.example), length_struct=lengths, num_packing_bins=PACKING_BINS,
            shuffle_bins=False)
        return packed.map(_from_packed)


def _kept(item: Any) -> bool:
    return item is not None


def check_encodes(data: FinetuneData, config: Config, split: str = "train",
                  probe: int = 64) -> None:
    """Fail now, not mid-run, when none of the first records fits a row with something to train."""
    limit = config.data.seq_len + 1 if config.finetune.method == "sft" else config.data.seq_len // 2 + 1
    records = list(data.records.get(split, ()))[:probe]
    encoded = (data.encoder.pair(r) if config.finetune.method == "dpo" else (data.encoder.sft(r),)
               for r in records)
    if records and not any(all(encode.fit(s, limit, config.finetune.max_prompt_tokens) is not None
                               for s in seqs) for seqs in encoded):
        raise DataError(f"none of the first {len(records)} {split} records keeps a response token "
                        f"within data.seq_len={config.data.seq_len}; raise data.seq_len or lower "
                        "finetune.max_prompt_tokens")

