"""The training loop: OneCycleLR, per-epoch test, atomic checkpoints, resume.

Read it top to bottom: `fit` builds the optimizer and schedule, restores a
checkpoint if one belongs to this run, then runs epochs. Under data
parallelism every rank runs it; the ranks decide together to stop (a signal,
a non-finite loss, a failed write), so all stop at the same batch.
"""

from __future__ import annotations

import hashlib
import math
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import checkpoint, distributed
from .distributed import ONE_PROCESS, Ranks
from .errors import Interrupted, TrainingError
from .evaluate import score
from .loader import DeviceLoader
from .optim import Optimization, one_cycle
from .params import OptimizerParams, TrainParams
from .runtime import Runtime


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between batches, so no write is cut short."""

    def __init__(self) -> None:
        self.signum = 0

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
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def read_back_every(runtime: Runtime) -> int:
    """Batches between reading losses back to the host (and deciding whether to stop).

    On a GPU that read waits for the device, so it happens every few batches to
    keep the GPU fed; on a CPU it costs nothing, so a signal is acted on at once.
    """
    return 10 if runtime.device.type == "cuda" else 1


def _first_non_finite(pending: list[tuple[int, float, torch.Tensor]]) -> tuple[int, float] | None:
    """(batch, value) of the first NaN or infinite loss among `pending`, if any."""
    values = torch.stack([loss for _, _, loss in pending]).tolist()
    for (batch_id, _, _), value in zip(pending, values):
        if not math.isfinite(value):
            return batch_id, value
    return None


def _check_together(
    pending: list[tuple[int, float, torch.Tensor]],
    epoch: int,
    stop: _StopFlag | None,
    ranks: Ranks,
    device: torch.device,
) -> None:
    """Stop every rank at the same batch if any rank saw a non-finite loss or a signal."""
    bad = _first_non_finite(pending)
    signum = stop.signum if stop is not None else 0
    none = -(2**62)
    worst_bad, signum = distributed.max_over_ranks(
        [-bad[0] if bad else none, signum], ranks, device
    )
    if worst_bad != none:
        batch_id = -worst_bad
        lr = next(lr for b, lr, _ in pending if b == batch_id)
        value = bad[1] if bad and bad[0] == batch_id else "not finite (on another rank)"
        raise TrainingError(
            f"training loss is {value} at epoch {epoch}, batch {batch_id}, "
            f"lr {lr:.4g}; lower train.max_lr or use runtime.precision=fp32"
        )
    if signum:
        raise Interrupted(
            f"stopped by signal {signum} in epoch {epoch}; "
            "the epochs before it are checkpointed, rerun to resume"
        )


def train_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    opt: Optimization,
    runtime: Runtime,
    *,
    epoch: int,
    stop: _StopFlag | None = None,
    ranks: Ranks = ONE_PROCESS,
) -> dict:
    """One pass over `loader`, one optimizer and scheduler step per batch, with a tqdm bar.

    Loss and accuracy are summed over all ranks; the bar shows rank 0's share.
    """
    model.train()
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    seen = 0
    every = read_back_every(runtime)
    bar = tqdm(loader, total=len(loader), dynamic_ncols=True, disable=not ranks.is_main)
    pending: list[tuple[int, float, torch.Tensor]] = []  # losses not yet read back
    for batch_id, (x, y) in enumerate(bar):
        with runtime.autocast():
            logits = model(x)
            loss = opt.criterion(logits, y)
        lr = opt.scheduler.get_last_lr()[0]
        opt.step(loss, model)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        pending.append((batch_id, lr, loss.detach()))
        if len(pending) == every or batch_id == len(loader) - 1:
            _check_together(pending, epoch, stop, ranks, runtime.device)
            bar.set_description(
                f"Train: Loss={pending[-1][2].item():.4f} Batch_id={batch_id} "
                f"Accuracy={100 * correct.item() / seen:.2f}"
            )
            pending.clear()
    totals = torch.stack([loss_sum, correct.to(loss_sum.dtype), loss_sum.new_tensor(seen)])
    loss_sum, correct, seen = distributed.sum_over_ranks(totals, ranks).tolist()
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "lr": lr}


def _restore(
    path: Path,
    fingerprint: str,
    settings: dict,
    model: nn.Module,
    opt: Optimization,
    loader: DeviceLoader,
    runtime: Runtime,
    ranks: Ranks,
) -> list[dict] | None:
    """The history so far if `path` holds this run's checkpoint (now restored), else None.

    Rank 0 reads the file and sends it to the others: on several nodes only node 0's
    clone holds it.

    None means a fresh start, with the model, loader and RNGs as they were; `opt` may
    then hold part of the checkpoint's state, so the caller builds it anew.
    """
    say = print if ranks.is_main else lambda *args: None
    state = distributed.from_rank0(checkpoint.load(path) if ranks.is_main else None, ranks)
    if state is None:
        return None
    if state.get("fingerprint") != fingerprint:
        changed = checkpoint.differences(state.get("settings", {}), settings)
        why = "; ".join(changed[:5]) if changed else "the code, data or torch version differ"
        say(f"Ignoring {path}: it belongs to another run ({why}); starting afresh")
        return None
    fresh = ({k: v.clone() for k, v in model.state_dict().items()}, loader.state_dict(),
             _rng_state(runtime))  # fmt: skip
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["training"])
        mine = state["ranks"][ranks.rank]
        loader.load_state_dict(mine["loader"])
        _set_rng_state(mine["rng"], runtime)
        history = list(state["history"])
    except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as error:
        model.load_state_dict(fresh[0])
        loader.load_state_dict(fresh[1])
        _set_rng_state(fresh[2], runtime)
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        say(f"Ignoring {path}: it no longer fits the model ({reason}); starting afresh")
        return None
    say(f"Resuming from {path} after epoch {len(history)}")
    return history


def _check_same_run(settings: dict, fingerprint: str, ranks: Ranks) -> None:
    """Every rank must train the same run: on several nodes each reads its own clone's
    params, data and code, and a node whose differ would train something else."""
    for rank, (theirs, their_print) in enumerate(distributed.gather((settings, fingerprint),
                                                                    ranks)):  # fmt: skip
        if their_print != fingerprint:
            changed = checkpoint.differences(theirs, settings)
            why = "; ".join(changed[:3]) if changed else "the code, data or torch version"
            raise TrainingError(
                f"rank {rank} would train another run than rank {ranks.rank} ({why}); give "
                "every node the same commit, params.yaml and data"
            )


def _check_identical(model: nn.Module, ranks: Ranks) -> None:
    """DDP keeps every rank's weights equal; rank 0 alone saves them, so a rank that
    trained apart (another node's clone, a broken collective) must fail the run.

    Batch norm's running statistics are each rank's own (estimated from its shard, as
    in any DDP run), so the parameters alone are compared.
    """
    if not ranks.enabled:
        return
    digest = hashlib.sha256()
    for tensor in model.parameters():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    digests = distributed.gather(digest.hexdigest(), ranks)
    differing = [rank for rank, theirs in enumerate(digests) if theirs != digests[0]]
    if differing:
        raise TrainingError(f"ranks {differing} ended with other weights than rank 0's")
    if ranks.is_main:
        print(f"All {ranks.world_size} ranks hold the same weights (sha256 {digests[0][:12]})")


def _write_together(
    write: Callable[[], None], what: str, ranks: Ranks, device: torch.device
) -> None:
    """Rank 0 runs `write`; if it fails, every rank stops with the same error."""
    failure = ""
    if ranks.is_main:
        try:
            write()
        except OSError as error:  # a WriteError, naming the file
            failure = str(error)
    (failed,) = distributed.max_over_ranks([int(bool(failure))], ranks, device)
    if failed:
        raise TrainingError(failure or f"rank 0 could not write {what}")


def fit(
    model: nn.Module,
    *,
    train_loader: DeviceLoader,
    test_loader: DeviceLoader,
    runtime: Runtime,
    train: TrainParams,
    optimizer: OptimizerParams,
    max_lr: float,
    checkpoint_path: Path,
    fingerprint: str,
    settings: dict,
    ranks: Ranks = ONE_PROCESS,
    on_epoch: Callable[[list[dict]], None] | None = None,
) -> tuple[list[dict], nn.Module]:
    """Train for train.epochs; return one row of history per epoch and the model to keep.

    After every epoch the whole state goes to `checkpoint_path`; a later call
    with the same `fingerprint` (a digest of everything that shapes the run)
    resumes there and gives the same result as an uninterrupted run.
    `settings` are the params behind the fingerprint, stored so that a later
    run can say which differ. Rank 0 alone tests, prints and writes. The model
    to keep is `model` itself, or its moving average where train.ema_decay is set.
    Rank 0 calls `on_epoch(history)` once the run is set up (resumed or not) and
    after each checkpointed epoch, so progress can be shown while it trains.
    """
    _check_same_run(settings, fingerprint, ranks)
    build = partial(one_cycle, model, optimizer=optimizer, train=train, max_lr=max_lr,
                    steps_per_epoch=len(train_loader), runtime=runtime)  # fmt: skip
    opt = build()
    step_model = distributed.wrap(model, ranks, train.sync_bn)
    step_model = torch.compile(step_model) if train.compile else step_model
    history = _restore(checkpoint_path, fingerprint, settings, model, opt, train_loader,
                       runtime, ranks)  # fmt: skip
    if history is None:
        opt, history = build(), []
    notify = on_epoch or (lambda history: None)
    _write_together(partial(notify, history), "the progress files", ranks, runtime.device)

    with _StopFlag() as stop:
        for epoch in range(len(history) + 1, train.epochs + 1):
            start = time.perf_counter()
            row = train_epoch(step_model, train_loader, opt, runtime, epoch=epoch, stop=stop,
                              ranks=ranks)  # fmt: skip
            test = score(opt.kept(model), test_loader, runtime) if ranks.is_main else None
            seconds = time.perf_counter() - start
            if test is not None:
                print(test)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": row["train_loss"],
                    "train_accuracy": row["train_accuracy"],
                    "test_loss": test.loss if test else None,
                    "test_accuracy": test.accuracy if test else None,
                    "lr": row["lr"],
                    "seconds": seconds,
                }
            )
            state = {
                "fingerprint": fingerprint,
                "settings": settings,
                "model": model.state_dict(),
                "training": opt.state_dict(),
                "ranks": distributed.gather(
                    {"loader": train_loader.state_dict(), "rng": _rng_state(runtime)}, ranks
                ),
                "history": history,
            }
            _write_together(partial(checkpoint.save, checkpoint_path, state),
                            f"the checkpoint {checkpoint_path}", ranks, runtime.device)  # fmt: skip
            _write_together(partial(notify, history), "the progress files", ranks, runtime.device)
            (signum,) = distributed.max_over_ranks([stop.signum], ranks, runtime.device)
            if signum:
                raise Interrupted(
                    f"stopped by signal {signum} after epoch {epoch}, which is "
                    "checkpointed; rerun to resume"
                )
    kept = opt.kept(model)
    _check_identical(kept, ranks)
    return history, kept
