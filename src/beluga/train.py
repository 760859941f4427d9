"""The training loop: OneCycleLR, per-epoch test, atomic checkpoints, resume.

Read it top to bottom: `fit` builds the optimizer and schedule, restores a
checkpoint if one matches these params, then runs epochs.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import distributed
from .atomic import write_with
from .distributed import ONE_PROCESS, Dist
from .evaluate import predict
from .loader import DeviceLoader
from .optim import make_criterion, make_optimizer
from .params import OptimizerParams, TrainParams
from .runtime import Runtime


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message names where."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; the last finished epoch is checkpointed."""


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between batches, so no write is cut short."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> _StopFlag:
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _set(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _rng_state(runtime: Runtime) -> dict:
    state = {"torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def _set_rng_state(state: dict, runtime: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


# Reading a loss back to the host waits for the GPU; doing it every few batches
# rather than every batch keeps the GPU fed. On a CPU it costs nothing either way.
READ_BACK_EVERY = 10


def _check_finite(pending: list[tuple[int, float, torch.Tensor]], epoch: int) -> None:
    """Stop at the first NaN or infinite loss among `pending`, naming where it happened."""
    values = torch.stack([loss for _, _, loss in pending]).tolist()
    for (batch_id, lr, _), value in zip(pending, values):
        if not math.isfinite(value):
            raise TrainingError(
                f"training loss is {value} at epoch {epoch}, batch {batch_id}, "
                f"lr {lr:.4g}; lower train.max_lr or use train.precision=fp32"
            )


def train_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    runtime: Runtime,
    epoch: int,
    stop: _StopFlag | None = None,
    dist: Dist = ONE_PROCESS,
) -> dict:
    """One pass over `loader`, one optimizer and scheduler step per batch, with a tqdm bar.

    Loss and accuracy are summed over all ranks; the bar shows rank 0's share.
    """
    model.train()
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    seen = 0
    bar = tqdm(loader, total=len(loader), dynamic_ncols=True, disable=not dist.is_main)
    pending: list[tuple[int, float, torch.Tensor]] = []  # losses not yet read back
    for batch_id, (x, y) in enumerate(bar):
        with runtime.autocast():
            logits = model(x)
            loss = criterion(logits, y)
        lr = scheduler.get_last_lr()[0]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        pending.append((batch_id, lr, loss.detach()))
        if len(pending) == READ_BACK_EVERY or batch_id == len(loader) - 1:
            _check_finite(pending, epoch)
            bar.set_description(
                f"Train: Loss={pending[-1][2].item():.4f} Batch_id={batch_id} "
                f"Accuracy={100 * correct.item() / seen:.2f}"
            )
            pending.clear()
        if stop is not None and stop.signum is not None:
            raise Interrupted(
                f"stopped by signal {stop.signum} in epoch {epoch}; "
                f"the epochs before it are checkpointed, rerun to resume"
            )
    totals = torch.stack([loss_sum, correct.to(loss_sum.dtype), loss_sum.new_tensor(seen)])
    loss_sum, correct, seen = distributed.sum_over_ranks(totals, dist).tolist()
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "lr": lr}


def fit(
    model: nn.Module,
    train_loader: DeviceLoader,
    test_loader: DeviceLoader,
    runtime: Runtime,
    params: TrainParams,
    optimizer_params: OptimizerParams,
    max_lr: float,
    checkpoint: Path,
    fingerprint: str,
    dist: Dist = ONE_PROCESS,
) -> list[dict]:
    """Train for params.epochs and return one row of history per epoch.

    After every epoch the whole state goes to `checkpoint`; a later call with
    the same `fingerprint` (a digest of everything that shapes the run)
    resumes there, and gives the same result as an uninterrupted run. Under
    torchrun every rank runs this; rank 0 alone prints and writes.
    """
    optimizer = make_optimizer(model, optimizer_params, max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        epochs=params.epochs,
        steps_per_epoch=len(train_loader),
        pct_start=params.pct_start,
        div_factor=params.div_factor,
        final_div_factor=params.final_div_factor,
        anneal_strategy=params.anneal_strategy,
    )
    scaler = runtime.grad_scaler()
    criterion = make_criterion(params.label_smoothing)
    step_model = distributed.wrap(model, dist, params.sync_bn)
    step_model = torch.compile(step_model) if params.compile else step_model
    say = print if dist.is_main else lambda *args: None
    history: list[dict] = []

    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=runtime.device, weights_only=False)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            mine = state["ranks"][dist.rank]
            train_loader.load_state_dict(mine["loader"])
            _set_rng_state(mine["rng"], runtime)
            history = state["history"]
            say(f"Resuming from {checkpoint} after epoch {len(history)}")
        else:
            say(f"Ignoring {checkpoint}: it belongs to other params or data; starting afresh")

    with _StopFlag() as stop:
        for epoch in range(len(history) + 1, params.epochs + 1):
            start = time.perf_counter()
            row = train_epoch(
                step_model, train_loader, optimizer, scheduler, scaler, criterion, runtime,
                epoch, stop, dist,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            logits = predict(model, test_loader, runtime)
            test_loss = nn.functional.cross_entropy(logits, test_loader.labels).item()
            test_correct = int((logits.argmax(1) == test_loader.labels).sum())
            total = len(test_loader.labels)
            say(
                f"Test set: Average loss: {test_loss:.4f}, "
                f"Accuracy: {test_correct}/{total} ({100 * test_correct / total:.2f}%)"
            )
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": row["train_loss"],
                    "train_accuracy": row["train_accuracy"],
                    "test_loss": test_loss,
                    "test_accuracy": test_correct / total,
                    "lr": row["lr"],
                    "seconds": seconds,
                }
            )
            state = {
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "ranks": distributed.gather(
                    {"loader": train_loader.state_dict(), "rng": _rng_state(runtime)}, dist
                ),
                "history": history,
            }
            if dist.is_main:
                write_with(checkpoint, lambda tmp, state=state: torch.save(state, tmp))
            distributed.barrier(dist)
            if stop.signum is not None:
                raise Interrupted(
                    f"stopped by signal {stop.signum} after epoch {epoch}, which is "
                    "checkpointed; rerun to resume"
                )
    return history
