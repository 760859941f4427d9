"""The compact file every later stage reads (paths.data), and stratified subsets of it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..atomic import write_with
from ..errors import DataError
from ..timing import timed
from .dataset import CLASSES, Cifar, Split


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


@timed("data")
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
