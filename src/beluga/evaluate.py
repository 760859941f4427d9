"""Predictions over a whole split in large batches, optionally averaged with mirrored images."""

from __future__ import annotations

import torch
from torch import nn

from .loader import DeviceLoader
from .runtime import Runtime


@torch.inference_mode()
def predict(
    model: nn.Module, loader: DeviceLoader, runtime: Runtime, tta_flip: bool = False
) -> torch.Tensor:
    """Float32 logits for every image of `loader`, in order.

    With `tta_flip`, the logits of each image and its mirror image are averaged
    (test-time augmentation).
    """
    model.eval()
    out = []
    for x, _ in loader:
        with runtime.autocast():
            logits = model(x).float()
            if tta_flip:
                logits = (logits + model(x.flip(3)).float()) / 2
        out.append(logits)
    return torch.cat(out)
