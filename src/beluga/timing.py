"""Where a stage's wall time goes, printed as one line when it ends: the process's start-up
(the interpreter and imports: torch's alone takes seconds), then the parts the library marks
with `timed` (the data: reading the data file and putting it on the device, which on a GPU
includes CUDA's start; the passes over the test images; the ONNX export and ONNX Runtime's
pass), then the rest of the stage's work. docs/speed.md reads these lines for the fixed
costs of a stage."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import psutil

P = ParamSpec("P")
R = TypeVar("R")

_SPENT: dict[str, float] = {}


def timed(part: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count the decorated function's wall time towards `part` of the stage's timing line
    (on a GPU up to the end of the work it queued). Timed functions must not call each other."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                torch = sys.modules.get("torch")
                if torch is not None and torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                _SPENT[part] = _SPENT.get(part, 0.0) + time.perf_counter() - start

        return wrapper

    return decorate


def since_process_start() -> float:
    """Seconds since this process was created: its start-up, when called first thing.

    On Linux from /proc, to the 10 ms of the kernel's clock: psutil's creation time there
    stands on the boot time in whole seconds, up to a second off.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return time.time() - psutil.Process().create_time()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after "pid (comm)"
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


def summary(start_up: float, stage: float) -> str:
    """`timing: T s = start-up A s + data B s + ... + work C s`, after `stage` s in the stage."""
    parts = {"start-up": start_up, **_SPENT, "work": stage - sum(_SPENT.values())}
    terms = " + ".join(f"{name} {seconds:.1f} s" for name, seconds in parts.items())
    return f"timing: {start_up + stage:.1f} s = {terms}"
