"""Where and how the model runs: device, precision, memory layout.

CPU and GPU take the same code path; these settings only pick the device and
the autocast dtype. `resolve` checks them against this machine, so a setting it
cannot honour stops the stage with one line before any work.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ParamsError
from .params import RuntimeParams


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16, after resolving "auto"
    channels_last: bool

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler where fp16 needs one; a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def machine(self) -> str:
        """The GPU's name, or the CPU's model name: what a timing was measured on."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return cpuinfo("model name") or platform.processor() or platform.machine()


def cpuinfo(field: str) -> str:
    """A field of the first processor in /proc/cpuinfo ("model name", "vendor_id"), or ""."""
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    return ""


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AMX or AVX512-BF16)."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve(
    params: RuntimeParams, nproc: int = 1, sync_bn: bool = False, local_rank: int = 0
) -> Runtime:
    """Turn the params' `auto` values into a concrete device, precision and layout.

    `channels_last: auto` is channels_last on a CPU and NCHW on a GPU: ghost batch
    norm is one call a layer only in NCHW, which on an H100 trains the default recipe
    2.5 times as fast, while on CPUs channels_last is the faster (docs/speed.md).
    `nproc` and `sync_bn` are the training processes' settings, checked against
    the GPUs here; `local_rank` picks this process's GPU under torchrun.
    """
    device, precision = params.device, params.precision
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise ParamsError(
            "params.yaml: runtime.device: cuda, but no GPU is visible; use auto or cpu"
        )
    if device == "cuda" and nproc > torch.cuda.device_count():
        raise ParamsError(
            f"params.yaml: train.nproc: {nproc} processes, but only "
            f"{torch.cuda.device_count()} GPUs are visible"
        )
    if device == "cpu" and nproc > (os.cpu_count() or 1):
        raise ParamsError(
            f"params.yaml: train.nproc: {nproc} processes, but this machine has "
            f"{os.cpu_count()} CPU cores; each rank needs one"
        )
    if sync_bn and device != "cuda":
        raise ParamsError("params.yaml: train.sync_bn: true needs CUDA; use false on CPU")
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ParamsError(
            "params.yaml: runtime.precision: bf16, but this GPU does not support it; use fp16"
        )
    channels_last = device == "cpu" if params.channels_last == "auto" else params.channels_last
    index = local_rank if device == "cuda" else None
    return Runtime(torch.device(device, index), precision, channels_last)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
