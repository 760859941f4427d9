"""Import CIFAR-10 from the official download or a local copy into one compact file.

Every source ends as the same arrays: uint8 images N x 32 x 32 x 3 and int64
labels in CIFAR-10's official class order, for train and test. Later stages
read nothing else.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import tarfile
import urllib.error
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.utils import download_url

from .atomic import write_with

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class DataError(ValueError):
    """A data source that cannot be imported; the message is one line."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, N x 32 x 32 x 3
    labels: np.ndarray  # int64, N


@dataclass(frozen=True)
class Cifar:
    train: Split
    test: Split
    classes: tuple[str, ...] = CLASSES


def md5sum(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def download_official(download_dir: Path, md5: str | None = OFFICIAL_MD5) -> Path:
    """Download the official archive once (with a progress bar) and check its md5."""
    target = download_dir / Path(OFFICIAL_URL).name
    try:
        download_url(OFFICIAL_URL, str(download_dir), md5=md5)
    except (urllib.error.URLError, OSError) as error:
        raise DataError(
            f"data.source=official: cannot download {OFFICIAL_URL} ({error}); with no "
            "network, point data.source at a local copy, e.g. "
            "`dvc exp run -S data.source=../shared/data/cifar10-jpeg.tar.gz`"
        ) from None
    except RuntimeError:
        raise DataError(
            f"{target}: md5 is not {md5}; the download is corrupt, delete it and rerun"
        ) from None
    return target


def _read_files(source: Path) -> dict[str, bytes]:
    """All regular files of an archive or folder, by path relative to it."""
    if source.is_dir():
        return {
            p.relative_to(source).as_posix(): p.read_bytes()
            for p in sorted(source.rglob("*"))
            if p.is_file()
        }
    try:
        with tarfile.open(source) as archive:
            return {
                m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()
            }
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"{source}: not a readable .tar.gz archive ({str(error).splitlines()[0]}); "
            "download it again"
        ) from None


def _unpickle(name: str, blob: bytes, n_classes: int) -> Split:
    try:
        batch = pickle.loads(blob, encoding="latin1")
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad batch
        raise DataError(f"{name}: not a CIFAR-10 batch ({type(error).__name__}: {error})") from None
    if len(labels) != len(images):
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise DataError(f"{name}: label {bad[0]} out of range 0..{n_classes - 1}")
    return Split(images.transpose(0, 2, 3, 1).copy(), labels)


def _from_batches(files: dict[str, bytes], where: Path) -> Cifar:
    by_base = {Path(name).name: name for name in files}
    missing = [b for b in (*TRAIN_BATCHES, "test_batch") if b not in by_base]
    if missing:
        raise DataError(f"{where}: CIFAR-10 batch {missing[0]} is missing")
    if "batches.meta" in by_base:
        meta = pickle.loads(files[by_base["batches.meta"]], encoding="latin1")
        names = tuple(meta.get("label_names", CLASSES))
        if names != CLASSES:
            raise DataError(f"{where}: batches.meta names classes {names}, not CIFAR-10's")
    train = [_unpickle(by_base[b], files[by_base[b]], len(CLASSES)) for b in TRAIN_BATCHES]
    test = _unpickle(by_base["test_batch"], files[by_base["test_batch"]], len(CLASSES))
    return Cifar(
        Split(np.concatenate([s.images for s in train]), np.concatenate([s.labels for s in train])),
        test,
    )


def _decode(name: str, blob: bytes) -> tuple[np.ndarray, str]:
    """The image as 32x32x3 uint8 RGB, and the mode it was stored in."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
            if image.size != (32, 32):
                raise DataError(f"{name}: image is {image.size[0]}x{image.size[1]}, not 32x32")
            return np.asarray(image.convert("RGB"), dtype=np.uint8), image.mode
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{name}: not a readable image ({error})") from None


_CLASS_FILE = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+)$")


def _from_class_folders(files: dict[str, bytes], where: Path) -> Cifar:
    found: dict[tuple[str, str], list[str]] = {}
    for name in files:
        match = _CLASS_FILE.match(name)
        if match and not match.group(3).startswith("."):
            found.setdefault((match.group(1), match.group(2)), []).append(name)
    splits = {}
    converted: list[str] = []
    for split in ("train", "test"):
        folders = {cls for (s, cls) in found if s == split}
        unknown = sorted(folders - set(CLASSES))
        if unknown:
            raise DataError(
                f"{where}: {split}/{unknown[0]} is not a CIFAR-10 class "
                f"(expected {', '.join(CLASSES)})"
            )
        images, labels = [], []
        for label, cls in enumerate(CLASSES):
            names = sorted(found.get((split, cls), []))
            if not names:
                raise DataError(f"{where}: class folder {split}/{cls} is missing or empty")
            for name in names:
                image, mode = _decode(name, files[name])
                images.append(image)
                if mode != "RGB":
                    converted.append(name)
            labels += [label] * len(names)
        splits[split] = Split(np.stack(images), np.asarray(labels, dtype=np.int64))
    if converted:
        print(f"{where}: converted {len(converted)} non-RGB images (greyscale, RGBA, palette) "
              f"to RGB, e.g. {converted[0]}")  # fmt: skip
    return Cifar(splits["train"], splits["test"])


def read_source(source: Path, md5: str | None = OFFICIAL_MD5) -> Cifar:
    """Import a local copy: official archive or folder, or class-folder archive or folder.

    An archive of pickled batches is the official one and is checked against `md5`.
    """
    if not source.exists():
        raise DataError(f"data.source: {source} does not exist")
    files = _read_files(source)
    if any(Path(name).name == "data_batch_1" for name in files):
        if source.is_file() and md5 and md5sum(source) != md5:
            raise DataError(
                f"{source}: md5 is {md5sum(source)}, expected {md5} (data.md5); "
                "the archive is corrupt or not the official one"
            )
        return _from_batches(files, source)
    if any(_CLASS_FILE.match(name) for name in files):
        return _from_class_folders(files, source)
    raise DataError(
        f"{source}: neither CIFAR-10's pickled batches nor train/<class>/ and test/<class>/ folders"
    )


def _take_per_class(split: Split, per_class: int | None, key: str, n_classes: int) -> Split:
    """The first `per_class` images of each class, in file order: a stratified subset."""
    if per_class is None:
        return split
    keep = []
    for label in range(n_classes):
        (index,) = np.nonzero(split.labels == label)
        if per_class > len(index):
            raise DataError(
                f"{key}: {per_class} is more than the {len(index)} images of class {CLASSES[label]}"
            )
        keep.append(index[:per_class])
    index = np.sort(np.concatenate(keep))
    return Split(split.images[index], split.labels[index])


def subset(data: Cifar, train_per_class: int | None, test_per_class: int | None) -> Cifar:
    n = len(data.classes)
    return Cifar(
        _take_per_class(data.train, train_per_class, "data.train_per_class", n),
        _take_per_class(data.test, test_per_class, "data.test_per_class", n),
        data.classes,
    )


def save(path: str | Path, data: Cifar) -> None:
    """Write the arrays as an .npz with fixed timestamps, so equal data gives equal bytes."""
    arrays = {
        "train_images": data.train.images,
        "train_labels": data.train.labels,
        "test_images": data.test.images,
        "test_labels": data.test.labels,
        "classes": np.asarray(data.classes),
    }

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, np.ascontiguousarray(array))

    write_with(path, write)


def load(path: str | Path) -> Cifar:
    """Read the file `save` wrote."""
    with np.load(path) as arrays:
        return Cifar(
            Split(arrays["train_images"], arrays["train_labels"]),
            Split(arrays["test_images"], arrays["test_labels"]),
            tuple(str(c) for c in arrays["classes"]),
        )
