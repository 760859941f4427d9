"""Batch norm with the short recipe's two options: ghost batches and a faster-learning bias."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters and buffers, and per-split ones) with two options.

    `ghost_splits` > 1: in training, each batch is normalised as that many
    sub-batches with statistics of their own (ghost batch norm, Hoffer et al.
    2017): noisier statistics regularise a short run. The loader shuffles, so
    any fixed split is as random as any other, and the split follows the memory
    layout so that the activations are never copied into another one. In NCHW
    (any contiguous input, so also a channels_last one of 1 x 1 images), sub-batch
    s holds images s, s + splits, ... (David Page's interleaved view): the batch
    is one `batch_norm` call over splits x channels, which counts where each
    operator's launch does (a GPU's short step). In channels_last that view would
    need a copy, so sub-batch s is the s-th contiguous chunk, a free view, each
    chunk its own call (free on a CPU, where the arithmetic dominates). Each
    sub-batch updates running statistics of its own (`split_mean`, `split_var`,
    one row per sub-batch); `running_mean` and
    `running_var` are their average, taken when the model is switched to eval
    and when its state is saved, as Page does. Averaging the rows is exactly the
    running statistics of the average, since both are linear in the updates. A
    batch that does not divide evenly (a last, short one) is normalised whole
    and moves every row by the same update.

    `bias_lr_factor` f: the stored bias is the effective one divided by sqrt(f),
    and the forward pass multiplies it back. Under SGD that trains the bias at
    f times the LR with its weight decay divided by f, David Page's pairing for
    frozen scales (f = 64), with no second parameter group for OneCycleLR and
    the LR range test to keep in step. The state dict therefore holds the stored
    bias: load it into this class with the same factor, not into a plain
    nn.BatchNorm2d. Under data parallelism each rank splits its own share of the
    batch.

    A state dict without the per-split rows (model files written before they
    existed) loads too: every row starts from the running statistics.
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
        if ghost_splits > 1:
            self.register_buffer("split_mean", self.running_mean.repeat(ghost_splits, 1))
            self.register_buffer("split_var", self.running_var.repeat(ghost_splits, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_gain
        splits = self.ghost_splits
        if self.training:
            self.num_batches_tracked.add_(1)
        if not self.training or splits == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, bias,
                                self.training, self.momentum, self.eps)  # fmt: skip
        if len(x) % splits:
            stats = self._average()
            y = F.batch_norm(x, *stats, self.weight, bias, True, self.momentum, self.eps)
            with torch.no_grad():
                self.split_mean.add_(stats[0] - self.running_mean)
                self.split_var.add_(stats[1] - self.running_var)
            return y
        if x.is_contiguous():
            n, c, h, w = x.shape
            y = F.batch_norm(x.view(n // splits, splits * c, h, w), self.split_mean.view(-1),
                             self.split_var.view(-1), self.weight.repeat(splits),
                             bias.repeat(splits), True, self.momentum, self.eps)  # fmt: skip
            return y.view(n, c, h, w)
        stats = zip(x.chunk(splits), self.split_mean, self.split_var)
        return torch.cat([
            F.batch_norm(part, mean, var, self.weight, bias, True, self.momentum, self.eps)
            for part, mean, var in stats
        ])  # fmt: skip

    @torch.no_grad()
    def _average(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the running statistics to the sub-batches' average; return copies of them."""
        torch.mean(self.split_mean, 0, out=self.running_mean)
        torch.mean(self.split_var, 0, out=self.running_var)
        return self.running_mean.clone(), self.running_var.clone()

    def train(self, mode: bool = True) -> BatchNorm:
        if not mode and self.ghost_splits > 1:
            self._average()
        return super().train(mode)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        if self.ghost_splits > 1:
            self._average()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if self.ghost_splits > 1 and f"{prefix}split_mean" not in state_dict:
            for name in ("mean", "var"):
                running = state_dict.get(f"{prefix}running_{name}")
                if running is not None:
                    state_dict[f"{prefix}split_{name}"] = running.repeat(self.ghost_splits, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
