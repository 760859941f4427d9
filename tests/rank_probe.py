"""Two ranks of real training, launched as the train stage launches them, with one rank sabotaged.

    python tests/rank_probe.py OUT nan|kill|bug|sigterm

`nan`: rank 1's loss turns NaN at its third batch; `kill`: rank 1 is killed (SIGKILL, as
the kernel kills a process out of memory) at its third batch; `bug`: rank 1 raises
ZeroDivisionError there. `sigterm`: each rank writes its pid
to OUT/rank<R>.pid at its first batch (so the stop flag's handler is in place, however
slowly the machine set up the run) and the test sends SIGTERM to rank 1. Every rank must stop at the
same batch, rank 0 alone printing the one-line error, and the launcher exit with the
ranks' code.
"""

import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import CPU, DEFAULTS

from beluga import distributed, optim
from beluga.cli import stage
from beluga.loader import DeviceLoader
from beluga.model import ResNet9
from beluga.train import fit

out, mode = Path(sys.argv[1]), sys.argv[2]


class _NaNAfter(torch.nn.CrossEntropyLoss):
    """The usual loss, but NaN from its `after`-th call on."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = super().forward(logits, target)
        return loss * float("nan") if self.calls >= self.after else loss


class _KilledAfter(_NaNAfter):
    """The usual loss, until its `after`-th call, when the kernel kills the process."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.after:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.nn.CrossEntropyLoss.forward(self, logits, target)


class _BugAfter(_NaNAfter):
    """The usual loss, until its `after`-th call, which fails as a bug would."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.after:
            raise ZeroDivisionError("a bug in rank 1")
        return torch.nn.CrossEntropyLoss.forward(self, logits, target)


class _PidAtFirstBatch(torch.nn.CrossEntropyLoss):
    """The usual loss, which writes this rank's pid file when training has begun."""

    def __init__(self, pid_file: Path) -> None:
        super().__init__()
        self.pid_file = pid_file

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.pid_file.exists():  # written whole, then renamed: never read half-written
            partial = self.pid_file.with_suffix(".partial")
            partial.write_text(str(os.getpid()))
            partial.replace(self.pid_file)
        return super().forward(logits, target)


@stage
def worker() -> None:
    distributed.die_with_launcher()
    ranks = distributed.init_from_env("cpu")
    if mode == "sigterm":
        pid_file = out / f"rank{ranks.rank}.pid"
        optim.make_criterion = lambda smoothing: _PidAtFirstBatch(pid_file)
    if mode == "nan" and ranks.rank == 1:
        optim.make_criterion = lambda smoothing: _NaNAfter(3)
    if mode == "kill" and ranks.rank == 1:
        optim.make_criterion = lambda smoothing: _KilledAfter(3)
    if mode == "bug" and ranks.rank == 1:
        optim.make_criterion = lambda smoothing: _BugAfter(3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2048, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 2048)
    train = DEFAULTS.train.model_copy(update={"epochs": 50, "batch_size": 32})
    try:
        fit(ResNet9(), train_loader=DeviceLoader(images, labels, 32, CPU, shuffle=True,
                                                 ranks=ranks),
            test_loader=DeviceLoader(images[:64], labels[:64], 64, CPU), runtime=CPU,
            train=train, optimizer=DEFAULTS.optimizer, max_lr=0.01,
            checkpoint_path=out / "ckpt.pt", fingerprint="probe", settings={},
            ranks=ranks)  # fmt: skip
    finally:
        distributed.close(ranks)


@stage
def launcher() -> None:
    sys.exit(distributed.launch(2, Path(__file__), *sys.argv[1:]))


if __name__ == "__main__":
    worker() if distributed.is_worker() else launcher()
