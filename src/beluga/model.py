"""The custom ResNet (ResNet-9) of the reference run: 6,573,130 trainable parameters."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .atomic import write_with


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3x3 convolution (no bias), optional 2x2 max-pool, BatchNorm, ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + (conv-bn-relu twice)(x), at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The layer table of the reference run.

    `logit_scale` multiplies the logits by a fixed number (0.125 in the published
    24-epoch recipe, 1 in the reference run); it is not trained.
    """

    def __init__(self, num_classes: int = 10, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.prep = conv_bn(3, 64)
        self.layer1 = nn.Sequential(conv_bn(64, 128, pool=True), Residual(128))
        self.layer2 = conv_bn(128, 256, pool=True)
        self.layer3 = nn.Sequential(conv_bn(256, 512, pool=True), Residual(512))
        self.head = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), nn.Linear(512, num_classes))
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.head(x) * self.logit_scale


def save_model(path: str | Path, model: ResNet9, classes: tuple[str, ...]) -> None:
    """Weights plus what is needed to rebuild the network, written atomically."""
    state = {
        "state_dict": model.state_dict(),
        "logit_scale": model.logit_scale,
        "classes": list(classes),
    }
    write_with(path, lambda tmp: torch.save(state, tmp))


def load_model(path: str | Path) -> tuple[ResNet9, tuple[str, ...]]:
    """The network `save_model` wrote, on the CPU, rebuilt from what the file records."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = ResNet9(len(state["classes"]), state["logit_scale"])
    model.load_state_dict(state["state_dict"])
    return model, tuple(state["classes"])
