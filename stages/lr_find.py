"""Stage `lr_find`: LR range test on the training set; its suggestion becomes max_lr."""

import pandas as pd

from beluga import data, figures
from beluga.atomic import write_json, write_with
from beluga.cli import check_batch_size, stage
from beluga.loader import DeviceLoader
from beluga.lr_find import run_range_test, suggest, usable
from beluga.model import ResNet9
from beluga.params import load_params
from beluga.runtime import resolve, seed_everything

DATA = "data/cifar10.npz"
METRICS = "metrics/lr_find.json"
CURVE = "plots/lr_find.csv"
PICTURE = "plots/lr_find.png"


@stage
def main() -> None:
    params = load_params()
    train, finder = params.train, params.lr_find
    runtime = resolve(train.device, train.precision, train.channels_last)
    cifar = data.load(DATA)
    check_batch_size("train.batch_size", train.batch_size, len(cifar.train.labels))
    seed_everything(params.seed)
    loader = DeviceLoader(
        cifar.train.images, cifar.train.labels, train.batch_size, runtime.device,
        params.augment, shuffle=True, seed=params.seed, channels_last=runtime.channels_last,
    )  # fmt: skip
    model = runtime.prepare(ResNet9(len(cifar.classes), params.model.logit_scale))
    curve = run_range_test(model, loader, runtime, params.optimizer, train.label_smoothing, finder)
    suggestions = suggest(curve, finder)
    chosen = suggestions[finder.suggestion]
    finite = usable(curve)
    table = pd.DataFrame({"lr": finite.lrs, "loss": finite.losses})
    write_with(CURVE, lambda tmp: table.to_csv(tmp, index=False))
    figures.lr_find_figure(finite.lrs, finite.losses, chosen, finder.suggestion, PICTURE)
    write_json(
        METRICS,
        {
            "suggested_lr": chosen,
            **{f"{rule}_lr": lr for rule, lr in suggestions.items()},
            **finder.model_dump(),
            "optimizer": params.optimizer.name,
            "batch_size": train.batch_size,
            "iterations_run": len(curve.losses),
            "iterations_finite": len(finite.losses),
            "precision": runtime.precision,
        },
    )
    print(f"Suggested max_lr ({finder.suggestion} rule): {chosen:.3g}  {suggestions}")


if __name__ == "__main__":
    main()
