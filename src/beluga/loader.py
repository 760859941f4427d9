"""Batches from an image set resident on the training device, augmented as tensor ops.

Following airbench: the uint8 images are copied to the device once; each batch
is gathered, padded-and-cropped, flipped, cut out and normalised in a handful of
batched operations, with no per-image Python and no host round trips.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import ONE_PROCESS, Ranks
from .params import AugmentParams
from .runtime import Runtime
from .timing import timed

# Per-channel statistics of the official CIFAR-10 training images.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad NCHW images by `padding` and crop each back to its size at a random offset.

    Returns NHWC memory viewed as NCHW, which is the channels_last layout.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    rows = dy + torch.arange(h, device=x.device)
    cols = dx + torch.arange(w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def mirror(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where `which` (a bool per image) is true."""
    return torch.where(which[:, None, None, None], x.flip(3), x)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    return mirror(x, torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size x size square (clipped at the border) at a random centre of each image."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device) - cy + size // 2
    xs = torch.arange(w, device=x.device) - cx + size // 2
    mask = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]
    return x.masked_fill(mask[:, None], 0)


def steps_per_epoch(n_images: int, batch_size: int, world_size: int = 1) -> int:
    """Batches in an epoch: a last partial batch counts if every rank gets an image of it."""
    full, tail = divmod(n_images, batch_size)
    return full + (tail >= world_size)


class DeviceLoader:
    """Shuffled (or ordered) batches of normalised float images and labels on `device`.

    With `augment`, each batch gets crop, flip and cutout; draws come from the
    loader's own generators, so its `state_dict` makes an epoch repeatable after
    a resume. Under data parallelism every rank draws the same shuffled order and
    takes every `world_size`-th image of each global batch of `batch_size`, so
    the ranks see disjoint images and the number of steps does not change; each
    rank augments with a generator of its own.
    """

    @timed("data")
    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        runtime: Runtime,
        *,
        augment: AugmentParams | None = None,
        shuffle: bool = False,
        seed: int = 0,
        ranks: Ranks = ONE_PROCESS,
    ) -> None:
        device = runtime.device
        self.images = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)  # NCHW view of NHWC
        self.labels = torch.from_numpy(labels).to(device)
        self.batch_size = batch_size
        self.device = device
        self.memory_format = runtime.memory_format
        self.augment = augment
        self.shuffle = shuffle
        self.rank, self.world_size = ranks.rank, ranks.world_size
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.augment_generator = self.generator
        if ranks.enabled:
            self.augment_generator = torch.Generator(device=device)
            self.augment_generator.manual_seed(seed + 1000 * (ranks.rank + 1))
        # alternate flips (airbench): a random half of the images mirrored in even epochs, the
        # other half in odd ones, so every image is seen both ways every two epochs.
        self.epoch = 0
        if augment is not None and augment.flip == "alternate":
            parity = torch.Generator().manual_seed(seed)
            self.flip_parity = torch.randint(0, 2, (len(labels),), generator=parity).to(device)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return steps_per_epoch(len(self.labels), self.batch_size, self.world_size)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        aug = self.augment
        if aug is not None and aug.crop_padding:
            x = random_crop(x, aug.crop_padding, self.augment_generator)
        x = self.normalise(x)
        if aug is not None and aug.flip == "random":
            x = random_flip(x, self.augment_generator)
        if aug is not None and aug.flip == "alternate":
            x = mirror(x, (self.flip_parity[index] ^ (self.epoch % 2)).bool())
        if aug is not None and aug.cutout_size:
            x = cutout(x, aug.cutout_size, self.augment_generator)
        return x.contiguous(memory_format=self.memory_format), self.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        self.epoch += 1
        if self.shuffle:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            if len(index) < self.world_size:
                break  # too few images left to give every rank one
            yield self.batch(index[self.rank :: self.world_size])

    def state_dict(self) -> dict:
        """The generators' states (CPU byte tensors, also for a GPU generator)."""
        return {
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.generator.set_state(state["generator"])
        self.augment_generator.set_state(state["augment_generator"])
