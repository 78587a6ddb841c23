"""SentencePiece with LLaMA conventions (BOS 1, EOS 2, pad = vocabulary size), picklable for workers.

Works with the LLaMA-2 ``tokenizer.model`` that the released OpenELM checkpoints use and with models
trained by :func:`train_sentencepiece` (``elm-data train-tokenizer``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from etils import epath

from elm_jax.data import paths
from elm_jax.errors import DataError
from elm_jax.storage import as_path

if TYPE_CHECKING:
    from elm_jax.config import Config

MODEL_TYPES = ("bpe", "unigram")


class Tokenizer:
    """A SentencePiece model plus the pad id used during training.

    Pickles as the serialized model (not the path), so grain worker processes rebuild the exact
    same processor even if the file changes on disk meanwhile.
    """

    def __init__(self, model_path: str | os.PathLike, *, pad_id: int | None = None,
                 num_threads: int = 1):
        self.model_path = as_path(model_path)  # local or an object-store URI
        self._proto = _read_model(self.model_path)
        self._sp = _load_processor(self._proto, self.model_path)
        self.pad_id = self.vocab_size if pad_id is None else int(pad_id)
        self.num_threads = int(num_threads)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_sp"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._sp = _load_processor(self._proto, self.model_path)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def encode(self, text: str | Sequence[str], *, bos: bool = True, eos: bool = True,
               num_threads: int | None = None) -> list[int] | list[list[int]]:
        """Token ids of one text, or of each text of a list (encoded with ``num_threads`` threads)."""
        return self._sp.encode(text, out_type=int, add_bos=bos, add_eos=eos,
                               num_threads=num_threads or self.num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; pad and other out-of-vocabulary ids are dropped, not decoded."""
        size = self.vocab_size
        return self._sp.decode([int(i) for i in ids if 0 <= int(i) < size])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id})"


def _read_model(path: epath.Path) -> bytes:
    if not path.is_file():
        raise DataError(f"tokenizer model {str(path)!r} does not exist; set data.tokenizer to a "
                        "SentencePiece .model file or to 'shakespeare' (see `elm-data prepare`)")
    return path.read_bytes()


def _load_processor(proto: bytes, path: epath.Path):
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError, TypeError) as err:
        raise DataError(f"tokenizer model {str(path)!r} is not a readable SentencePiece model "
                        f"({err}); replace the file or retrain it with `elm-data train-tokenizer`"
                        ) from None


def tokenizer_path(config: Config) -> Path:
    """The model file ``data.tokenizer`` names ('shakespeare' = our cached Shakespeare model)."""
    data = config.data
    if data.tokenizer == paths.SHAKESPEARE:
        return paths.shakespeare_tokenizer(data.tokenizer_vocab_size, data.cache_dir)
    return Path(data.tokenizer).expanduser()


def load_tokenizer(config: Config) -> Tokenizer:
    """The tokenizer of ``config``, checked against its BOS/EOS/pad ids and model vocabulary."""
    path = tokenizer_path(config)
    if config.data.tokenizer == paths.SHAKESPEARE and not path.is_file():
        raise DataError(f"the Shakespeare tokenizer {str(path)!r} is not prepared yet; run "
                        "`elm-data prepare shakespeare` (or call elm_jax.data.prepare.ensure_prepared)")
    tok = Tokenizer(path, pad_id=config.data.pad_id, num_threads=config.data.tokenizer_threads)
    check_compatible(tok, config)
    return tok


def check_compatible(tok: Tokenizer, config: Config) -> None:
    """Fail early when the tokenizer's ids cannot work with the config's model and data fields."""
    data, vocab = config.data, config.model.vocab_size
    where = str(tok.model_path)
    if (tok.bos_id, tok.eos_id) != (data.bos_id, data.eos_id):
        raise DataError(f"tokenizer {where!r} has BOS {tok.bos_id} / EOS {tok.eos_id} but the config "
                        f"says data.bos_id={data.bos_id} / data.eos_id={data.eos_id}; make them agree")
    if tok.vocab_size > vocab:
        raise DataError(f"tokenizer {where!r} has {tok.vocab_size} pieces, more than "
                        f"model.vocab_size={vocab}; raise model.vocab_size or use a smaller tokenizer")
    if data.pad_id < tok.vocab_size:
        raise DataError(f"data.pad_id={data.pad_id} is a real token of {where!r} (vocabulary "
                        f"{tok.vocab_size}); use data.pad_id={tok.vocab_size} (LLaMA convention)")


def train_sentencepiece(texts: Iterable[str], output: str | os.PathLike, *, vocab_size: int,
                        model_type: str = "bpe", max_sentences: int = 5_000_000) -> Path:
    """Train a LLaMA-convention SentencePiece model on ``texts`` and write ``output`` atomically.

    Byte fallback, identity normalisation and kept whitespace, as in LLaMA's tokenizer, so any text
    round-trips. Texts are fed line by line (SentencePiece's sentence unit). Never overwrites.
    """
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise DataError(f"tokenizer model type {model_type!r} is invalid: expected one of "
                        f"{', '.join(MODEL_TYPES)}")
    output = Path(output)
    for path in (output, output.with_suffix(".vocab")):
        if path.exists():
            raise DataError(f"{str(path)!r} already exists; choose another output path or delete it")
    lines = (line for text in texts for line in text.splitlines() if line.strip())
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".spm-") as tmp:
        prefix = os.path.join(tmp, "model")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines, model_prefix=prefix, vocab_size=vocab_size,
                model_type=model_type, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                byte_fallback=True, split_digits=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                character_coverage=0.99995, input_sentence_size=max_sentences,
                shuffle_input_sentence=True, num_threads=os.cpu_count() or 1, minloglevel=2)
        except RuntimeError as err:
            raise DataError(f"SentencePiece training failed: {err} (vocab_size={vocab_size} must "
                            "exceed 259 byte and control pieces plus the characters seen, and the "
                            "text must hold enough distinct pieces)") from None
        os.replace(prefix + ".model", output)
        os.replace(prefix + ".vocab", output.with_suffix(".vocab"))
    return output
