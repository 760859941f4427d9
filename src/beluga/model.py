"""The custom ResNet (ResNet-9) of the reference run: 6,573,130 trainable parameters.

Recipe options change an activation or the stem, never the layers and widths:
`activation` (ReLU or CELU), `stem` (the 3x3 convolution, or a frozen 3x3
patch-whitening convolution followed by a learnt 1x1 one with the same number
of weights) and `freeze_bn_scale` (batch-norm scales fixed at 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import write_with
from .params import ModelParams
from .whitening import patch_whitening

CELU_ALPHA = 0.075  # David Page's choice for this network
WHITENED_CHANNELS = 27  # one per eigenvector of a 3x3x3 patch


def _activation(name: str) -> nn.Module:
    return nn.CELU(CELU_ALPHA) if name == "celu" else nn.ReLU(inplace=True)


def conv_bn(
    c_in: int, c_out: int, activation: str, pool: bool = False, size: int = 3
) -> nn.Sequential:
    """Convolution (no bias), optional 2x2 max-pool, BatchNorm, activation."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, size, padding=size // 2, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), _activation(activation)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + (conv-bn-activation twice)(x), at constant width."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(channels, channels, activation), conv_bn(channels, channels, activation)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Whitening(nn.Conv2d):
    """A frozen 3x3 convolution whose filters decorrelate the pixels of 3x3 patches.

    Its weights are set from the training images (`beluga.whitening`) and saved
    with the model, but never trained.
    """

    def __init__(self) -> None:
        super().__init__(3, WHITENED_CHANNELS, 3, padding=1, bias=False)
        self.weight.requires_grad_(False)


class ResNet9(nn.Module):
    """The layer table of the reference run.

    `logit_scale` multiplies the logits by a fixed number (0.125 in the published
    24-epoch recipe, 1 in the reference run); it is not trained.
    """

    def __init__(
        self,
        num_classes: int = 10,
        logit_scale: float = 1.0,
        activation: str = "relu",
        stem: str = "conv",
        freeze_bn_scale: bool = False,
    ) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "logit_scale": logit_scale,
                       "activation": activation, "stem": stem,
                       "freeze_bn_scale": freeze_bn_scale}  # fmt: skip
        if stem == "whiten":
            self.prep = nn.Sequential(
                Whitening(), *conv_bn(WHITENED_CHANNELS, 64, activation, size=1)
            )
        else:
            self.prep = conv_bn(3, 64, activation)
        self.layer1 = nn.Sequential(
            conv_bn(64, 128, activation, pool=True), Residual(128, activation)
        )
        self.layer2 = conv_bn(128, 256, activation, pool=True)
        self.layer3 = nn.Sequential(
            conv_bn(256, 512, activation, pool=True), Residual(512, activation)
        )
        self.head = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), nn.Linear(512, num_classes))
        self.logit_scale = logit_scale
        if freeze_bn_scale:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.head(x) * self.logit_scale


def build_model(params: ModelParams, num_classes: int, train_images: np.ndarray) -> ResNet9:
    """The network params.model describes; the `whiten` stem's filters come from `train_images`."""
    model = ResNet9(num_classes, params.logit_scale, params.activation, params.stem,
                    params.freeze_bn_scale)  # fmt: skip
    if params.stem == "whiten":
        with torch.no_grad():
            model.prep[0].weight.copy_(patch_whitening(train_images))
    return model


def save_model(path: str | Path, model: ResNet9, classes: tuple[str, ...]) -> None:
    """Weights plus what is needed to rebuild the network, written atomically."""
    state = {"state_dict": model.state_dict(), "config": model.config, "classes": list(classes)}
    write_with(path, lambda tmp: torch.save(state, tmp))


def load_model(path: str | Path) -> tuple[ResNet9, tuple[str, ...]]:
    """The network `save_model` wrote, on the CPU, rebuilt from what the file records."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = ResNet9(**state["config"])
    model.load_state_dict(state["state_dict"])
    return model, tuple(state["classes"])
