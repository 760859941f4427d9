"""Filters for the `whiten` stem: eigenvectors of the training images' 3x3 patches.

As in David Page's and Keller Jordan's fast CIFAR-10 runs, the first layer then
sees decorrelated, unit-variance patch components from the first step on,
which lets a short schedule learn faster.
"""

from __future__ import annotations

import numpy as np
import torch

from .loader import MEAN, STD

SAMPLE = 10_000  # images the covariance is estimated from
CHUNK = 500  # images per step of the estimate, to bound memory
EPS = 1e-2  # keeps the near-zero eigenvalues from blowing up their filters


def patch_whitening(images: np.ndarray) -> torch.Tensor:
    """27 frozen 3x3x3 filters that whiten the normalised 3x3 patches of `images` (NHWC)."""
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    covariance = torch.zeros(27, 27, dtype=torch.float64)
    count = 0
    for start in range(0, min(len(images), SAMPLE), CHUNK):
        chunk = images[start : min(start + CHUNK, SAMPLE)]
        x = (torch.from_numpy(chunk).permute(0, 3, 1, 2).double() / 255 - mean) / std
        patches = x.unfold(2, 3, 1).unfold(3, 3, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 27)
        covariance += patches.T @ patches
        count += len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance / count)
    filters = eigenvectors.T / torch.sqrt(eigenvalues + EPS)[:, None]
    return filters.reshape(27, 3, 3, 3).float()
