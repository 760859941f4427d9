"""The arrays every source becomes, and CIFAR-10's facts that checks are made against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
OFFICIAL_COUNTS = {"train": 50_000, "test": 10_000}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, N x 32 x 32 x 3
    labels: np.ndarray  # int64, N


@dataclass(frozen=True)
class Cifar:
    train: Split
    test: Split
    classes: tuple[str, ...] = CLASSES
