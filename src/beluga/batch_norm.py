"""Batch norm with the short recipe's two options: ghost batches and a faster-learning bias."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameter and buffer names and shapes) with two options.

    `ghost_splits` > 1: in training, each batch is normalised as that many
    interleaved sub-batches with statistics of their own (ghost batch norm,
    Hoffer et al. 2017): noisier statistics regularise a short run. The running
    statistics are the sub-batches' average, so testing is unchanged. A batch
    that does not divide evenly (a last, short one) is normalised whole.

    `bias_lr_factor` f: the stored bias is the effective one divided by sqrt(f),
    and the forward pass multiplies it back. Under SGD that trains the bias at
    f times the LR with its weight decay divided by f, David Page's pairing for
    frozen scales (f = 64), with no second parameter group for OneCycleLR and
    the LR range test to keep in step. The state dict therefore holds the stored
    bias: load it into this class with the same factor, not into a plain
    nn.BatchNorm2d. Under data parallelism each rank splits its own share of the
    batch.
    """

    def __init__(
        self,
        channels: int,
        *,
        ghost_splits: int = 1,
        bias_lr_factor: float = 1.0,
        freeze_scale: bool = False,
    ) -> None:
        super().__init__(channels)
        self.ghost_splits = ghost_splits
        self.bias_gain = math.sqrt(bias_lr_factor)
        self.weight.requires_grad_(not freeze_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_gain
        if self.training:
            self.num_batches_tracked.add_(1)
        splits = self.ghost_splits
        if not self.training or splits == 1 or len(x) % splits:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, bias,
                                self.training, self.momentum, self.eps)  # fmt: skip
        n, c, h, w = x.shape
        mean, var = self.running_mean.repeat(splits), self.running_var.repeat(splits)
        # sample i goes to sub-batch i % splits: (n, c) -> (n / splits, splits * c)
        y = F.batch_norm(x.reshape(n // splits, splits * c, h, w), mean, var,
                         self.weight.repeat(splits), bias.repeat(splits), True, self.momentum,
                         self.eps).reshape(n, c, h, w)  # fmt: skip
        with torch.no_grad():
            self.running_mean.copy_(mean.view(splits, c).mean(0))
            self.running_var.copy_(var.view(splits, c).mean(0))
        if x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return y
