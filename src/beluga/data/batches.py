"""CIFAR-10's official format: five pickled training batches, a test batch and batches.meta.

A pickle is a program, so it is run with an allow-list of globals (numpy's
arrays and nothing that could run code), and with no allocation larger than
the file's own bytes: a few hundred bytes of pickle must not conjure up
millions of blank images or gigabytes of memory.
"""

from __future__ import annotations

import io
import math
import pickle
import posixpath
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import CLASSES, Cifar, Split

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
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
_ALLOCATORS = {"ndarray", "_reconstruct"}  # globals that make an array of a shape they are given


class _CifarUnpickler(pickle.Unpickler):
    """Loads only numpy arrays and plain containers, so a crafted batch cannot run code, and
    allocates arrays only as large as the file (whose bytes must hold their data)."""

    def __init__(self, name: str, blob: bytes) -> None:
        super().__init__(io.BytesIO(blob), encoding="latin1")  # Python 2 pickles
        self.name, self.budget = name, len(blob)

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in PICKLE_GLOBALS:
            raise DataError(
                f"{self.name}: refused to load pickled global {module}.{name} "
                "(only CIFAR-10's arrays, lists, dicts and strings are allowed)"
            )
        found = super().find_class(module, name)
        if name == "ndarray":
            return _Allocation(self, np.ndarray)
        if name == "_reconstruct":
            return _Allocation(self, found)
        return found

    def charge(self, shape: object, dtype: object) -> None:
        """Take an array of `shape` and `dtype` out of the file's byte budget, or refuse it."""
        dims = shape if isinstance(shape, tuple | list) else (shape,)
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise DataError(f"{self.name}: not a CIFAR-10 batch (array shape {shape!r:.100})")
        nbytes = math.prod(dims) * np.dtype(dtype).itemsize
        self.budget -= nbytes
        if self.budget < 0:
            raise DataError(
                f"{self.name}: asks for arrays larger than the file ({nbytes:,} bytes for shape "
                f"{tuple(dims)!r:.100}); it is crafted or corrupt"
            )


class _Allocation:
    """numpy.ndarray or _reconstruct as a pickle calls them, charged to the unpickler's budget.

    `_reconstruct(ndarray, shape, dtype)` gets the real class back as its first argument.
    """

    def __init__(self, unpickler: _CifarUnpickler, real: object) -> None:
        self.unpickler, self.real = unpickler, real

    def __call__(self, *args: object) -> np.ndarray:
        args = tuple(np.ndarray if isinstance(a, _Allocation) else a for a in args)
        # ndarray(shape, dtype, ...) and _reconstruct(cls, shape, dtype)
        shape_at = 0 if self.real is np.ndarray else 1
        shape = args[shape_at] if len(args) > shape_at else ()
        dtype = args[shape_at + 1] if len(args) > shape_at + 1 else float
        self.unpickler.charge(shape, dtype)
        return self.real(*args)


def _unpickle(name: str, blob: bytes) -> object:
    """The pickled object; a refused global or any other failure is one DataError line."""
    try:
        return _CifarUnpickler(name, blob).load()
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad batch
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise DataError(f"{name}: not a CIFAR-10 batch ({reason[:200]})") from None


def _elements(value: object, budget: int) -> int:
    """How many numbers `value` (nested lists and arrays) holds, stopping past `budget`.

    Lists of shared references (a pickle's memo) hold more than their bytes; counting
    before numpy copies them keeps a small file from filling memory.
    """
    count, todo = 0, [value]
    while todo and count <= budget:
        item = todo.pop()
        count += item.size if isinstance(item, np.ndarray) else 1
        if isinstance(item, list | tuple):
            todo.extend(item)
    return count


def _integers(name: str, key: str, value: object, budget: int) -> np.ndarray:
    """`value` as an integer array; floats, strings and objects are refused, not truncated."""
    if _elements(value, budget) > budget:
        raise DataError(f"{name}: {key} holds more numbers than the file has bytes; it is crafted")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, MemoryError) as error:  # ragged nested lists
        reason = " ".join(str(error).split())[:200]
        raise DataError(f"{name}: {key} is not an array of integers ({reason})") from None
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
    pixels = _integers(name, "data", batch["data"], len(blob))
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{name}: data has shape {pixels.shape}, not (N, 3072) (N images of 3x32x32 bytes)"
        )
    _check_range(name, "pixel value", pixels, 255)
    labels = _integers(name, "labels", batch["labels"], len(blob))
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


def is_batches(files: dict[str, bytes]) -> bool:
    """True when `files` look like the official format (whatever else is wrong with them)."""
    return any(posixpath.basename(name) == "data_batch_1" for name in files)


def from_batches(files: dict[str, bytes], where: Path) -> Cifar:
    members = _batch_members(files, where)
    if "batches.meta" in members:
        _check_meta(members["batches.meta"], files[members["batches.meta"]])
    train = [_batch(members[b], files[members[b]], len(CLASSES)) for b in TRAIN_BATCHES]
    test = _batch(members["test_batch"], files[members["test_batch"]], len(CLASSES))
    return Cifar(
        Split(np.concatenate([s.images for s in train]), np.concatenate([s.labels for s in train])),
        test,
    )
