"""The pipeline's own grain stages (everything else is stock grain).

``PiecesIterDataset`` turns documents into filtered token pieces. It is one stage rather than a
chain of grain maps because (a) pieces of many documents are encoded in one threaded SentencePiece
call, (b) an enormous document is cut lazily, piece by piece, (c) its counters travel inside the
iterator state, so they reach the main process through grain's worker processes and survive a
checkpoint, and (d) it stops a source whose every document is filtered out instead of spinning.
"""

from __future__ import annotations

import collections
import logging
import re
import unicodedata
import weakref
from typing import Any

import grain
import numpy as np

from elm_jax.common_types import BATCH_FIELDS
from elm_jax.data.records import BadRecord, RecordParser
from elm_jax.data.tokenizer import Tokenizer
from elm_jax.errors import CheckpointError, DataError

COUNTERS = (
    "documents",        # documents read
    "bad_records",      # skipped: not JSON / no text field (logged with file:line)
    "invalid_utf8",     # documents with invalid UTF-8, decoded with U+FFFD replacements
    "pieces",           # word pieces cut from documents
    "long_pieces",      # pieces cut further because their characters exceeded the cap
    "dropped_chars",    # pieces whose normalised text is shorter than data.min_chars
    "dropped_tokens",   # pieces with fewer than data.min_tokens tokens (BOS/EOS included)
    "emitted_pieces",   # pieces that passed both filters
    "emitted_tokens",   # their tokens
    "truncated_tokens",  # pad mode: tokens beyond seq_len + 1, cut off
)
STATE_KEY = "elm_counters"
DRY_LIMIT = 100_000  # documents in a row without one kept piece: the source is unusable
CHARS_PER_WORD_CAP = 32  # a piece longer than this many characters per word is cut further
LOG_BAD_RECORDS = 20  # per iterator; the rest are only counted

_PUNCT = re.compile(r"[^\w\s]+")
_log = logging.getLogger("elm_jax.data")


def normalized_length(text: str) -> int:
    """Length of the paper's normalised text: lower-cased, punctuation removed, whitespace collapsed."""
    return len(" ".join(_PUNCT.sub("", text.lower()).split()))


def passes_min_chars(text: str, min_chars: int) -> bool:
    """``normalized_length(text) >= min_chars``, looking at a prefix when that already decides it.

    Exact: lower-casing, punctuation removal and whitespace collapsing act character by character,
    so a prefix's normalised text is a prefix of the whole's.
    """
    if min_chars <= 0:
        return True
    if len(text) < min_chars and text.isascii():
        return False
    head = text[:4 * min_chars]
    if normalized_length(head) >= min_chars:
        return True
    return len(head) < len(text) and normalized_length(text) >= min_chars


_ASCII_SPACES = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.isspace() and re \\s accept


def _at_most_words(text: str, words: int) -> bool:
    """Cheap sufficient test that ``text`` has at most ``words`` words (counts whitespace in C)."""
    return text.isascii() and sum(text.count(c) for c in _ASCII_SPACES) < words


def word_pieces(text: str, words: int, max_chars: int):
    """Lazily cut ``text`` into pieces of at most ``words`` whitespace-separated words.

    Pieces keep the document's own whitespace (line breaks matter for verse and code). A piece
    longer than ``max_chars`` (a pathological "word") is cut into ``max_chars`` slices.
    """
    if _at_most_words(text, words):  # most documents: one piece, no regex
        matches = [text.strip()] if text.strip() else []
    else:
        matches = (m.group().rstrip() for m in re.finditer(r"(?:\S+\s*){1," + str(words) + "}", text))
    for piece in matches:
        if len(piece) <= max_chars:
            yield piece, False
        else:
            for start in range(0, len(piece), max_chars):
                yield piece[start:start + max_chars], True


class PiecesIterDataset(grain.IterDataset):
    """``(location, raw document)`` -> int32 token arrays ``[BOS, ..., EOS]`` that pass both filters.

    With ``nfc``, each document's text is NFC-normalised first, so the character filter and the
    tokenizer see composed characters (CoreNet's ``enable_nfc_normalization``).
    """

    def __init__(self, parent: grain.IterDataset, *, source: RecordParser, tokenizer: Tokenizer,
                 words_per_piece: int, min_chars: int, min_tokens: int, max_tokens: int | None,
                 batch_chars: int = 1 << 16, nfc: bool = False):
        super().__init__(parent)
        self.source = source
        self.tokenizer = tokenizer
        self.options = dict(words=words_per_piece, min_chars=min_chars, min_tokens=min_tokens,
                            max_tokens=max_tokens, batch_chars=batch_chars * max(1, tokenizer.num_threads),
                            nfc=nfc)

    def __iter__(self) -> grain.DatasetIterator:
        return _PiecesIterator(self._parent.__iter__(), self.source, self.tokenizer, **self.options)

    def __str__(self) -> str:
        return f"PiecesIterDataset(source={self.source.name}, {self.options})"


class _PiecesIterator(grain.DatasetIterator):
    """State: where the current tokenizer batch started (parent state before its first document,
    pieces of that document already used, counters then) and how many outputs of it were taken."""

    def __init__(self, parent, source, tokenizer, *, words, min_chars, min_tokens, max_tokens,
                 batch_chars, nfc):
        super().__init__(parent)
        self._nfc = nfc
        self._source, self._tok = source, tokenizer
        self._words, self._min_chars, self._min_tokens = words, min_chars, min_tokens
        self._max_tokens, self._batch_chars = max_tokens, batch_chars
        self._max_chars = words * CHARS_PER_WORD_CAP
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._dry = 0  # documents since the last kept piece
        self._logged = 0
        self._doc_state = None  # parent state before the document being cut
        self._doc_pieces = None  # generator over its pieces, None between documents
        self._doc_used = 0  # its pieces already taken
        self._skip_pieces = 0  # on restore: pieces of the reopened document to skip
        self._buffer: list[np.ndarray] = []
        self._pos = 0
        self._parent_done = False
        self._start = self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        in_doc = self._doc_pieces is not None
        return {"parent": self._doc_state if in_doc else self._parent.get_state(),
                "doc_used": self._doc_used if in_doc else 0,
                "counters": dict(self._counters), "dry": self._dry}

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._counters["invalid_utf8"] += 1
            return raw.decode("utf-8", errors="replace")

    def _open_document(self) -> bool:
        """Read the next document and start cutting it; False when the parent is exhausted."""
        reopening = self._skip_pieces > 0
        self._doc_state = self._parent.get_state()
        try:
            index, raw = next(self._parent)
        except StopIteration:
            return False
        saved = dict(self._counters) if reopening else None
        if not reopening:
            self._counters["documents"] += 1
            self._dry += 1
        try:
            text = self._source.parse(raw, self._decode)
        except BadRecord as bad:
            self._counters["bad_records"] += 1
            if self._logged < LOG_BAD_RECORDS:
                self._logged += 1
                _log.warning("skipped %s: %s", self._source.where(index), bad)
            text = ""
        if self._nfc:
            text = unicodedata.normalize("NFC", text)
        if saved is not None:
            self._counters = saved  # this document was counted before the checkpoint
        self._doc_pieces = word_pieces(text, self._words, self._max_chars)
        self._doc_used = 0
        for _ in range(self._skip_pieces):
            next(self._doc_pieces, None)
            self._doc_used += 1
        self._skip_pieces = 0
        return True

    def _fill(self) -> None:
        """Cut and filter pieces until ``batch_chars`` characters, then encode them together."""
        self._start = self._snapshot()
        texts, chars = [], 0
        while chars < self._batch_chars:
            if self._doc_pieces is None:
                if self._dry > DRY_LIMIT:
                    raise DataError(
                        f"source {self._source.name!r}: {self._dry} documents in a row gave no piece "
                        f"that passes the filters (counters {self._counters}); check the source's "
                        "field / format, or lower data.min_chars / data.min_tokens")
                if not self._open_document():
                    self._parent_done = True
                    break
            piece = next(self._doc_pieces, None)
            if piece is None:
                self._doc_pieces = None
                continue
            text, cut = piece
            self._doc_used += 1
            self._counters["pieces"] += 1
            self._counters["long_pieces"] += cut
            if not passes_min_chars(text, self._min_chars):
                self._counters["dropped_chars"] += 1
                continue
            texts.append(text)
            chars += len(text)
        self._buffer, self._pos = self._encode(texts), 0
        if self._buffer:
            self._dry = 0

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        kept = []
        c = self._counters
        for ids in self._tok.encode(texts) if texts else ():
            if len(ids) < self._min_tokens:
                c["dropped_tokens"] += 1
                continue
            c["emitted_pieces"] += 1
            c["emitted_tokens"] += len(ids)
            if self._max_tokens is not None and len(ids) > self._max_tokens:
                c["truncated_tokens"] += len(ids) - self._max_tokens
                ids = ids[:self._max_tokens]
            kept.append(np.asarray(ids, np.int32))
        return kept

    def __next__(self) -> np.ndarray:
        while self._pos >= len(self._buffer):
            if self._parent_done:
                raise StopIteration
            self._fill()
        self._pos += 1
        return self._buffer[self._pos - 1]

    def get_state(self) -> dict[str, Any]:
        return {**self._start, "taken": self._pos,
                STATE_KEY: {"source": self._source.name, **self._counters}}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._counters = dict.fromkeys(COUNTERS, 0) | state["counters"]
        self._dry = state["dry"]
        self._doc_pieces, self._doc_used = None, 0
        self._skip_pieces = state["doc_used"]
        self._buffer, self._pos, self._parent_done = [], 0, False
        if state["taken"] or state["doc_used"]:
            self._fill()
            self._pos = state["taken"]
        self._start = {key: state[key] for key in ("parent", "doc_used", "counters", "dry")}


def batch_row(**fields: np.ndarray) -> dict[str, np.ndarray]:
    """One row in the batch contract: exactly the fields of ``BATCH_FIELDS``, in their dtypes."""
    return {name: np.asarray(fields[name], dtype) for name, dtype in BATCH_FIELDS.items()}


def pad_row(tokens: np.ndarray, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """The paper's layout: ``t`` right-padded to ``seq_len + 1``; inputs ``t[:-1]``, targets ``t[1:]``."""
    n = min(len(tokens), seq_len + 1)
    row = np.full(seq_len + 1, pad_id, np.int32)
    row[:n] = tokens[:n]
    idx = np.arange(seq_len, dtype=np.int32)
    real = idx < n
    return batch_row(inputs=row[:-1], targets=row[1:], loss_mask=idx < n - 1, segment_ids=real,
                     positions=np.where(real, idx, 0))


class PackIterDataset(grain.IterDataset):
    """Concatenate-then-split packing: pieces' next-token pairs back to back, cut every ``seq_len``.

    The semantics of grain's ``ConcatThenSplitIterDataset`` (segment ids from 1 per row, positions
    restarting per document and for a remainder carried into the next row, no padding but at the
    end of a finite stream) with inputs and targets cut together, so no target crosses into another
    document. Ours fills a row with a few NumPy slice copies instead of grain's per-feature Python
    bookkeeping, which cost more than tokenizing when rows are short. State: the parent's state
    before the piece holding the next token, and how many of that piece's pairs were emitted.
    """

    def __init__(self, parent: grain.IterDataset, *, seq_len: int, pad_id: int):
        super().__init__(parent)
        self.seq_len, self.pad_id = seq_len, pad_id

    def __iter__(self) -> grain.DatasetIterator:
        return _PackIterator(self._parent.__iter__(), self.seq_len, self.pad_id)

    def __str__(self) -> str:
        return f"PackIterDataset(seq_len={self.seq_len})"


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent, seq_len: int, pad_id: int):
        super().__init__(parent)
        self._len, self._pad = seq_len, pad_id
        self._reset(offset=0)

    def _reset(self, offset: int) -> None:
        self._pieces: collections.deque[np.ndarray] = collections.deque()
        self._states: collections.deque[Any] = collections.deque()  # parent state before each piece
        self._offset = offset  # pairs of the first buffered piece already emitted
        self._buffered = -offset
        self._done = False

    def _pull(self) -> None:
        state = self._parent.get_state()
        try:
            piece = next(self._parent)
        except StopIteration:
            self._done = True
            return
        self._pieces.append(piece)
        self._states.append(state)
        self._buffered += len(piece) - 1

    def __next__(self) -> dict[str, np.ndarray]:
        while self._buffered < self._len and not self._done:
            self._pull()
        if self._buffered <= 0:
            raise StopIteration
        n = self._len
        inputs = np.full(n, self._pad, np.int32)
        targets = np.full(n, self._pad, np.int32)
        segments = np.zeros(n, np.int32)
        positions = np.zeros(n, np.int32)
        filled, segment = 0, 0
        while filled < n and self._pieces:
            piece, off = self._pieces[0], self._offset
            take = min(len(piece) - 1 - off, n - filled)
            end = filled + take
            inputs[filled:end] = piece[off:off + take]
            targets[filled:end] = piece[off + 1:off + 1 + take]
            segment += 1
            segments[filled:end] = segment
            positions[filled:end] = np.arange(take)
            filled = end
            if off + take == len(piece) - 1:
                self._pieces.popleft()
                self._states.popleft()
                self._offset = 0
            else:
                self._offset = off + take
        self._buffered -= filled
        return batch_row(inputs=inputs, targets=targets, loss_mask=segments > 0,
                         segment_ids=segments, positions=positions)

    def get_state(self) -> dict[str, Any]:
        parent = self._states[0] if self._states else self._parent.get_state()
        return {"parent": parent, "offset": self._offset if self._states else 0}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._reset(offset=state["offset"])


class CheckedStateIterDataset(grain.IterDataset):
    """Adds what the stream depends on to the state, and refuses a state it cannot continue."""

    def __init__(self, parent: grain.IterDataset, meta: dict[str, Any]):
        super().__init__(parent)
        self.meta = meta

    def __iter__(self) -> grain.DatasetIterator:
        return _CheckedIterator(self._parent.__iter__(), self.meta)

    def __str__(self) -> str:
        return f"CheckedStateIterDataset({self.meta})"


# What a saved stream position is tied to: a state saved with another value cannot be continued.
STRICT_META = {
    "split": "the saved data-iterator state is of the {saved!r} split, not {now!r}",
    "num_workers": "this checkpoint's data stream was read with data.num_workers={saved} and this "
                   "run has data.num_workers={now}; the order of batches depends on the worker "
                   "count: resume with --config.data.num_workers={saved}",
    "process_index": "this checkpoint's data stream was saved by process {saved} and this is "
                     "process {now}; resume with the same processes",
    "process_count": "this checkpoint's data stream was saved by {saved} process(es) and this run "
                     "has {now}; resume with the same number of processes",
}


class _CheckedIterator(grain.DatasetIterator):
    def __init__(self, parent, meta):
        super().__init__(parent)
        self._meta = meta
        # Close worker processes and prefetch threads before interpreter teardown (grain's own
        # finalizers otherwise print tracebacks at exit when the iterator was never closed).
        weakref.finalize(self, parent.close)

    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return {"elm_data": dict(self._meta), "pipeline": self._parent.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue a saved stream; a state this stream cannot continue is a ``CheckpointError``
        (the checkpoint does not fit this run), so no older checkpoint is tried in its place."""
        if not isinstance(state, dict) or "elm_data" not in state or "pipeline" not in state:
            raise CheckpointError("the saved data-iterator state was not written by elm_jax's "
                                  "pipeline; start the data stream afresh instead of restoring it")
        saved = state["elm_data"]
        for key, message in STRICT_META.items():
            if saved.get(key) != self._meta[key]:
                raise CheckpointError(message.format(saved=saved.get(key), now=self._meta[key]))
        changed = settings_changes(saved.get("settings"), self._meta.get("settings"))
        if changed:
            _log.warning("the data stream's settings changed since the checkpoint (%s): the stream "
                         "goes on from the saved position, but its batches are no longer the ones "
                         "the saved run would have read", "; ".join(changed))
        elif saved.get("fingerprint") != self._meta["fingerprint"]:
            _log.warning("the data config changed since this iterator state was saved; the stream "
                         "continues from the saved positions but is no longer the one of the old run")
        self._parent.set_state(state["pipeline"])


def settings_changes(saved: dict[str, Any] | None, now: dict[str, Any] | None) -> list[str]:
    """``"name old -> new"`` for every stream setting that differs (none when either is unknown)."""
    if not saved or not now:
        return []
    return [f"{name} {_short(saved.get(name))} -> {_short(now.get(name))}"
            for name in sorted(set(saved) | set(now)) if saved.get(name) != now.get(name)]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
