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
from .timing import timed


def _flip_views(x: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
    return [x, x.flip(3)], [1 / 2, 1 / 2]


def _shifted_views(x: torch.Tensor) -> list[torch.Tensor]:
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up, down = padded[..., :-2, :-2], padded[..., 2:, 2:]
    return [x, x.flip(3), up, up.flip(3), down, down.flip(3)]


def _flip_shift_views(x: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
    """airbench's test-time augmentation: mirror, plus mirror at one-pixel diagonal shifts."""
    return _shifted_views(x), [1 / 4] * 2 + [1 / 8] * 4


def _flip_shift_equal_views(x: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
    """flip_shift's six views weighted equally: +0.07 and +0.10 points on two 12-epoch
    models (docs/short_recipe.md), at the same cost; not yet confirmed on other models."""
    return _shifted_views(x), [1 / 6] * 6


# each test-time augmentation: the views of a batch and the weights of their logits
TTA = {
    "none": lambda x: ([x], [1.0]),
    "flip": _flip_views,
    "flip_shift": _flip_shift_views,
    "flip_shift_equal": _flip_shift_equal_views,
}


def averaged_logits(
    model: nn.Module, x: torch.Tensor, tta: str, memory_format: torch.memory_format
) -> torch.Tensor:
    """Float32 logits of `x` averaged over its views, all views in one forward pass."""
    views, weights = TTA[tta](x)
    batch = (
        views[0] if len(views) == 1 else torch.cat(views).contiguous(memory_format=memory_format)
    )
    logits = model(batch).float().view(len(views), len(x), -1)
    return (logits * logits.new_tensor(weights).view(-1, 1, 1)).sum(0)


@timed("test passes", device_sync=True)
@torch.inference_mode()
def predict(
    model: nn.Module, loader: DeviceLoader, runtime: Runtime, tta: str = "none"
) -> torch.Tensor:
    """Float32 logits for every image of `loader`, in order.

    `tta` averages the logits over augmented views of each image: "flip" with
    its mirror image, "flip_shift" also with mirrored one-pixel shifts
    (`flip_shift_equal`: the same views weighted equally).
    """
    model.eval()
    out = []
    for x, _ in loader:
        with runtime.autocast():
            out.append(averaged_logits(model, x, tta, runtime.memory_format))
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
