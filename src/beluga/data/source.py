"""Where the data comes from: the official download, or a local archive or folder."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
from pathlib import Path

from ..atomic import atomic_path
from ..errors import DataError
from .archive import check_complete, read_files
from .batches import from_batches, is_batches
from .dataset import OFFICIAL_COUNTS, Cifar
from .images import from_class_folders, is_class_folders


def md5sum(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def is_url(source: str) -> bool:
    """True for a data.source to download rather than read from disk."""
    return source.startswith(("http://", "https://"))


def _finished(target: Path, md5: str | None) -> bool:
    """True for a complete earlier download: its md5 matches, or without one, it decompresses
    to its end (a file cut short, kept by an older version or copied in, is fetched again)."""
    if not target.is_file():
        return False
    if md5:
        return md5sum(target) == md5
    try:
        check_complete(target)
    except DataError:
        return False
    return True


def download(url: str, download_dir: Path, md5: str | None) -> Path:
    """Download an archive once (with a progress bar) and check its md5.

    The file appears under its name only once it is complete (and its md5 checked),
    so an interrupted download is fetched again, with or without data.md5.
    """
    target = download_dir / Path(url).name
    if _finished(target, md5):
        print(f"Using {target}, downloaded earlier")
        return target
    # imported here: torchvision pulls in torch, which a local source never needs
    from torchvision.datasets.utils import download_url

    try:
        with atomic_path(target) as partial:
            partial.unlink()  # torchvision would take an existing file for a finished download
            download_url(url, str(partial.parent), filename=partial.name, md5=md5)
            check_complete(partial)  # a connection closed early is no error to urllib
    except DataError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        raise DataError(
            f"data.source: cannot download {url} ({error}); with no network, point "
            "data.source at a local copy, e.g. "
            "`dvc exp run -S data.source=../shared/data/cifar10-jpeg.tar.gz`"
        ) from None
    except RuntimeError:
        raise DataError(
            f"{url}: the download's md5 is not {md5} (data.md5); it is corrupt or not the "
            "official archive, rerun to fetch it again"
        ) from None
    return target


def _note_counts(data: Cifar, where: Path) -> None:
    """One note when a source is not the full data set, so a partial copy is not a surprise."""
    differ = [
        f"{len(getattr(data, split).labels):,} {split} images (the official set has {n:,})"
        for split, n in OFFICIAL_COUNTS.items()
        if len(getattr(data, split).labels) != n
    ]
    if differ:
        print(f"note: {where}: {', '.join(differ)}")


def read_source(source: Path, md5: str | None = None) -> Cifar:
    """Import a local copy: official archive or folder, or class-folder archive or folder.

    An archive of pickled batches is the official one and is checked against `md5` (if
    given) before any pickle in it is loaded.
    """
    if not source.exists():
        raise DataError(f"data.source: {source} does not exist")
    files = read_files(source)
    if is_batches(files):
        if source.is_file() and md5 and md5sum(source) != md5:
            raise DataError(
                f"{source}: md5 is {md5sum(source)}, expected {md5} (data.md5); "
                "the archive is corrupt or not the official one"
            )
        data = from_batches(files, source)
    elif is_class_folders(files):
        data = from_class_folders(files, source)
    else:
        raise DataError(
            f"{source}: neither CIFAR-10's pickled batches nor train/<class>/ and test/<class>/ "
            "folders"
        )
    _note_counts(data, source)
    return data
