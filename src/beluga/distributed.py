"""Data parallelism through torchrun's engine: launching ranks, and the collectives training needs.

With one process everything here is a no-op, so one code path serves one
process and several. `launch` starts the ranks from inside the train stage (the
engine behind `torchrun`), so params are checked once before any rank starts
and a failure ends as the ranks' own one-line error and exit code.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import DistError
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from .cli import LAUNCHER_PID
from .errors import TrainingError


@dataclass(frozen=True)
class Ranks:
    """Which of the training processes this one is."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


ONE_PROCESS = Ranks()


def is_worker() -> bool:
    """True in a rank that `launch` started."""
    return LAUNCHER_PID in os.environ


def local_rank() -> int:
    """This process's index on its machine (0 outside data parallelism): which GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def threads_per_rank(nproc: int) -> int:
    """OMP_NUM_THREADS where it is set, else the CPU cores shared out among the ranks
    (torchrun alone would give each one thread)."""
    return int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // nproc))


def launch(
    nproc: int,
    script: Path,
    *args: str,
    nodes: int = 1,
    node_rank: int = 0,
    endpoint: str = "",
    timeout_s: int = 300,
) -> int:
    """Run `script args` as `nproc` ranks on this machine; return the exit code to end with.

    With `nodes` > 1 this machine is node `node_rank` of a static rendezvous at
    `endpoint` (node 0's host:port, where node 0 hosts torchrun's store): global rank
    0, which alone writes, is node 0's first rank, on the machine that runs the stage
    under DVC. A node that has not joined within `timeout_s` ends the run. The ranks
    print their own one-line errors; the engine's failure report, which repeats them
    with tracebacks, is silenced.
    """
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_PID] = str(os.getpid())
    os.environ["OMP_NUM_THREADS"] = str(threads_per_rank(nproc))
    if nodes == 1:
        rendezvous = {"rdzv_backend": "c10d", "rdzv_endpoint": "localhost:0",
                      "run_id": str(uuid.uuid4())}  # fmt: skip
    else:
        rendezvous = {"rdzv_backend": "static", "rdzv_endpoint": endpoint, "run_id": "beluga",
                      "rdzv_configs": {"rank": node_rank, "timeout": timeout_s}}  # fmt: skip
    config = LaunchConfig(min_nodes=nodes, max_nodes=nodes, nproc_per_node=nproc,
                          max_restarts=0, monitor_interval=0.1, **rendezvous)  # fmt: skip
    try:
        elastic_launch(config, sys.executable)(str(script), *args)
    except ChildFailedError as error:
        _report(error.failures)
        return max(failure.exitcode for failure in error.failures.values())
    except SignalException:
        return 130
    except (RendezvousError, DistError, TimeoutError, OSError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise TrainingError(
            f"node {node_rank} of {nodes}: no training job at {endpoint} within {timeout_s} s "
            f"({reason}); start node 0's train stage and every other node's, with the same "
            "nodes.endpoint"
        ) from None
    return 0


def _report(failures: dict[int, ProcessFailure]) -> None:
    """Name a rank that a signal killed (the others' errors follow from its death), else
    print the tracebacks the ranks recorded. Expected errors were one line from rank 0.

    The engine stops the surviving ranks with SIGTERM once one has failed, so a rank
    that SIGTERM ended beside one that exited with an error or another signal was
    stopped, not the cause (the failures' timestamps are whole seconds, too coarse to
    tell the order).
    """
    tracebacks = {
        rank: f.error_file_data["message"].get("extraInfo", {}).get("py_callstack", f.message)
        for rank, f in failures.items()
        if isinstance(f.error_file_data.get("message"), dict)
    }
    stopped_by_engine = any(f.exitcode > 0 for f in failures.values())
    killed = sorted(
        (-f.exitcode == signal.SIGTERM, f.timestamp, rank, f)
        for rank, f in failures.items()
        if f.exitcode < 0 and (-f.exitcode != signal.SIGTERM or not stopped_by_engine)
    )
    if killed:
        *_, rank, failure = killed[0]
        error = TrainingError(
            f"rank {rank} was killed by signal {-failure.exitcode} ({failure.signal_name()}), "
            "the kernel's answer to running out of memory among others; the epochs before "
            "it are checkpointed, rerun to resume"
        )
        error.exit_code = 128 - failure.exitcode
        raise error
    for rank, traceback in sorted(tracebacks.items()):
        print(f"[rank{rank}]: {traceback}", file=sys.stderr)


def die_with_launcher() -> None:
    """Have the kernel kill this rank when its launcher dies (Linux).

    The engine starts each rank in a session of its own, so a kill of the
    launcher's process group would otherwise leave the rank training on.
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if str(os.getppid()) != os.environ[LAUNCHER_PID]:
        os._exit(1)  # the launcher died before the request took effect


def init_from_env(device_type: str, timeout_s: int = 300) -> Ranks:
    """Join the process group the launcher describes in the environment: NCCL or gloo.

    A collective that waits `timeout_s` for a rank (a node gone without closing its
    connections) fails instead of hanging for torch's 30 minutes.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return ONE_PROCESS
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                            timeout=timedelta(seconds=timeout_s))  # fmt: skip
    return Ranks(dist.get_rank(), world_size, local_rank())


def wrap(model: nn.Module, ranks: Ranks, sync_bn: bool) -> nn.Module:
    """The module to train: DistributedDataParallel over `model` when there are several ranks."""
    if not ranks.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def sum_over_ranks(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.enabled:
        dist.all_reduce(tensor)
    return tensor


def max_over_ranks(values: list[int], ranks: Ranks, device: torch.device) -> list[int]:
    """Element-wise maximum of `values` over all ranks: how ranks agree on a decision."""
    if not ranks.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def from_rank0(obj: object, ranks: Ranks) -> object:
    """Rank 0's `obj` on every rank: what only node 0's files hold (the checkpoint, the
    range test's pick), since other nodes have clones of their own."""
    if not ranks.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: object, ranks: Ranks) -> list:
    """`obj` from every rank, in rank order."""
    if not ranks.enabled:
        return [obj]
    out: list = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
         "timed out")  # fmt: skip


def lost_rank(error: BaseException, ranks: Ranks) -> str | None:
    """What happened, in one line, if `error` is a collective failing because another rank
    (its process, or its whole machine) is gone; None for any other error."""
    if not ranks.enabled or not isinstance(error, RuntimeError):
        return None
    text = " ".join(str(error).split())
    if not (isinstance(error, DistError) or any(mark in text for mark in _LOST)):
        return None
    return re.sub(r"^\[[^]]*\] ", "", text).split(". ")[0][:200]


def close(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.destroy_process_group()
