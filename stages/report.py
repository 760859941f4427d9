"""Stage `report`: what the model got right and wrong, per class and per image."""

import numpy as np
import pandas as pd
import torchinfo

from beluga import data, figures
from beluga.atomic import write_json, write_text
from beluga.cli import stage
from beluga.model import ResNet9
from beluga.params import load_params

DATA = "data/cifar10.npz"
PREDICTIONS = "plots/confusion.csv"
PER_CLASS = "metrics/per_class.json"
SUMMARY = "plots/model_summary.txt"


@stage
def main() -> None:
    params = load_params()
    cifar = data.load(DATA)
    table = pd.read_csv(PREDICTIONS, index_col="image")
    classes = list(cifar.classes)
    table["right"] = table.actual == table.predicted
    per_class = table.groupby("actual").right.mean().reindex(classes)
    for name, accuracy in per_class.items():
        print(f"Accuracy of {name:>10s} : {100 * accuracy:.0f} %")
    write_json(PER_CLASS, {name: round(float(acc), 4) for name, acc in per_class.items()})
    figures.per_class_bars(per_class.to_dict(), "plots/per_class_accuracy.png")

    matrix = pd.crosstab(table.actual, table.predicted).reindex(
        index=classes, columns=classes, fill_value=0
    )
    figures.confusion_heatmap(matrix.to_numpy(), classes, "plots/confusion_matrix.png")

    wrong = table[~table.right].sort_values("confidence", ascending=False, kind="stable")
    wrong = wrong.head(params.evaluate.misclassified)
    figures.misclassified_grid(
        cifar.test.images[wrong.index.to_numpy()] if len(wrong) else np.zeros((0, 32, 32, 3)),
        wrong.actual.tolist(), wrong.predicted.tolist(), wrong.confidence.tolist(),
        "plots/misclassified.png",
    )  # fmt: skip

    model = ResNet9(len(classes), params.model.logit_scale)
    summary = torchinfo.summary(
        model, input_size=(1, 3, 32, 32), depth=4, verbose=0,
        col_names=("output_size", "num_params"),
    )  # fmt: skip
    write_text(SUMMARY, f"{summary}\n")


if __name__ == "__main__":
    main()
