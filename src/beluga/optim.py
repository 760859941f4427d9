"""Optimizer and loss built from params, shared by the LR range test and training."""

from __future__ import annotations

import torch
from torch import nn

from .params import OptimizerParams


def make_optimizer(model: nn.Module, params: OptimizerParams, lr: float) -> torch.optim.Optimizer:
    if params.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=params.momentum,
        nesterov=params.nesterov and params.momentum > 0,
        weight_decay=params.weight_decay,
    )


def make_criterion(label_smoothing: float) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
