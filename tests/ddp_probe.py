"""Run under `torchrun --nproc-per-node 2`: records, per rank, what data-parallel training saw.

Writes <out>/rank<R>.json with the images each rank drew in one epoch and a checksum
of the parameters after each of three optimizer steps (one step per epoch: the loader
holds one global batch).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import CPU, DEFAULTS

from beluga import distributed
from beluga.loader import DeviceLoader
from beluga.model import ResNet9
from beluga.optim import Optimization, make_criterion, make_optimizer
from beluga.train import train_epoch

out = Path(sys.argv[1])
ranks = distributed.init_from_env("cpu")
runtime = CPU
n = 64
images = np.zeros((n, 32, 32, 3), np.uint8)
images[:, 0, 0, 0] = np.arange(n)  # each image carries its index in one pixel
labels = np.arange(n) % 10

plain = DeviceLoader(images, labels, 16, runtime, shuffle=True, seed=3, ranks=ranks)
seen = []
for x, _ in plain:
    seen += torch.round(x[:, 0, 0, 0] * 0.2470 * 255 + 0.4914 * 255).long().tolist()

torch.manual_seed(0)
model = ResNet9(logit_scale=0.125)
trained = distributed.wrap(model, ranks, sync_bn=False)
loader = DeviceLoader(images, labels, n, runtime, augment=DEFAULTS.augment, shuffle=True, seed=0,
                      ranks=ranks)  # fmt: skip
optimizer = make_optimizer(model, DEFAULTS.optimizer, 0.05)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
opt = Optimization(optimizer, scheduler, runtime.grad_scaler(), make_criterion(0.0))
checksums, rows = [], []
for epoch in range(1, 4):
    rows.append(train_epoch(trained, loader, opt, runtime, epoch=epoch, ranks=ranks))
    checksums.append([float(p.double().sum()) for p in model.parameters()])
(out / f"rank{ranks.rank}.json").write_text(
    json.dumps({"seen": seen, "batches": len(plain), "checksums": checksums, "rows": rows})
)
distributed.close(ranks)
