"""Training speed, side by side on one machine: bare model step, beluga's epoch, reference loop.

    python -m beluga.bench [--quick] [--nchw] [--json FILE]

(a) ceiling: forward, backward and optimizer step on random tensors already in memory,
    for params.yaml's model and for the plain ResNet-9 (the reference recipe's model:
    ReLU, 3x3 conv stem, learnt BN scales, plain batch norm, no weight average);
(b) beluga: training epochs through DeviceLoader and `train_epoch`, and evaluation;
(c) reference: torchvision-style dataset with PIL transforms through a DataLoader
    with worker processes, fp32, default memory layout, as the reference run did.
Each is warmed up, then timed several times; the median counts. The model, optimizer,
loss and augmentation settings are params.yaml's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from . import data
from .atomic import write_json
from .evaluate import predict
from .loader import MEAN, STD, DeviceLoader
from .model import ResNet9, build_model
from .optim import Optimization, one_cycle
from .params import Params, RuntimeParams, load_params
from .runtime import Runtime, cpu_has_bf16, resolve
from .train import train_epoch

SHARED_COPY = Path("../shared/data/cifar10-jpeg.tar.gz")
# what the reference recipe's plain network differs in from the short recipe's
PLAIN_MODEL = {"activation": "relu", "stem": "conv", "freeze_bn_scale": False,
               "ghost_bn_splits": 1, "bn_bias_lr_factor": 1.0}  # fmt: skip


def machine() -> dict:
    """What the numbers were measured on."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name", platform.processor())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "cpu_bf16": cpu_has_bf16(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def training_images(imported: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """The real training set where a copy is at hand, else random images of the same size."""
    if imported.exists():
        cifar = data.load(imported)
        if len(cifar.train.labels) == 50_000:
            return cifar.train.images, cifar.train.labels, str(imported)
    if SHARED_COPY.exists():
        cifar = data.read_source(SHARED_COPY)
        return cifar.train.images, cifar.train.labels, str(SHARED_COPY)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, 50_000), "generated"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], int], device: torch.device, warmup: int, repeats: int) -> float:
    """Median images per second of `run` (which returns how many images it processed)."""
    for _ in range(warmup):
        run()
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        n = run()
        _sync(device)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def recipe_setup(
    params: Params, runtime: Runtime, images: np.ndarray, batch_size: int, steps: int
) -> tuple[ResNet9, Optimization]:
    """params.yaml's model and OneCycleLR training, set up for `steps` batches of `batch_size`."""
    model = runtime.prepare(build_model(params.model, 10, images))
    train = params.train.model_copy(update={"epochs": 1, "batch_size": batch_size})
    opt = one_cycle(model, optimizer=params.optimizer, train=train, max_lr=0.1,
                    steps_per_epoch=steps, runtime=runtime)  # fmt: skip
    return model, opt


def ceiling(
    params: Params, runtime: Runtime, images: np.ndarray, batch_size: int, steps: int,
    warmup: int, repeats: int,
) -> float:  # fmt: skip
    """(a) The bare step on random tensors already on the device."""
    model, opt = recipe_setup(params, runtime, images, batch_size, steps * (warmup + repeats))
    x = torch.randn(batch_size, 3, 32, 32, device=runtime.device)
    x = x.contiguous(memory_format=runtime.memory_format)
    y = torch.randint(0, 10, (batch_size,), device=runtime.device)
    model.train()

    def run() -> int:
        for _ in range(steps):
            with runtime.autocast():
                loss = opt.criterion(model(x), y)
            opt.step(loss, model)
        return steps * batch_size

    return timed(run, runtime.device, warmup, repeats)


def plain_params(params: Params) -> Params:
    """params.yaml with the plain network and no weight average: the step recipes compare with."""
    return params.model_copy(update={
        "model": params.model.model_copy(update=PLAIN_MODEL),
        "train": params.train.model_copy(update={"ema_decay": None}),
    })  # fmt: skip


def beluga_rates(
    params: Params, runtime: Runtime, images: np.ndarray, labels: np.ndarray, batch_size: int,
    repeats: int,
) -> tuple[float, float]:  # fmt: skip
    """(b) Whole epochs of beluga's loop over `images`, and evaluation over them."""
    loader = DeviceLoader(images, labels, batch_size, runtime, augment=params.augment,
                          shuffle=True)  # fmt: skip
    model, opt = recipe_setup(params, runtime, images, batch_size, len(loader) * (repeats + 1))

    def epoch() -> int:
        train_epoch(model, loader, opt, runtime, epoch=1)
        return len(labels)

    train = timed(epoch, runtime.device, 1, repeats)
    plain = DeviceLoader(images, labels, params.evaluate.batch_size, runtime)

    def evaluate() -> int:
        predict(model, plain, runtime)
        return len(labels)

    return train, timed(evaluate, runtime.device, 1, repeats)


class _PILDataset(Dataset):
    """Images handed out one by one as PIL images, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_rate(
    params: Params, images: np.ndarray, labels: np.ndarray, batch_size: int,
    device: torch.device, repeats: int,
) -> float:  # fmt: skip
    """(c) The reference loop: per-image PIL transforms, DataLoader workers, fp32."""
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
        transforms.RandomErasing(p=1.0, scale=(64 / 1024, 64 / 1024), ratio=(1.0, 1.0)),
    ])  # fmt: skip
    loader = DataLoader(_PILDataset(images, labels, transform), batch_size=batch_size,
                        shuffle=True, num_workers=2, persistent_workers=True,
                        pin_memory=device.type == "cuda")  # fmt: skip
    runtime = Runtime(device, "fp32", channels_last=False)
    model, opt = recipe_setup(params, runtime, images, batch_size, len(loader) * (repeats + 1))

    def epoch() -> int:
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = opt.criterion(model(x), y)
            opt.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            opt.optimizer.step()
            opt.scheduler.step()
        return len(labels)

    return timed(epoch, device, 1, repeats)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few batches each (~2 min on CPU)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    runtime = resolve(RuntimeParams(device=args.device, precision=args.precision,
                                    channels_last=not args.nchw))  # fmt: skip
    images, labels, source = training_images(Path(params.paths.data))
    on_gpu = runtime.device.type == "cuda"
    if args.quick:
        n = args.batch_size * (40 if on_gpu else 4)
        images, labels = images[:n], labels[:n]
    repeats = 3
    steps = max(1, len(labels) // args.batch_size)
    print(f"{machine()['cpu']} | {runtime.device} {runtime.precision} | {len(labels)} images "
          f"from {source}")  # fmt: skip
    results = {
        "ceiling_img_s": ceiling(params, runtime, images, args.batch_size, steps, 1, repeats)
    }
    results["plain_ceiling_img_s"] = ceiling(
        plain_params(params), runtime, images, args.batch_size, steps, 1, repeats
    )
    print(f"(a) ceiling:   {results['ceiling_img_s']:8.1f} img/s, "
          f"plain network {results['plain_ceiling_img_s']:.1f} img/s")  # fmt: skip
    results["train_img_s"], results["eval_img_s"] = beluga_rates(
        params, runtime, images, labels, args.batch_size, repeats
    )
    print(f"(b) beluga:    {results['train_img_s']:8.1f} img/s train, "
          f"{results['eval_img_s']:.1f} img/s eval")  # fmt: skip
    results["reference_img_s"] = reference_rate(
        params, images, labels, args.batch_size, runtime.device, repeats
    )
    print(f"(c) reference: {results['reference_img_s']:8.1f} img/s")
    results["speedup_vs_reference"] = results["train_img_s"] / results["reference_img_s"]
    results["fraction_of_ceiling"] = results["train_img_s"] / results["ceiling_img_s"]
    results["recipe_vs_plain"] = results["train_img_s"] / results["plain_ceiling_img_s"]
    ratios = (results["speedup_vs_reference"], results["fraction_of_ceiling"],
              results["recipe_vs_plain"])  # fmt: skip
    print(f"b/c = {ratios[0]:.2f}   b/a = {ratios[1]:.2f}   b/plain = {ratios[2]:.2f}")
    results.update(
        machine=machine(),
        settings={"device": str(runtime.device), "precision": runtime.precision,
                  "channels_last": runtime.channels_last, "batch_size": args.batch_size,
                  "images": len(labels), "data": source, "quick": args.quick,
                  "repeats": repeats},
    )  # fmt: skip
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
