"""Per-class accuracy, confusion counts and worst mistakes, on a table checked by hand."""

import math

import pandas as pd

from beluga.confusion import confusion_counts, per_class_accuracy, predictions_table, worst_mistakes

CLASSES = ["cat", "dog", "frog"]


def _table() -> pd.DataFrame:
    return predictions_table(
        actual=[0, 0, 1, 1, 1, 0], predicted=[0, 1, 1, 0, 1, 0],
        confidence=[0.9, 0.8, 0.7, 0.95, 0.6, 0.5], classes=CLASSES,
    )  # fmt: skip


def test_predictions_table_names_classes_and_rounds_confidence():
    table = predictions_table([2], [0], [0.123456], CLASSES)
    assert table.to_dict("records") == [
        {"actual": "frog", "predicted": "cat", "confidence": 0.1235}
    ]


def test_per_class_accuracy_in_class_order_with_nan_for_an_absent_class():
    accuracy = per_class_accuracy(_table(), CLASSES)
    assert list(accuracy.index) == CLASSES
    assert accuracy["cat"] == 2 / 3 and accuracy["dog"] == 2 / 3 and math.isnan(accuracy["frog"])


def test_confusion_counts_have_every_class_on_both_axes():
    counts = confusion_counts(_table(), CLASSES)
    assert counts.to_numpy().tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert list(counts.index) == list(counts.columns) == CLASSES


def test_worst_mistakes_most_confident_first():
    wrong = worst_mistakes(_table(), 5)
    assert wrong.index.tolist() == [3, 1]
    assert worst_mistakes(_table(), 1).index.tolist() == [3]
