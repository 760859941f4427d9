"""The train stage's checkpoint: what it belongs to, how it is read, and who may write it.

A checkpoint is resumed only when its fingerprint (params, data, code, torch
version) matches the run's; otherwise the run starts afresh and says which
params differ. One training run at a time holds a workspace's lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .atomic import write_torch
from .errors import TrainingError

PACKAGE = Path(__file__).resolve().parent


def code_digest(*extra: Path) -> str:
    """Digest of beluga's sources and `extra` files: a code change makes a new run."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")) + sorted(extra):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(settings: dict, data: Path, code: str) -> str:
    """Digest of everything that shapes a training run, so a resume continues the same run."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(code.encode())
    digest.update(torch.__version__.encode())
    with open(data, "rb") as handle:
        digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def save(path: Path, state: dict) -> None:
    write_torch(path, state)


def load(path: Path) -> dict | None:
    """The checkpoint's contents on the CPU, or None (with a line saying why) if unreadable.

    Loading to the CPU whatever device wrote it keeps RNG states as the CPU byte
    tensors that torch's setters take; the model and optimizer move themselves.
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is simply not resumed
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"Ignoring {path}: it cannot be read ({reason[:200]}); starting afresh")
        return None
    if not isinstance(state, dict):
        print(f"Ignoring {path}: it holds a {type(state).__name__}, not a checkpoint; "
              "starting afresh")  # fmt: skip
        return None
    return state


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two nested settings."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def _open_lock(lock: Path) -> int:
    """The lock file's descriptor; never through a symbolic link, never anything but a file."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        why = "a symbolic link" if error.errno == errno.ELOOP else error.strerror
        raise TrainingError(f"{lock}: cannot be the training lock ({why}); remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TrainingError(f"{lock}: cannot be the training lock (not a regular file); remove it")
    return fd


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold `lock` for a training run; refuse, naming the holder, if another run holds it.

    The kernel drops the lock when its holder dies, however it dies.
    """
    with os.fdopen(_open_lock(lock), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read(100).strip() or "unknown"
            raise TrainingError(
                f"another training run (pid {holder}) is using this workspace ({lock}); "
                "wait for it to end or stop it"
            ) from None
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
