"""Stage `train`: OneCycleLR training from the LR range test's suggestion (or train.max_lr)."""

import json
import statistics
from pathlib import Path

import pandas as pd

from beluga import data, distributed, figures
from beluga.atomic import write_json, write_with
from beluga.cli import check_batch_size, fingerprint, stage
from beluga.loader import DeviceLoader
from beluga.model import ResNet9, save_model
from beluga.params import Params, ParamsError, load_params
from beluga.runtime import Runtime, resolve, seed_everything
from beluga.train import fit

DATA = "data/cifar10.npz"
LR_FIND = "metrics/lr_find.json"
MODEL = "models/model.pt"
CHECKPOINT = Path("checkpoints/train.pt")
METRICS = "metrics/train.json"
HISTORY = "plots/history.csv"
CURVES = "plots/accuracy_curve.png"


@stage
def main() -> None:
    params = load_params()
    train = params.train
    runtime = resolve(train.device, train.precision, train.channels_last)
    if train.sync_bn and runtime.device.type != "cuda":
        raise ParamsError("params.yaml: train.sync_bn: true needs CUDA; use false on CPU")
    cifar = data.load(DATA)
    check_batch_size("train.batch_size", train.batch_size, len(cifar.train.labels))
    max_lr = train.max_lr or json.loads(Path(LR_FIND).read_text())["suggested_lr"]
    ranks = distributed.init_from_env(runtime.device.type)
    try:
        history = _train(params, cifar, max_lr, ranks)
    finally:
        distributed.close(ranks)
    if ranks.is_main:
        _write_outputs(history, runtime, max_lr)


def _train(
    params: Params, cifar: data.Cifar, max_lr: float, ranks: distributed.Dist
) -> pd.DataFrame:
    train = params.train
    runtime = resolve(train.device, train.precision, train.channels_last, ranks.local_rank)
    seed_everything(params.seed)
    device, layout = runtime.device, runtime.channels_last
    train_loader = DeviceLoader(
        cifar.train.images, cifar.train.labels, train.batch_size, device,
        params.augment, shuffle=True, seed=params.seed, channels_last=layout,
        rank=ranks.rank, world_size=ranks.world_size,
    )  # fmt: skip
    test_loader = DeviceLoader(
        cifar.test.images, cifar.test.labels, params.evaluate.batch_size, device,
        channels_last=layout,
    )  # fmt: skip
    model = runtime.prepare(ResNet9(len(cifar.classes), params.model.logit_scale))
    if ranks.is_main:
        print(f"Training on {ranks.world_size} x {device} in {runtime.precision}, "
              f"max_lr {max_lr:.4g}")  # fmt: skip
    key = fingerprint(
        params, ("seed", "model", "optimizer", "train", "augment"), Path(DATA),
        max_lr=max_lr, precision=runtime.precision, device=device.type,
        eval_batch=params.evaluate.batch_size,
    )  # fmt: skip
    rows = fit(model, train_loader, test_loader, runtime, train, params.optimizer, max_lr,
               CHECKPOINT, key, ranks)  # fmt: skip
    if ranks.is_main:
        save_model(MODEL, model, cifar.classes)
    return pd.DataFrame(rows)


def _write_outputs(history: pd.DataFrame, runtime: Runtime, max_lr: float) -> None:
    write_with(HISTORY, lambda tmp: history.drop(columns="seconds").to_csv(tmp, index=False))
    figures.training_curves(history, CURVES)
    write_json(
        METRICS,
        {
            "final_train_accuracy": history.train_accuracy.iloc[-1],
            "final_test_accuracy": history.test_accuracy.iloc[-1],
            "best_test_accuracy": history.test_accuracy.max(),
            "best_train_accuracy": history.train_accuracy.max(),
            "epochs": len(history),
            "max_lr": max_lr,
            "precision": runtime.precision,
            "device": runtime.device.type,
            "seconds_per_epoch": round(statistics.median(history.seconds), 2),
        },
    )
    CHECKPOINT.unlink()


if __name__ == "__main__":
    main()
