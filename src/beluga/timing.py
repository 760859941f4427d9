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
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

_SPENT: dict[str, float] = {}
_counted_start_up = False


def timed(
    part: str, *, device_sync: bool = False
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Count the decorated function's wall time towards `part` of the stage's timing line;
    with `device_sync`, up to the end of the GPU work it queued. Timed functions must not
    call each other."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            start = time.perf_counter()
            try:
                result = function(*args, **kwargs)
                torch = sys.modules.get("torch")
                if device_sync and torch is not None and torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                return result
            finally:
                _SPENT[part] = _SPENT.get(part, 0.0) + time.perf_counter() - start

        return wrapper

    return decorate


def since_process_start() -> float:
    """Seconds since this process was created.

    On Linux from the kernel's start time of the process, to its 10 ms: psutil's creation
    time there stands on the boot time in whole seconds, up to a second off.
    """
    if hasattr(time, "CLOCK_BOOTTIME"):
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after "(comm)"
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    import psutil

    return time.time() - psutil.Process().create_time()


@dataclass(frozen=True)
class Begun:
    """A stage's start: its process's start-up (the first stage in a process only), the
    parts already counted then, and the clock."""

    start_up: float
    spent: dict[str, float]
    at: float


def begin() -> Begun:
    """Call first thing in a stage; `summary` of the result when it ends."""
    global _counted_start_up
    start_up = 0.0 if _counted_start_up else since_process_start()
    _counted_start_up = True
    return Begun(start_up, dict(_SPENT), time.perf_counter())


def summary(begun: Begun) -> str:
    """`timing: T s = start-up A s + data B s + ... + work C s` since `begun`."""
    stage = time.perf_counter() - begun.at
    parts = {name: seconds - begun.spent.get(name, 0.0) for name, seconds in _SPENT.items()}
    parts = {name: seconds for name, seconds in parts.items() if seconds > 0}
    terms = {"start-up": begun.start_up, **parts, "work": stage - sum(parts.values())}
    shown = " + ".join(f"{name} {seconds:.1f} s" for name, seconds in terms.items())
    return f"timing: {begun.start_up + stage:.1f} s = {shown}"
