"""What every stage script shares: one-line errors and the run's common objects."""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .data import DataError
from .lr_find import LRFindError
from .params import Params, ParamsError
from .train import Interrupted, TrainingError

EXPECTED = (ParamsError, DataError, LRFindError, TrainingError, FileNotFoundError)


def stage(main: Callable[[], None]) -> Callable[[], None]:
    """Run `main`, turning expected failures into one line on stderr and a non-zero exit."""

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            main()
        except Interrupted as error:
            print(f"interrupted: {error}", file=sys.stderr)
            sys.exit(130)
        except EXPECTED as error:
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def check_batch_size(key: str, batch_size: int, n_images: int) -> None:
    if batch_size > n_images:
        raise ParamsError(
            f"params.yaml: {key}: {batch_size} is larger than the {n_images} training images"
        )


def fingerprint(params: Params, sections: tuple[str, ...], *files: Path, **extra: object) -> str:
    """Digest of the given params sections, extra values and files' bytes."""
    digest = hashlib.sha256()
    dumped = params.model_dump(include=set(sections))
    digest.update(json.dumps([dumped, extra], sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()
