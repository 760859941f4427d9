"""Stage `report`: what the model got right and wrong, and one page about the whole run."""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from beluga import data, figures, report_page
from beluga.atomic import write_json, write_text
from beluga.cli import stage
from beluga.confusion import confusion_counts, per_class_accuracy, worst_mistakes
from beluga.params import load_params


@stage
def main() -> None:
    start = time.perf_counter()
    params = load_params()
    paths = params.paths
    cifar = data.load(paths.data)
    table = pd.read_csv(paths.predictions, index_col="image")
    classes = list(cifar.classes)

    per_class = per_class_accuracy(table, classes)
    for name, accuracy in per_class.items():
        print(f"Accuracy of {name:>10s} : {100 * accuracy:.0f} %")
    per_class = per_class.round(4)
    write_json(paths.per_class_metrics,
               {name: float(acc) for name, acc in per_class.items()})  # fmt: skip
    figures.per_class_bars(per_class.to_dict(), paths.per_class_plot)
    figures.confusion_heatmap(confusion_counts(table, classes).to_numpy(), classes,
                              paths.confusion_plot)  # fmt: skip

    wrong = worst_mistakes(table, params.evaluate.misclassified)
    figures.misclassified_grid(
        cifar.test.images[wrong.index.to_numpy()] if len(wrong) else np.zeros((0, 32, 32, 3)),
        wrong.actual.tolist(), wrong.predicted.tolist(), wrong.confidence.tolist(),
        paths.misclassified_plot,
    )  # fmt: skip

    layers = pd.read_csv(paths.layers, dtype={"output_shape": str})
    trained = int(layers.pop("trained_parameters").sum())

    page = Path(paths.report)
    metrics = report_page.read_metrics([
        paths.download_metrics, paths.lr_find_metrics, paths.train_metrics,
        paths.eval_metrics, paths.export_metrics, paths.per_class_metrics,
    ])  # fmt: skip
    text = report_page.render(
        page, paths=paths, params=yaml.safe_load(Path("params.yaml").read_text()),
        max_lr_set=params.train.max_lr is not None, baseline=report_page.baseline(),
        metrics=metrics, layers=layers, model_config=params.model.model_dump(),
        trained_parameters=trained,
        report_seconds=time.perf_counter() - start,
    )  # fmt: skip
    write_text(page, text)


if __name__ == "__main__":
    main()
