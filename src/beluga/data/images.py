"""Class folders of PNG or JPEG images (train/<class>/*, test/<class>/*), decoded in parallel."""

from __future__ import annotations

import io
import os
import posixpath
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .dataset import CLASSES, Cifar, Split

IMAGE_FORMATS = ("PNG", "JPEG")
DECODE_CHUNK = 2_000  # images per task of the decoding processes
_CLASS_FILE = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+)$")


def _open_checked(
    name: str, blob: bytes, side: int | None, upright: bool
) -> tuple[np.ndarray, str]:
    """Decode as PNG or JPEG only, and (with `side`) only once the header says side x side:
    no other decoder, no large allocation, is reachable from a crafted file."""
    with warnings.catch_warnings():
        # The size check below rejects what PIL would warn about; a warning would be a 2nd line.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS) as image:
            if side is not None and image.size != (side, side):
                raise DataError(f"{name}: image is {image.size[0]}x{image.size[1]}, "
                                f"not {side}x{side}")  # fmt: skip
            image.load()
            shown = ImageOps.exif_transpose(image) if upright else image
            return rgb_pixels(shown), image.mode


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """The image as H x W x 3 uint8 RGB, whatever its mode: 16-bit greyscale PNGs keep
    their grey levels (the high byte), which Pillow's convert("RGB") would clip to white."""
    if image.mode.startswith("I"):
        grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode(
    name: str, blob: bytes, *, side: int | None = 32, upright: bool = False
) -> tuple[np.ndarray, str]:
    """The image as H x W x 3 uint8 RGB, and the mode it was stored in; any failure is one
    DataError line naming `name`.

    The data set's images must be `side` x `side` (checked from the header); predict
    passes `side=None` and `upright=True` (EXIF orientation applied, as a viewer shows a
    photo) and resizes afterwards.
    """
    try:
        return _open_checked(name, blob, side, upright)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (not a PNG or JPEG image)") from None
    except Image.DecompressionBombError as error:
        raise DataError(f"{name}: image is too large to decode ({error})") from None
    except Exception as error:  # noqa: BLE001 - Pillow's plugins fail on crafted files in many ways
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise DataError(f"{name}: not a readable image ({reason[:200]})") from None


def is_class_folders(files: dict[str, bytes]) -> bool:
    return any(_CLASS_FILE.match(name) for name in files)


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
    decoded = [decode(name, blob) for name, blob in items]
    converted = [name for (name, _), (_, mode) in zip(items, decoded) if mode != "RGB"]
    return np.stack([image for image, _ in decoded]), converted


def _decode_all(items: list[tuple[str, bytes]]) -> tuple[np.ndarray, list[str]]:
    """`_decode_chunk` over all `items`, in order, spread over the CPU's cores.

    Decoding 60,000 small JPEGs is pure Python and Pillow work, so processes (not
    threads) share it; the first bad file in order still gives the error. The
    workers come from a fork server, not a fork of this process, which already
    holds the whole archive in memory (about 1 s less on 2 cores).
    """
    chunks = [items[i : i + DECODE_CHUNK] for i in range(0, len(items), DECODE_CHUNK)]
    workers = min(len(chunks), os.cpu_count() or 1)
    if workers <= 1:
        results = [_decode_chunk(chunk) for chunk in chunks]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("forkserver")) as pool:
            results = list(pool.map(_decode_chunk, chunks))
    return np.concatenate([images for images, _ in results]), [
        name for _, names in results for name in names
    ]


def from_class_folders(files: dict[str, bytes], where: Path) -> Cifar:
    found = _class_files(files, where)
    names: dict[str, list[str]] = {}
    labels: dict[str, list[int]] = {}
    for split in ("train", "test"):
        folders = {cls for (s, cls) in found if s == split}
        unknown = sorted(folders - set(CLASSES))
        if unknown:
            raise DataError(
                f"{where}: {split}/{unknown[0]} is not a CIFAR-10 class "
                f"(expected {', '.join(CLASSES)})"
            )
        names[split], labels[split] = [], []
        for label, cls in enumerate(CLASSES):
            in_class = sorted(found.get((split, cls), []))
            if not in_class:
                raise DataError(f"{where}: class folder {split}/{cls} is missing or empty")
            names[split] += in_class
            labels[split] += [label] * len(in_class)
    # one pool for both splits: starting its workers is a good part of the stage's time
    images, converted = _decode_all(
        [(name, files[name]) for name in names["train"] + names["test"]]
    )
    n_train = len(names["train"])
    if converted:
        print(f"{where}: converted {len(converted)} non-RGB images (greyscale, RGBA, palette) "
              f"to RGB, e.g. {converted[0]}")  # fmt: skip
    return Cifar(
        Split(images[:n_train], np.asarray(labels["train"], dtype=np.int64)),
        Split(images[n_train:], np.asarray(labels["test"], dtype=np.int64)),
    )
