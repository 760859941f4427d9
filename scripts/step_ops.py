"""Operators one training step dispatches, recipe against plain network: a proxy for GPU launches.

    python scripts/step_ops.py

On a GPU a step of ResNet-9 at batch 512 is short enough that each operator's kernel
launch counts; on a CPU it does not. This counts the top-level ATen operators of one
forward, backward, optimizer and weight-average step (batch 64, fp32, on the CPU; a GPU
under autocast adds its casts, and a foreach operator over integer tensors launches a
kernel per tensor there), for params.yaml's recipe, with one of its options turned back
to the plain network's at a time, and for the plain network, in both memory layouts
(ghost batch norm is one `batch_norm` call a layer in NCHW, one a chunk in
channels_last). docs/speed.md has the figures.
"""

from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from beluga.bench import PLAIN_MODEL, plain_params, recipe_setup
from beluga.params import RuntimeParams, load_params
from beluga.runtime import resolve

BATCH = 64


class Count(TorchDispatchMode):
    """Counts every ATen operator called under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def step_ops(params, runtime, images: np.ndarray) -> Counter:
    model, opt = recipe_setup(params, runtime, images, BATCH, steps=10)
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=runtime.memory_format)
    y = torch.randint(0, 10, (BATCH,))
    model.train()
    for _ in range(2):  # the first creates the optimizer's state and copies the average
        counter = Count()
        with counter, runtime.autocast():
            loss = opt.criterion(model(x), y)
        with counter:
            opt.step(loss, model)
    return counter.ops


def main() -> None:
    params = load_params()
    images = np.random.default_rng(0).integers(0, 256, (512, 32, 32, 3), dtype=np.uint8)
    variants = {"recipe (params.yaml)": params}
    for key, plain in PLAIN_MODEL.items():
        model = params.model.model_copy(update={key: plain})
        variants[f"recipe, model.{key}={plain}"] = params.model_copy(update={"model": model})
    variants["recipe, train.ema_decay=None"] = params.model_copy(
        update={"train": params.train.model_copy(update={"ema_decay": None})}
    )
    variants["plain network"] = plain_params(params)
    for channels_last in (True, False):
        runtime = resolve(RuntimeParams(device="cpu", precision="fp32",
                                        channels_last=channels_last))  # fmt: skip
        print(f"runtime.channels_last={channels_last}")
        for name, variant in variants.items():
            ops = step_ops(variant, runtime, images)
            top = ", ".join(f"{op} {n}" for op, n in ops.most_common(4))
            print(f"  {name:45s} {sum(ops.values()):5d} ops  ({top})")


if __name__ == "__main__":
    main()
