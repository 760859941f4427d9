"""Write every output to a temporary file and rename it into place.

A stage killed half-way then leaves the previous good output, never a
truncated one; the data reaches the disk (fsync) before the rename, and the
rename before the function returns. Temporary files a killed run left behind
are removed at the next write of the same output.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import WriteError


def _prefix(path: Path) -> str:
    return f".{path.name}."


def _file_mode() -> int:
    """0o666 less the process's umask: the mode open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _sync(path: str | Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{glob.escape(_prefix(path))}*{glob.escape(path.suffix)}.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=f"{path.suffix}.tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp's 0o600 would hide outputs from other users
        _sync(tmp)
        os.replace(tmp, path)
        _sync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> None:
    """Call `writer(tmp_path)` and rename the result into place.

    Any failure of the file system (a full disk, a quota, a read-only folder) is one
    WriteError naming `path`, and the file that was there before stays.
    """
    try:
        with atomic_path(path) as tmp:
            writer(tmp)
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise WriteError(
            f"{path}: cannot write ({reason}); the previous file, if any, is unchanged"
        ) from None


def write_bytes(path: str | Path, blob: bytes | memoryview) -> None:
    write_with(path, lambda tmp: tmp.write_bytes(blob))


def write_torch(path: str | Path, obj: object) -> None:
    """`torch.save` by way of memory: torch reports a failed write (a full disk) as a
    RuntimeError with no path in it; written from memory it is a WriteError naming `path`."""
    import torch  # here, not above: the download stage writes through this module without torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def write_text(path: str | Path, text: str) -> None:
    write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")
