"""train.compile on this machine: the recipe's bare step, eager against torch.compile.

    python scripts/compile_check.py

Six steps of params.yaml's model and optimization on one random batch of 512, at the
precision `auto` picks and channels_last, first eagerly and then compiled; prints the
first step's time (the compile) and the steady rate (median of steps 3 to 6).
docs/speed.md has the figures.
"""

import statistics
import time

import numpy as np
import torch

from beluga.bench import recipe_setup
from beluga.params import RuntimeParams, load_params
from beluga.runtime import resolve

BATCH = 512


def main() -> None:
    params = load_params()
    runtime = resolve(RuntimeParams(device="auto", precision="auto", channels_last=True))
    images = np.random.default_rng(0).integers(0, 256, (2048, 32, 32, 3), dtype=np.uint8)
    x = torch.randn(BATCH, 3, 32, 32, device=runtime.device)
    x = x.contiguous(memory_format=runtime.memory_format)
    y = torch.randint(0, 10, (BATCH,), device=runtime.device)
    for compiled in (False, True):
        model, opt = recipe_setup(params, runtime, images, BATCH, 20)
        model.train()
        step_model = torch.compile(model) if compiled else model
        times = []
        for _ in range(6):
            start = time.perf_counter()
            with runtime.autocast():
                loss = opt.criterion(step_model(x), y)
            opt.step(loss, model)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rate = BATCH / statistics.median(times[2:])
        print(f"{'compiled' if compiled else 'eager':8s} first step {times[0]:.1f} s, "
              f"then {rate:.1f} img/s")  # fmt: skip


if __name__ == "__main__":
    main()
