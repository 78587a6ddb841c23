"""Where a source's files are and how their bytes come out: paths, globs, file-id ranges, compression.

Paths go through ``etils.epath``, so ``gs://`` (and the other schemes epath knows) work wherever the
matching filesystem package is installed (``gcsfs`` for Cloud Storage); local paths take ``os``'s
fast paths. A relative path is taken from ``data.data_root`` when that is set.

A path may name a range of numbered files, as CoreNet's configs do:
``"refinedweb-{file_id:05d}-of-05534.parquet"`` with ``file_ids: [0, 5534]`` (start, stop).

Compression is recognised from the file's first bytes (gzip ``1f 8b``, zstd ``28 b5 2f fd``), not
from its name, and decompressed as a stream: concatenated members / frames are read in order, and a
stream that ends inside a member (a truncated download) or fails its checks is a ``CorruptFile``.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import zlib
from collections.abc import Iterator, Sequence
from typing import IO, Any

from elm_jax.common_types import FILE_ID
from elm_jax.errors import DataError
from elm_jax.storage import is_uri

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK_BYTES = 1 << 20  # compressed bytes read per step
HEAD_BYTES = 1 << 12  # bytes read to tell a file's format
STAT_THREADS = 32  # parallel existence checks for remote file-id ranges


class MissingFiles(DataError):
    """Files a source names that are not there; ``expected`` says what was looked for."""

    def __init__(self, where: str, pattern: str, expected: int | None, missing: Sequence[str]):
        self.where, self.pattern, self.expected, self.missing = where, pattern, expected, list(missing)
        super().__init__(f"{where}: {self.describe()}; fix the path in the config")

    def describe(self) -> str:
        if self.expected is None or FILE_ID not in self.pattern:
            return f"no file matches {self.pattern!r}"
        if self.expected == 1:
            return f"{self.missing[0]!r} does not exist"
        if len(self.missing) == self.expected:
            return f"none of the {self.expected} files {self.pattern!r} exists, e.g. {self.missing[0]!r}"
        return (f"{len(self.missing)} of the {self.expected} files {self.pattern!r} are missing, "
                f"e.g. {self.missing[0]!r}")


class CorruptFile(DataError):
    """A file whose bytes cannot be decoded (bad or truncated gzip / zstd stream, bad Parquet)."""


def resolve(path: str, root: str = "") -> str:
    """``path`` with ``~`` expanded, taken from ``root`` when relative."""
    if is_uri(path):
        return path
    path = os.path.expanduser(path)
    if root and not os.path.isabs(path):
        return os.path.join(resolve(root), path) if not is_uri(root) else f"{root.rstrip('/')}/{path}"
    return path


def is_file(path: str) -> bool:
    if not is_uri(path):
        return os.path.isfile(path)
    from etils import epath

    return epath.Path(path).is_file()


def _glob(pattern: str) -> list[str]:
    if not is_uri(pattern):
        return sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
    from etils import epath

    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = epath.Path(f"{scheme}://{'/'.join(parts[:first])}")
    return sorted(str(p) for p in base.glob("/".join(parts[first:])))


def _numbered(pattern: str, file_ids: Sequence[int] | None, where: str) -> list[str]:
    if not file_ids:
        raise DataError(f"{where}: {pattern!r} has a {{file_id}} placeholder but the source has no "
                        "'file_ids': [start, stop]")
    try:
        return [pattern.format(file_id=i) for i in range(int(file_ids[0]), int(file_ids[1]))]
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(f"{where}: {pattern!r} is not a valid path template ({err}); write the "
                        "number as {file_id} or e.g. {file_id:05d} and escape other braces as {{ }}"
                        ) from None


def expand_paths(spec: str | Sequence[str], where: str, *, root: str = "",
                 file_ids: Sequence[int] | None = None) -> list[str]:
    """Files of a path, glob, ``{file_id}`` template or list of them, in order; every file must exist."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    found: list[str] = []
    for pattern in patterns:
        pattern = resolve(str(pattern), root)
        if FILE_ID in pattern:
            names = _numbered(pattern, file_ids, where)
            exists = map_paths(is_file, names)
            missing = [n for n, ok in zip(names, exists) if not ok]
            if missing:
                raise MissingFiles(where, pattern, len(names), missing)
            found.extend(names)
        elif glob.has_magic(pattern):
            matches = _glob(pattern)
            if not matches:
                raise MissingFiles(where, pattern, None, [pattern])
            found.extend(matches)
        elif is_file(pattern):
            found.append(pattern)
        else:
            raise MissingFiles(where, pattern, 1, [pattern])
    return found


def map_paths(fn, items: Sequence[str]) -> list[Any]:
    """``fn`` over paths; in parallel threads when they are remote (each call is a round trip)."""
    if not items or not is_uri(items[0]):
        return [fn(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(STAT_THREADS) as pool:
        return list(pool.map(fn, items))


def stat(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file: what cached indexes are keyed on."""
    if not is_uri(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    from etils import epath

    st = epath.Path(path).stat()
    return int(st.length), int(st.mtime * 1e9)


def open_binary(path: str) -> IO[bytes]:
    if not is_uri(path):
        return open(path, "rb")
    from etils import epath

    return epath.Path(path).open("rb")


def compression(path: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or None (plain), from the file's first bytes."""
    with open_binary(path) as f:
        head = f.read(4)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def _decompressor(kind: str):
    if kind == "gzip":
        return zlib.decompressobj(wbits=31)  # 31: gzip header and trailer (CRC, length) checked
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


def _corrupt(path: str, kind: str, detail: str) -> CorruptFile:
    return CorruptFile(f"{path}: corrupt {kind} stream ({detail}); download the file again or "
                       "remove it from the source")


def read_chunks(path: str, chunk_bytes: int | None = None) -> Iterator[bytes]:
    """The file's content in pieces, decompressed when its first bytes say gzip or zstd."""
    kind = compression(path)
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    with open_binary(path) as f:
        if kind is None:
            while chunk := f.read(chunk_bytes):
                yield chunk
            return
        errors = (zlib.error,) if kind == "gzip" else (zlib.error, _zstd_error())
        stream, inside = _decompressor(kind), False
        while data := f.read(chunk_bytes):
            while data:
                try:
                    out = stream.decompress(data)
                except errors as err:
                    raise _corrupt(path, kind, str(err)) from None
                if out:
                    yield out
                if stream.eof:  # end of one member / frame; what follows starts another
                    data, stream, inside = stream.unused_data, _decompressor(kind), False
                else:
                    data, inside = b"", True
        if inside:
            raise _corrupt(path, kind, "the file ends inside a compressed block: truncated")


def _zstd_error() -> type[Exception]:
    import zstandard

    return zstandard.ZstdError


def read_all(path: str) -> bytes:
    """The whole (decompressed) content of a file."""
    return b"".join(read_chunks(path))


def lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream (without ``\\n`` or a trailing ``\\r``), empty ones included."""
    rest = b""
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for line in parts:
            yield line[:-1] if line.endswith(b"\r") else line
    if rest:
        yield rest[:-1] if rest.endswith(b"\r") else rest


def starts_with_list(path: str) -> bool:
    """Whether the (decompressed) file holds one JSON array rather than JSON lines (reads a few KB)."""
    for chunk in read_chunks(path, HEAD_BYTES):
        stripped = chunk.lstrip()
        if stripped:
            return stripped.startswith(b"[")
    return False
