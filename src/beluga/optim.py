"""Optimizer, schedule and loss built from params, shared by the LR range test and training."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .params import OptimizerParams, TrainParams
from .runtime import Runtime


def make_optimizer(model: nn.Module, params: OptimizerParams, lr: float) -> torch.optim.Optimizer:
    """SGD or Adam at `lr`, starting at params.momentum (Adam: as beta1)."""
    if params.name == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=lr, betas=(params.momentum, 0.999),
            weight_decay=params.weight_decay,
        )  # fmt: skip
    return torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=params.momentum,
        nesterov=params.nesterov and params.momentum > 0,
        weight_decay=params.weight_decay,
    )


def make_criterion(label_smoothing: float) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


class WeightAverage(AveragedModel):
    """AveragedModel's moving average of weights and buffers, in a few foreach operators.

    AveragedModel.update_parameters detaches and regroups every parameter and buffer on
    each call, an operator each, which a GPU's short step pays in dispatch
    (docs/speed.md). This makes get_ema_multi_avg_fn's arithmetic on the tensors as they
    are (a lerp of the floating-point ones; integer buffers as decay * own + (1 - decay)
    * model's, truncated), so the average is AveragedModel's bit for bit, and reads the
    count back from the device only on the first update after it is made or loaded.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self._started = False  # known to have averaged once, without asking the device

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if not self._started:
            self._started = True
            if self.n_averaged == 0:  # the first update copies the model
                super().update_parameters(model)
                return
        floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])  # own, model's
        others: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        own = chain(self.module.parameters(), self.module.buffers())
        for mine, theirs in zip(own, chain(model.parameters(), model.buffers())):
            group = floats if mine.dtype.is_floating_point else others
            group[0].append(mine)
            group[1].append(theirs)
        if floats[0]:
            torch._foreach_lerp_(*floats, 1 - self.decay)
        if others[0]:
            mixed = torch._foreach_mul(others[0], self.decay)
            torch._foreach_add_(mixed, torch._foreach_mul(others[1], 1 - self.decay))
            torch._foreach_copy_(others[0], mixed)
        self.n_averaged += 1

    def load_state_dict(self, *args, **kwargs):
        self._started = False
        return super().load_state_dict(*args, **kwargs)


def _float_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in chain(model.parameters(), model.buffers()) if t.is_floating_point()]


class Lookahead:
    """Keller Jordan's lookahead from airbench: a slow copy of the weights (and batch-norm
    statistics) that, every `every` steps, moves toward the trained ones by 1 - d and then
    replaces them, with d = decay ** every * progress ** 3 (none early in the run, most at
    its end); after the last step the weights become the slow copy, as in airbench, unless
    the run was shorter than `every` steps and the slow copy never moved."""

    def __init__(self, model: nn.Module, decay: float, every: int, total_steps: int) -> None:
        self.decay, self.every, self.total_steps = decay, every, total_steps
        self.slow = [t.detach().clone() for t in _float_tensors(model)]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (1 to total_steps); a no-op between updates."""
        on_schedule = step % self.every == 0
        last = step == self.total_steps and step >= self.every
        if not (on_schedule or last):
            return
        fast = _float_tensors(model)
        if on_schedule:
            d = self.decay**self.every * (step / self.total_steps) ** 3
            torch._foreach_lerp_(self.slow, fast, 1 - d)
        torch._foreach_copy_(fast, self.slow)

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        torch._foreach_copy_(self.slow, state["slow"])


@dataclass
class Optimization:
    """Everything one training step needs besides the model and the batch.

    `ema`, when the recipe asks for one, is an exponential moving average of the
    weights (and batch-norm statistics), updated after every `ema_every`-th step
    (with the decay raised to that power, as David Page does, so that a GPU does
    not spend a pass over every weight after each step); it is the model that is
    tested and saved. `lookahead`, when asked for, pulls the weights back toward
    their slow copy before the average sees them.
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    ema: AveragedModel | None = None
    ema_every: int = 1
    lookahead: Lookahead | None = None

    def step(self, loss: torch.Tensor, model: nn.Module) -> None:
        """Backward, optimizer, schedule and average: one training step after the forward pass."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        step = self.scheduler.last_epoch
        if self.lookahead is not None:
            self.lookahead.update(model, step)
        if self.ema is not None and step % self.ema_every == 0:
            self.ema.update_parameters(model)

    def kept(self, model: nn.Module) -> nn.Module:
        """The model to test and save: the moving average if there is one, else `model`."""
        return model if self.ema is None else self.ema.module

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "lookahead": None if self.lookahead is None else self.lookahead.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(state["lookahead"])


def one_cycle(
    model: nn.Module,
    *,
    optimizer: OptimizerParams,
    train: TrainParams,
    max_lr: float,
    steps_per_epoch: int,
    runtime: Runtime,
) -> Optimization:
    """The optimizer under OneCycleLR, as the params describe it.

    With train.cycle_momentum the momentum falls from optimizer.momentum to
    train.base_momentum at the LR peak and climbs back; without, it stays at
    optimizer.momentum.
    """
    opt = make_optimizer(model, optimizer, max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=max_lr,
        epochs=train.epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=train.pct_start,
        div_factor=train.div_factor,
        final_div_factor=train.final_div_factor,
        anneal_strategy=train.anneal_strategy,
        cycle_momentum=train.cycle_momentum,
        base_momentum=train.base_momentum,
        max_momentum=optimizer.momentum,
    )
    ema = None
    if train.ema_decay is not None:
        decay = train.ema_decay**train.ema_every
        ema = WeightAverage(model, decay)
    lookahead = None
    if train.lookahead_decay is not None:
        lookahead = Lookahead(model, train.lookahead_decay, train.lookahead_every,
                              train.epochs * steps_per_epoch)  # fmt: skip
    return Optimization(opt, scheduler, runtime.grad_scaler(),
                        make_criterion(train.label_smoothing), ema, train.ema_every,
                        lookahead)  # fmt: skip
