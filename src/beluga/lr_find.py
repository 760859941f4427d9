"""LR range test with torch-lr-finder, and rules that turn its curve into one max_lr."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from .errors import LRFindError
from .loader import DeviceLoader
from .optim import make_criterion, make_optimizer
from .params import LRFindParams, OptimizerParams
from .runtime import Runtime


class _DeviceBatches(TrainDataLoaderIter):
    """Feeds torch-lr-finder from the device-resident loader, restarting it when it runs out."""

    def inputs_labels_from_batch(self, batch_data):
        return batch_data


@dataclass(frozen=True)
class Curve:
    lrs: np.ndarray
    losses: np.ndarray  # smoothed, as torch-lr-finder records them


def run_range_test(
    model: nn.Module,
    loader: DeviceLoader,
    runtime: Runtime,
    *,
    optimizer: OptimizerParams,
    label_smoothing: float,
    finder: LRFindParams,
) -> Curve:
    """Sweep the LR from start_lr to end_lr, one batch per step, and record the loss.

    The optimizer runs at the momentum training starts with (optimizer.momentum).
    The model and optimizer are restored to their initial state afterwards.
    """
    dtype = runtime.autocast_dtype
    lr_finder = LRFinder(
        model,
        make_optimizer(model, optimizer, finder.start_lr),
        make_criterion(label_smoothing),
        device=runtime.device,
        amp_backend="torch" if dtype else None,
        amp_config={"device_type": runtime.device.type, "dtype": dtype} if dtype else None,
        grad_scaler=runtime.grad_scaler() if dtype else None,
    )
    lr_finder.range_test(
        _DeviceBatches(loader),
        start_lr=finder.start_lr,
        end_lr=finder.end_lr,
        num_iter=finder.num_iter,
        step_mode=finder.step_mode,
        smooth_f=finder.smooth_f,
        diverge_th=finder.diverge_th,
    )
    lr_finder.reset()
    return Curve(np.asarray(lr_finder.history["lr"]), np.asarray(lr_finder.history["loss"]))


def usable(curve: Curve) -> Curve:
    """The curve up to (not including) its first NaN or infinite loss."""
    bad = np.flatnonzero(~np.isfinite(curve.losses))
    end = bad[0] if bad.size else len(curve.losses)
    return Curve(curve.lrs[:end], curve.losses[:end])


def steepest(losses: np.ndarray) -> int:
    """torch-lr-finder's rule: the point where the loss falls fastest."""
    return int(np.gradient(losses).argmin())


def valley(losses: np.ndarray) -> int:
    """fastai's rule: part-way down the longest stretch over which the loss keeps falling."""
    n = len(losses)
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end = i
            start = end - run[end]
    third = (end - start) / 3
    return start + int(third) + int(third / 2)


def first_climb(losses: np.ndarray, min_rise: float) -> int:
    """Index of the first loss `min_rise` above the lowest one before it (the length if none)."""
    low = np.minimum.accumulate(losses)
    risen = np.flatnonzero(losses > low * (1 + min_rise))
    return int(risen[0]) if risen.size else len(losses)


def minimum(losses: np.ndarray, min_rise: float) -> int:
    """Leslie Smith's rule: the lowest loss before the curve first climbs `min_rise` above it.

    Looking only up to that first climb keeps a late second dip (weights growing
    under a huge LR, which BatchNorm hides) from winning.
    """
    return int(np.argmin(losses[: first_climb(losses, min_rise)]))


def plateau(losses: np.ndarray, min_rise: float, tolerance: float) -> int:
    """The middle of the bottom: of the unbroken stretch around `minimum`'s pick whose losses
    are within `tolerance` of its loss (on an exponential sweep, its geometric centre).

    On a broad, flat bottom the smoothed loss's bumps are as deep as the bottom itself, so its
    lowest point lands anywhere in it from seed to seed; the stretch's middle moves far less
    (docs/lr_rules.md).
    """
    climb = first_climb(losses, min_rise)
    low = int(np.argmin(losses[:climb]))
    outside = np.flatnonzero(losses[:climb] > losses[low] * (1 + tolerance))
    before, after = outside[outside < low], outside[outside > low]
    start = int(before[-1]) + 1 if before.size else 0
    end = int(after[0]) - 1 if after.size else climb - 1
    return (start + end) // 2


def trimmed(curve: Curve, finder: LRFindParams) -> Curve:
    """The part of the curve the rules read: finite, less skip_start and skip_end points."""
    finite = usable(curve)
    stop = len(finite.lrs) - finder.skip_end
    trim = Curve(finite.lrs[finder.skip_start : stop], finite.losses[finder.skip_start : stop])
    if len(trim.losses) < 2:
        raise LRFindError(
            f"LR range test: only {len(finite.losses)} finite losses of {len(curve.losses)}; "
            "lower lr_find.end_lr or lr_find.start_lr"
        )
    return trim


def suggest(curve: Curve, finder: LRFindParams) -> dict[str, float]:
    """Each rule's suggested LR on the finite, trimmed curve."""
    trim = trimmed(curve, finder)
    picks = {
        "steepest": steepest(trim.losses),
        "valley": valley(trim.losses),
        "minimum": minimum(trim.losses, finder.min_rise),
        "plateau": plateau(trim.losses, finder.min_rise, finder.plateau_tol),
    }
    return {name: float(trim.lrs[index]) for name, index in picks.items()}


def searched(curve: Curve, finder: LRFindParams) -> tuple[float, float]:
    """The LR span lr_find.suggestion's rule chose from: the trimmed curve, and for
    `minimum` and `plateau` only up to the first climb."""
    trim = trimmed(curve, finder)
    end = len(trim.lrs)
    if finder.suggestion in ("minimum", "plateau"):
        end = first_climb(trim.losses, finder.min_rise)
    return float(trim.lrs[0]), float(trim.lrs[end - 1])
