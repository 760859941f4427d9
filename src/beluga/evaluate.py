"""Predictions and their score over a whole split, with optional test-time augmentation.

One `score` serves both the per-epoch test in training and the evaluate stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .loader import DeviceLoader
from .runtime import Runtime


def _mirror(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (model(x).float() + model(x.flip(3)).float()) / 2


def _mirror_shift(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """airbench's test-time augmentation: mirror, plus mirror at one-pixel diagonal shifts."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (_mirror(model, padded[..., :-2, :-2]) + _mirror(model, padded[..., 2:, 2:])) / 2
    return (_mirror(model, x) + shifted) / 2


TTA = {
    "none": lambda model, x: model(x).float(),
    "flip": _mirror,
    "flip_shift": _mirror_shift,
}


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DeviceLoader, runtime: Runtime, tta: str = "none"
) -> torch.Tensor:
    """Float32 logits for every image of `loader`, in order.

    `tta` averages the logits over augmented views of each image: "flip" with
    its mirror image, "flip_shift" also with mirrored one-pixel shifts.
    """
    model.eval()
    views = TTA[tta]
    out = []
    for x, _ in loader:
        with runtime.autocast():
            out.append(views(model, x))
    return torch.cat(out)


@dataclass(frozen=True)
class Score:
    logits: torch.Tensor  # float32, one row per image
    labels: torch.Tensor
    loss: float  # mean cross-entropy, without label smoothing
    correct: int

    @property
    def total(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    def __str__(self) -> str:
        return (
            f"Test set: Average loss: {self.loss:.4f}, "
            f"Accuracy: {self.correct}/{self.total} ({100 * self.accuracy:.2f}%)"
        )


def score(model: nn.Module, loader: DeviceLoader, runtime: Runtime, tta: str = "none") -> Score:
    """Logits, loss and correct count of `model` over every image of `loader`."""
    logits = predict(model, loader, runtime, tta)
    labels = loader.labels
    loss = F.cross_entropy(logits, labels).item()
    return Score(logits, labels, loss, int((logits.argmax(1) == labels).sum()))
