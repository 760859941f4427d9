"""The step's parts that recipes change, timed alone: batch-norm forms and activations.

    python scripts/bench_parts.py [--fp32]

Forward + backward of the ResNet-9's eight batch norms (or activations) at their
shapes for one batch of 512, bf16 where the CPU has it (fp32 with `--fp32`),
channels_last; the median of 4 repetitions after a warm-up. `docs/speed.md` has the
figures and what they decided: ghost batch norm on contiguous sub-batches, and which
CELU runs on which CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from celu_precision import from_output
from torch import nn

from beluga.batch_norm import BatchNorm
from beluga.model import celu_from_exp
from beluga.runtime import cpu_has_bf16

BATCH, SPLITS = 512, 16
SHAPES = [(64, 32, 32)] + [(128, 16, 16)] * 3 + [(256, 8, 8)] + [(512, 4, 4)] * 3


def interleaved(x: torch.Tensor, norm: BatchNorm) -> torch.Tensor:
    """The earlier ghost batch norm: image i in sub-batch i % splits, through NCHW and back."""
    n, c, h, w = x.shape
    mean, var = norm.running_mean.repeat(SPLITS), norm.running_var.repeat(SPLITS)
    y = F.batch_norm(x.reshape(n // SPLITS, SPLITS * c, h, w), mean, var,
                     norm.weight.repeat(SPLITS), norm.bias.repeat(SPLITS), True)  # fmt: skip
    return y.reshape(n, c, h, w).contiguous(memory_format=torch.channels_last)


def timed(layer: Callable[[torch.Tensor, int], torch.Tensor], dtype: torch.dtype) -> float:
    """Median milliseconds of forward + backward through `layer` at every shape."""
    inputs = [torch.randn(BATCH, *shape).to(dtype) for shape in SHAPES]
    inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for i, x in enumerate(inputs):
            x = x.clone().requires_grad_()
            layer(x, i).backward(torch.ones_like(x))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", action="store_true", help="fp32 even where the CPU has bf16")
    fp32 = parser.parse_args().fp32
    dtype = torch.bfloat16 if cpu_has_bf16() and not fp32 else torch.float32
    plain = [nn.BatchNorm2d(s[0]) for s in SHAPES]
    ghost = [BatchNorm(s[0], ghost_splits=SPLITS) for s in SHAPES]
    stock_celu = nn.CELU(0.3)
    rows = {
        "batch norm, plain": lambda x, i: plain[i](x),
        "ghost batch norm, contiguous sub-batches (beluga)": lambda x, i: ghost[i](x),
        "ghost batch norm, interleaved (before)": lambda x, i: interleaved(x, ghost[i]),
        "ReLU": lambda x, i: F.relu(x),
        "CELU, torch's kernel": lambda x, i: stock_celu(x),
        "CELU from exp (beluga on AMD's CPUs in bf16)": lambda x, i: celu_from_exp(x, 0.3),
        "CELU from exp, gradient from the output (before)": lambda x, i: from_output(x),
    }
    print(f"{torch.__version__}, {dtype}, batch {BATCH}, channels_last")
    for name, layer in rows.items():
        print(f"{timed(layer, dtype):8.1f} ms  {name}")


if __name__ == "__main__":
    main()
