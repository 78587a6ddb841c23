"""Normalised records -> token ids with a trainable flag per token -> rows of the batch contract.

Text is tokenized as lm-eval tokenizes a context and its continuation (``encode_pair``): a run of
text pieces is encoded as one string, each piece's tokens being those it adds, and the trailing
whitespace of a piece moves to the next, so the prompt/response boundary tokenizes as at scoring
time. The tokenizer's BOS / EOS strings in rendered chat text become their ids. A sequence starts
with BOS; the target of each position is trained on when the token it predicts is.

Too long: the prompt (what precedes the first trained token) keeps its last
``finetune.max_prompt_tokens`` tokens, then loses tokens from its start until the sequence fits,
then the end is cut; a sequence left with nothing to train on is dropped (and counted).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from elm_jax.data.stages import batch_row
from elm_jax.finetune.chat import ChatTemplate, Piece
from elm_jax.finetune.dpo import CHOSEN, REJECTED


@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # int32, BOS first
    trainable: np.ndarray  # bool per token

    def __len__(self) -> int:
        return len(self.ids)


class Encoder:
    """Turns normalised records into ``Encoded`` sequences with one tokenizer and chat template."""

    def __init__(self, tokenizer: Any, template: ChatTemplate | None = None):
        self.tokenizer = tokenizer
        self.template = template
        specials = {tokenizer.id_to_piece(i): i for i in (tokenizer.bos_id, tokenizer.eos_id)}
        self._specials = specials
        self._split = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")

    def _text_run(self, run: list[Piece]) -> tuple[list[int], list[bool]]:
        """Token ids of consecutive text pieces encoded as one string, each flagged as its piece."""
        ids: list[int] = []
        flags: list[bool] = []
        text = ""
        for i, (piece, train) in enumerate(run):
            if i + 1 < len(run):  # trailing whitespace goes with the next piece
                kept = piece.rstrip()
                run[i + 1] = (piece[len(kept):] + run[i + 1][0], run[i + 1][1])
                piece = kept
            text += piece
            now = list(self.tokenizer.encode(text, bos=False, eos=False))
            same = next((k for k, (a, b) in enumerate(zip(ids, now)) if a != b), min(len(ids), len(now)))
            ids, flags = now, flags[:same] + [train] * (len(now) - same)
        return ids, flags

    def pieces(self, pieces: Sequence[tuple[str | int, bool]]) -> Encoded:
        """BOS, then the pieces: texts (BOS / EOS strings in them become ids) or token ids."""
        ids, flags = [self.tokenizer.bos_id], [False]
        run: list[Piece] = []

        def flush() -> None:
            got = self._text_run(run)
            ids.extend(got[0])
            flags.extend(got[1])
            run.clear()

        for piece, train in pieces:
            parts = [piece] if isinstance(piece, int) else [p for p in self._split.split(piece) if p]
            for part in parts:
                if isinstance(part, str) and part not in self._specials:
                    run.append((part, train))
                    continue
                flush()
                ids.append(part if isinstance(part, int) else self._specials[part])
                flags.append(train)
        flush()
        return Encoded(np.asarray(ids, np.int32), np.asarray(flags, bool))

    def sft(self, record: Mapping[str, Any]) -> Encoded:
        """A prompt / response record (EOS ends the response) or a chat."""
        if "messages" in record:
            return self.pieces(self.template.pieces(record["messages"]))
        return self.pieces([(record["prompt"], False), (record["response"], True),
                            (self.tokenizer.eos_id, True)])

    def pair(self, record: Mapping[str, Any]) -> tuple[Encoded, Encoded]:
        """The chosen and the rejected sequence of a preference record."""
        prompt = self.template.render(record["messages"], generation_prompt=True)
        out = []
        for side in ("chosen", "rejected"):
            whole = self.template.render([*record["messages"], record[side]], generation_prompt=False)
            out.append(self.pieces([(prompt, False), (whole[len(prompt):], True)]))
        return out[0], out[1]


def fit(seq: Encoded, limit: int, max_prompt: int = 0) -> Encoded | None:
    """``seq`` cut to at most ``limit`` tokens (prompt first, from its start; then the end); None
    when nothing trainable is left."""
    trained = np.flatnonzero(seq.trainable)
    if not trained.size:
        return None
    first = int(trained[0])
    keep = np.arange(len(seq))
    prompt = keep[1:first]
    if max_prompt:
        prompt = prompt[-max_prompt:] if len(prompt) > max_prompt else prompt
    rest = keep[first:]
    drop = max(0, 1 + len(prompt) + len(rest) - limit)
    prompt = prompt[min(drop, len(prompt)):]
    keep = np.concatenate([[0], prompt, rest])[:limit]
    cut = Encoded(seq.ids[keep], seq.trainable[keep])
    return cut if cut.trainable[1:].any() else None


def example(seq: Encoded) -> dict[str, np.ndarray]:
    """One sequence's next-token pairs: ``inputs``, ``targets``, ``loss_mask``."""
    return {"inputs": seq.ids[:-1], "targets": seq.ids[1:],
            "loss_mask": seq.trainable[1:].astype(np.float32)}


def row(seqs: Sequence[Encoded], seq_len: int, pad_id: int,
        segments: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Sequences packed into one row (segment ids from 1, positions restarting), then padding."""
    inputs = np.full(seq_len, pad_id, np.int32)
    targets = np.full(seq_len, pad_id, np.int32)
    mask = np.zeros(seq_len, np.float32)
    segment_ids = np.zeros(seq_len, np.int32)
    positions = np.zeros(seq_len, np.int32)
    start = 0
    for index, seq in enumerate(seqs):
        pairs = example(seq)
        end = start + len(pairs["inputs"])
        if end > seq_len:
            raise ValueError(f"sequences of {end} positions do not fit a row of {seq_len}")
        inputs[start:end], targets[start:end] = pairs["inputs"], pairs["targets"]
        mask[start:end] = pairs["loss_mask"]
        segment_ids[start:end] = segments[index] if segments else index + 1
        positions[start:end] = np.arange(end - start)
        start = end
    return batch_row(inputs=inputs, targets=targets, loss_mask=mask, segment_ids=segment_ids,
                     positions=positions)


def pair_row(chosen: Encoded, rejected: Encoded, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A preference row: the chosen sequence as segment 1, the rejected one as segment 2."""
    return row([chosen, rejected], seq_len, pad_id, segments=(CHOSEN, REJECTED))
