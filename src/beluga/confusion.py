"""What the model got right and wrong, from one row per test image."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def predictions_table(
    actual: Sequence[int], predicted: Sequence[int], confidence: Sequence[float],
    classes: Sequence[str],
) -> pd.DataFrame:  # fmt: skip
    """One row per image with class names, as plots/confusion.csv and DVC's template want."""
    names = pd.Series(list(classes))
    return pd.DataFrame(
        {
            "actual": names[list(actual)].to_numpy(),
            "predicted": names[list(predicted)].to_numpy(),
            "confidence": pd.Series(confidence).round(4).to_numpy(),
        }
    )


def per_class_accuracy(table: pd.DataFrame, classes: Sequence[str]) -> pd.Series:
    """Fraction right for each true class, in `classes` order (NaN for a class with no image)."""
    right = table.actual == table.predicted
    return right.groupby(table.actual).mean().reindex(list(classes))


def confusion_counts(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Counts of (true class, predicted class), every class on both axes."""
    return pd.crosstab(table.actual, table.predicted).reindex(
        index=list(classes), columns=list(classes), fill_value=0
    )


def worst_mistakes(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """The `n` most confident wrong predictions, most confident first (ties in image order)."""
    wrong = table[table.actual != table.predicted]
    return wrong.sort_values("confidence", ascending=False, kind="stable").head(n)
