"""Every regular file of a source (a tar archive or a folder) as bytes, within fixed caps.

The archive is read once, front to back, as a stream: its size is checked
before the first byte, decompressed bytes are counted as they come (a
compression bomb stops at the cap, however small the archive), header
records that tarfile would read whole (pax and GNU long names) are capped
before they are read, and no member can make the reader seek backwards.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

from ..errors import DataError

# The real data is 60,000 files of ~1-3 KB (about 140 MB in all, as tar 180 MB), or 6 batches
# of ~31 MB, so anything far beyond is a compression bomb or the wrong folder. The caps keep
# the download stage under 2 GB of memory whatever the source.
MAX_SOURCE_BYTES = 2**30  # an archive file, before decompression
MAX_STREAM_BYTES = 2**30  # the decompressed tar stream: headers, contents and padding
MAX_FILES = 200_000
MAX_FILE_BYTES = 48 * 2**20
MAX_TOTAL_BYTES = 512 * 2**20
MAX_HEADER_BYTES = 64 * 2**10  # a pax or GNU long-name record; a path is at most 4 KB
# Operating-system clutter in copied folders and macOS zips; skipped with a note.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_HEADER_TYPES = {
    tarfile.XHDTYPE: "pax", tarfile.XGLTYPE: "pax global", tarfile.SOLARIS_XHDTYPE: "pax",
    tarfile.GNUTYPE_LONGNAME: "GNU long-name", tarfile.GNUTYPE_LONGLINK: "GNU long-link",
}  # fmt: skip
_DECOMPRESSORS: dict[bytes, Callable[[IO[bytes]], IO[bytes]]] = {
    b"\x1f\x8b": lambda raw: gzip.GzipFile(fileobj=raw),
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ\x00": lzma.LZMAFile,
}

T = TypeVar("T")
Opener = Callable[[], IO[bytes]]


class _CappedTarInfo(tarfile.TarInfo):
    """A tar header that refuses a negative size and an oversized pax or long-name record
    before tarfile reads the record into memory."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size < 0:
            raise tarfile.HeaderError(f"member {self.name[:100]!r} has a negative size")
        kind = _HEADER_TYPES.get(self.type)
        if kind and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(
                f"a {kind} header of {self.size:,} bytes, more than the {MAX_HEADER_BYTES:,} "
                "a file name needs"
            )
        return super()._proc_member(archive)


class _Counted:
    """A read-only stream that fails once more than `cap` bytes have come out of it."""

    def __init__(self, stream: IO[bytes], cap: int, source: Path) -> None:
        self.stream, self.cap, self.source, self.count = stream, cap, source, 0

    def read(self, size: int = -1) -> bytes:
        blob = self.stream.read(size if size >= 0 else self.cap + 1 - self.count)
        self.count += len(blob)
        if self.count > self.cap:
            raise DataError(
                f"{self.source}: decompresses to more than {self.cap:,} bytes; CIFAR-10 is "
                "about 180 MB (a compression bomb, or not CIFAR-10)"
            )
        return blob


def _at_most_max_files(source: Path, entries: Iterable[T]) -> Iterator[T]:
    """Stop at MAX_FILES entries, so millions of tiny members cannot exhaust memory or time."""
    for count, entry in enumerate(entries, 1):
        if count > MAX_FILES:
            raise DataError(
                f"{source}: more than {MAX_FILES:,} files or members; CIFAR-10 has 60,000 images"
            )
        yield entry


def _tar_entries(source: Path, archive: tarfile.TarFile) -> Iterator[tuple[str, Opener]]:
    """Regular members, each read as the stream passes it."""
    for member in _at_most_max_files(source, archive):
        if member.isfile():
            yield member.name, lambda member=member: archive.extractfile(member)


def _folder_entries(source: Path) -> Iterator[tuple[str, Opener]]:
    """Regular files under `source`, by path relative to it, in sorted order."""
    for path in sorted(_at_most_max_files(source, source.rglob("*"))):
        if path.is_file():
            yield path.relative_to(source).as_posix(), lambda path=path: open(path, "rb")


def _collect(source: Path, entries: Iterable[tuple[str, Opener]]) -> dict[str, bytes]:
    """Each file's bytes by normalised name, reading no more than the caps allow.

    Reads are bounded (cap + 1 bytes) instead of trusting sizes in headers. Two files
    with one name are an error: keeping either would silently drop the other.
    """
    files: dict[str, bytes] = {}
    raw_names: dict[str, str] = {}
    total = 0
    for raw, open_file in entries:
        name = posixpath.normpath(raw)
        if name in files:
            raise DataError(
                f"{source}: {name} appears twice (as {raw_names[name]!r} and {raw!r}); "
                "remove one copy"
            )
        with open_file() as handle:
            blob = handle.read(MAX_FILE_BYTES + 1)
        if len(blob) > MAX_FILE_BYTES:
            raise DataError(
                f"{name}: larger than {MAX_FILE_BYTES:,} bytes, which no CIFAR-10 file is "
                "(a batch is about 31 MB); stopped reading"
            )
        total += len(blob)
        if total > MAX_TOTAL_BYTES:
            raise DataError(
                f"{source}: more than {MAX_TOTAL_BYTES:,} bytes of files (stopped at {name}); "
                "CIFAR-10 is about 180 MB"
            )
        files[name], raw_names[name] = blob, raw
    return files


@contextmanager
def _decompressed(source: Path) -> Iterator[_Counted]:
    """`source`'s bytes after gzip, bz2 or xz decompression (by its magic bytes), counted."""
    with open(source, "rb") as raw:
        magic = raw.peek(6)[:6]
        opener = next((o for m, o in _DECOMPRESSORS.items() if magic.startswith(m)), None)
        with opener(raw) if opener else raw as stream:
            yield _Counted(stream, MAX_STREAM_BYTES, source)


def check_complete(path: Path) -> None:
    """Decompress `path` to its end, so that a download cut short fails now, not later."""
    try:
        with _decompressed(path) as stream:
            while stream.read(2**20):
                pass
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        raise DataError(f"{path.name}: the download is incomplete or corrupt ({error})") from None


def _read_archive(source: Path) -> dict[str, bytes]:
    size = source.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise DataError(
            f"{source}: {size:,} bytes, more than the {MAX_SOURCE_BYTES:,} of any CIFAR-10 "
            "archive (the official one is 163 MB)"
        )
    with (
        _decompressed(source) as stream,
        tarfile.open(fileobj=stream, mode="r|", tarinfo=_CappedTarInfo) as archive,
    ):
        return _collect(source, _tar_entries(source, archive))


def read_files(source: Path) -> dict[str, bytes]:
    """All regular files of an archive or folder, by path relative to it, less clutter."""
    if source.is_dir():
        try:
            files = _collect(source, _folder_entries(source))
        except OSError as error:
            raise DataError(f"{error.filename or source}: cannot read ({error.strerror})") from None
    else:
        try:
            files = _read_archive(source)
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError,
                RecursionError) as error:  # fmt: skip
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(
                f"{source}: not a readable .tar.gz archive ({reason[:200]}); download it again"
            ) from None
    return _without_junk(files, source)


def _is_junk(name: str) -> bool:
    """Hidden files and folders, macOS zip metadata, Windows thumbnails: never data."""
    parts = name.split("/")
    return (
        any(part.startswith(".") or part == "__MACOSX" for part in parts)
        or parts[-1].lower() in JUNK_NAMES
    )


def _without_junk(files: dict[str, bytes], where: Path) -> dict[str, bytes]:
    """`files` less operating-system clutter, with one note saying what was skipped."""
    junk = [name for name in files if _is_junk(name)]
    if junk:
        print(f"note: {where}: skipped {len(junk)} hidden or system files (.DS_Store, "
              f"Thumbs.db, desktop.ini, __MACOSX/), e.g. {junk[0]}")  # fmt: skip
    skipped = set(junk)
    return {name: blob for name, blob in files.items() if name not in skipped}
