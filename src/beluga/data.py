"""Import CIFAR-10 from the official download or a local copy into one compact file.

Every source ends as the same arrays: uint8 images N x 32 x 32 x 3 and int64
labels in CIFAR-10's official class order, for train and test. Later stages
read nothing else.

A source is untrusted input: pickles are loaded with an allow-list of globals,
images are decoded only as PNG or JPEG after a size check on the header, and
what is read from an archive or folder is capped, so a crafted or corrupt file
gives one DataError line instead of running code or exhausting memory.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import posixpath
import re
import tarfile
import urllib.error
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from .atomic import write_with
from .errors import DataError

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
OFFICIAL_COUNTS = {"train": 50_000, "test": 10_000}
IMAGE_FORMATS = ("PNG", "JPEG")
# Caps on what is read from a source: the real data is 60,000 files of ~1 KB, or 6 batches of
# ~31 MB, so anything far beyond is a compression bomb or the wrong folder.
MAX_FILES = 200_000
MAX_FILE_BYTES = 200 * 2**20
MAX_TOTAL_BYTES = 2 * 2**30
DECODE_CHUNK = 2_000  # images per task of the decoding processes
# Operating-system clutter in copied folders and macOS zips; skipped with a note.
JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
# All the globals the official batches (Python 2 pickles of numpy arrays) and numpy's own
# pickles need; anything else could run code while loading.
PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes in Python 3 pickles of protocol 2 and below
})  # fmt: skip

T = TypeVar("T")


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


def is_url(source: str) -> bool:
    """True for a data.source to download rather than read from disk."""
    return source.startswith(("http://", "https://"))


def download(url: str, download_dir: Path, md5: str | None) -> Path:
    """Download an archive once (with a progress bar) and check its md5."""
    # imported here: torchvision pulls in torch, which a local source never needs
    from torchvision.datasets.utils import download_url

    target = download_dir / Path(url).name
    try:
        download_url(url, str(download_dir), md5=md5)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        raise DataError(
            f"data.source: cannot download {url} ({error}); with no network, point "
            "data.source at a local copy, e.g. "
            "`dvc exp run -S data.source=../shared/data/cifar10-jpeg.tar.gz`"
        ) from None
    except RuntimeError:
        raise DataError(
            f"{target}: md5 is not {md5}; the download is corrupt, delete it and rerun"
        ) from None
    return target


# --- reading a source's files, within caps --------------------------------------------------


def _at_most_max_files(source: Path, entries: Iterable[T]) -> Iterator[T]:
    """Stop at MAX_FILES entries, so millions of tiny members cannot exhaust memory or time."""
    for count, entry in enumerate(entries, 1):
        if count > MAX_FILES:
            raise DataError(
                f"{source}: more than {MAX_FILES:,} files or members; CIFAR-10 has 60,000 images"
            )
        yield entry


Opener = Callable[[], IO[bytes]]


def _tar_entries(source: Path, archive: tarfile.TarFile) -> Iterator[tuple[str, Opener]]:
    """Regular members, read one by one as the archive streams past."""
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

    Reads are bounded (cap + 1 bytes) instead of trusting sizes in headers, so a compression
    bomb stops with an error, not an out-of-memory kill. Two files with one name are an error:
    keeping either would silently drop the other.
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


def _read_files(source: Path) -> dict[str, bytes]:
    """All regular files of an archive or folder, by path relative to it."""
    if source.is_dir():
        try:
            return _collect(source, _folder_entries(source))
        except OSError as error:
            raise DataError(f"{error.filename or source}: cannot read ({error.strerror})") from None
    try:
        with tarfile.open(source) as archive:
            return _collect(source, _tar_entries(source, archive))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"{source}: not a readable .tar.gz archive ({str(error).splitlines()[0]}); "
            "download it again"
        ) from None


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


# --- official pickled batches ---------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Loads only numpy arrays and plain containers, so a crafted batch cannot run code."""

    def __init__(self, name: str, blob: bytes) -> None:
        super().__init__(io.BytesIO(blob), encoding="latin1")  # Python 2 pickles
        self.name = name

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in PICKLE_GLOBALS:
            raise DataError(
                f"{self.name}: refused to load pickled global {module}.{name} "
                "(only CIFAR-10's arrays, lists, dicts and strings are allowed)"
            )
        return super().find_class(module, name)


def _unpickle(name: str, blob: bytes) -> object:
    """The pickled object; a refused global or any other failure is one DataError line."""
    try:
        return _CifarUnpickler(name, blob).load()
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad batch
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise DataError(f"{name}: not a CIFAR-10 batch ({reason})") from None


def _integers(name: str, key: str, value: object) -> np.ndarray:
    """`value` as an integer array; floats, strings and objects are refused, not truncated."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise DataError(f"{name}: {key} is not an array of integers ({error})") from None
    if array.size and array.dtype.kind not in "iu":
        raise DataError(f"{name}: {key} holds {array.dtype} values, not integers")
    return array


def _check_range(name: str, what: str, array: np.ndarray, high: int) -> None:
    bad = array[(array < 0) | (array > high)]
    if bad.size:
        raise DataError(f"{name}: {what} {bad[0]} out of range 0..{high}")


def _batch(name: str, blob: bytes, n_classes: int) -> Split:
    """One batch, checked in full: (N, 3072) pixel bytes and N labels in 0..n_classes-1."""
    batch = _unpickle(name, blob)
    if not isinstance(batch, dict) or not {"data", "labels"} <= batch.keys():
        raise DataError(f"{name}: not a CIFAR-10 batch (no 'data' and 'labels' entries)")
    pixels = _integers(name, "data", batch["data"])
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{name}: data has shape {pixels.shape}, not (N, 3072) (N images of 3x32x32 bytes)"
        )
    _check_range(name, "pixel value", pixels, 255)
    labels = _integers(name, "labels", batch["labels"])
    if labels.ndim != 1:
        raise DataError(f"{name}: labels have shape {labels.shape}, not (N,)")
    if len(labels) != len(pixels):
        raise DataError(f"{name}: {len(pixels)} images but {len(labels)} labels")
    if not len(labels):
        raise DataError(f"{name}: holds no images")
    _check_range(name, "label", labels, n_classes - 1)
    images = pixels.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), labels.astype(np.int64))


def _batch_members(files: dict[str, bytes], where: Path) -> dict[str, str]:
    """Each batch file's name in `files`; a batch found twice is an error, not a pick."""
    wanted = (*TRAIN_BATCHES, "test_batch", "batches.meta")
    found: dict[str, str] = {}
    for name in files:
        base = posixpath.basename(name)
        if base in wanted and base in found:
            raise DataError(
                f"{where}: {base} is there twice, {found[base]} and {name}; "
                "point data.source at one copy"
            )
        if base in wanted:
            found[base] = name
    missing = [b for b in wanted[:-1] if b not in found]
    if missing:
        raise DataError(f"{where}: CIFAR-10 batch {missing[0]} is missing")
    return found


def _check_meta(name: str, blob: bytes) -> None:
    meta = _unpickle(name, blob)
    names = meta.get("label_names", CLASSES) if isinstance(meta, dict) else meta
    plain = isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)
    if not plain or tuple(names) != CLASSES:
        raise DataError(f"{name}: names classes {names!r:.200}, not CIFAR-10's")


def _from_batches(files: dict[str, bytes], where: Path) -> Cifar:
    members = _batch_members(files, where)
    if "batches.meta" in members:
        _check_meta(members["batches.meta"], files[members["batches.meta"]])
    train = [_batch(members[b], files[members[b]], len(CLASSES)) for b in TRAIN_BATCHES]
    test = _batch(members["test_batch"], files[members["test_batch"]], len(CLASSES))
    return Cifar(
        Split(np.concatenate([s.images for s in train]), np.concatenate([s.labels for s in train])),
        test,
    )


# --- class folders of PNG or JPEG images ----------------------------------------------------


def _open_checked(name: str, blob: bytes) -> tuple[np.ndarray, str]:
    """Decode as PNG or JPEG only, and only once the header says 32x32: no other decoder, no
    large allocation, is reachable from a crafted file."""
    with warnings.catch_warnings():
        # The size check below rejects what PIL would warn about; a warning would be a 2nd line.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS) as image:
            if image.size != (32, 32):
                raise DataError(f"{name}: image is {image.size[0]}x{image.size[1]}, not 32x32")
            image.load()
            if image.mode.startswith("I"):  # 16-bit greyscale PNG, which convert("RGB") clips
                grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2), image.mode
            return np.asarray(image.convert("RGB"), dtype=np.uint8), image.mode


def _decode(name: str, blob: bytes) -> tuple[np.ndarray, str]:
    """The image as 32x32x3 uint8 RGB, and the mode it was stored in."""
    try:
        return _open_checked(name, blob)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (not a PNG or JPEG image)") from None
    except Image.DecompressionBombError as error:
        raise DataError(f"{name}: image is far larger than 32x32 ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"{name}: not a readable image ({error})") from None


_CLASS_FILE = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+)$")


def _class_files(files: dict[str, bytes], where: Path) -> dict[tuple[str, str], list[str]]:
    """Image names by (split, class). All must sit under one root folder: train/ and test/
    found under two roots are two copies (or two data sets), which must not be merged."""
    found: dict[tuple[str, str], list[str]] = {}
    roots: dict[str, str] = {}  # root folder -> its first file, to name both in an error
    for name in files:
        match = _CLASS_FILE.match(name)
        if not match:
            continue
        roots.setdefault(name[: match.start(1)], name)
        if len(roots) > 1:
            first, other = roots.values()
            raise DataError(
                f"{where}: class folders in two places, {posixpath.dirname(first)}/ and "
                f"{posixpath.dirname(other)}/; point data.source at one copy"
            )
        found.setdefault((match.group(1), match.group(2)), []).append(name)
    return found


def _decode_chunk(items: list[tuple[str, bytes]]) -> tuple[np.ndarray, list[str]]:
    """Decoded images of `items` (name, bytes), and the names of those converted to RGB."""
    decoded = [_decode(name, blob) for name, blob in items]
    converted = [name for (name, _), (_, mode) in zip(items, decoded) if mode != "RGB"]
    return np.stack([image for image, _ in decoded]), converted


def _decode_all(items: list[tuple[str, bytes]]) -> tuple[np.ndarray, list[str]]:
    """`_decode_chunk` over all `items`, in order, spread over the CPU's cores.

    Decoding 60,000 small JPEGs is pure Python and Pillow work, so processes (not
    threads) share it; the first bad file in order still gives the error.
    """
    chunks = [items[i : i + DECODE_CHUNK] for i in range(0, len(items), DECODE_CHUNK)]
    workers = min(len(chunks), os.cpu_count() or 1)
    if workers <= 1:
        results = [_decode_chunk(chunk) for chunk in chunks]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_decode_chunk, chunks))
    return np.concatenate([images for images, _ in results]), [
        name for _, names in results for name in names
    ]


def _from_class_folders(files: dict[str, bytes], where: Path) -> Cifar:
    found = _class_files(files, where)
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
        names, labels = [], []
        for label, cls in enumerate(CLASSES):
            in_class = sorted(found.get((split, cls), []))
            if not in_class:
                raise DataError(f"{where}: class folder {split}/{cls} is missing or empty")
            names += in_class
            labels += [label] * len(in_class)
        images, non_rgb = _decode_all([(name, files[name]) for name in names])
        converted += non_rgb
        splits[split] = Split(images, np.asarray(labels, dtype=np.int64))
    if converted:
        print(f"{where}: converted {len(converted)} non-RGB images (greyscale, RGBA, palette) "
              f"to RGB, e.g. {converted[0]}")  # fmt: skip
    return Cifar(splits["train"], splits["test"])


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

    An archive of pickled batches is the official one and is checked against `md5` (if given).
    """
    if not source.exists():
        raise DataError(f"data.source: {source} does not exist")
    files = _without_junk(_read_files(source), source)
    if any(posixpath.basename(name) == "data_batch_1" for name in files):
        if source.is_file() and md5 and md5sum(source) != md5:
            raise DataError(
                f"{source}: md5 is {md5sum(source)}, expected {md5} (data.md5); "
                "the archive is corrupt or not the official one"
            )
        data = _from_batches(files, source)
    elif any(_CLASS_FILE.match(name) for name in files):
        data = _from_class_folders(files, source)
    else:
        raise DataError(
            f"{source}: neither CIFAR-10's pickled batches nor train/<class>/ and test/<class>/ "
            "folders"
        )
    _note_counts(data, source)
    return data


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
    if not Path(path).is_file():
        raise DataError(f"{path}: not found; run the download stage first (`dvc repro download`)")
    with np.load(path) as arrays:
        return Cifar(
            Split(arrays["train_images"], arrays["train_labels"]),
            Split(arrays["test_images"], arrays["test_labels"]),
            tuple(str(c) for c in arrays["classes"]),
        )
