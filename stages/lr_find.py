"""Stage `lr_find`: LR range test on the training set; its suggestion becomes max_lr."""

import time

import pandas as pd

from beluga import data, figures
from beluga.atomic import write_json, write_with
from beluga.cli import stage
from beluga.loader import DeviceLoader
from beluga.lr_find import run_range_test, searched, suggest, usable
from beluga.model import build_model
from beluga.params import check_batch_size, load_params
from beluga.runtime import resolve, seed_everything


@stage
def main() -> None:
    start = time.perf_counter()
    params = load_params()
    paths, finder = params.paths, params.lr_find
    runtime = resolve(params.runtime)
    cifar = data.load(paths.data)
    check_batch_size("train.batch_size", params.train.batch_size, len(cifar.train.labels))
    seed_everything(params.seed)
    loader = DeviceLoader(cifar.train.images, cifar.train.labels, params.train.batch_size,
                          runtime, augment=params.augment, shuffle=True,
                          seed=params.seed)  # fmt: skip
    model = runtime.prepare(build_model(params.model, len(cifar.classes), cifar.train.images))
    curve = run_range_test(model, loader, runtime, optimizer=params.optimizer,
                           label_smoothing=params.train.label_smoothing,
                           finder=finder)  # fmt: skip
    suggestions = suggest(curve, finder)
    chosen = suggestions[finder.suggestion] / finder.divide_by
    finite = usable(curve)
    table = pd.DataFrame({"lr": finite.lrs, "loss": finite.losses})
    write_with(paths.lr_find_curve, lambda tmp: table.to_csv(tmp, index=False))
    label = finder.suggestion + (f" / {finder.divide_by:g}" if finder.divide_by != 1 else "")
    figures.lr_find_figure(finite.lrs, finite.losses, suggestions, chosen, label,
                           searched(curve, finder), paths.lr_find_plot)  # fmt: skip
    write_json(
        paths.lr_find_metrics,
        {
            "suggested_lr": chosen,
            **{f"{rule}_lr": lr for rule, lr in suggestions.items()},
            **finder.model_dump(),
            "optimizer": params.optimizer.name,
            "momentum": params.optimizer.momentum,
            "batch_size": params.train.batch_size,
            "iterations_run": len(curve.losses),
            "iterations_finite": len(finite.losses),
            "precision": runtime.precision,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"Suggested max_lr ({finder.suggestion} rule / {finder.divide_by:g}): {chosen:.3g}  "
          f"{suggestions}")  # fmt: skip


if __name__ == "__main__":
    main()
