"""The train stage's metrics and history, rewritten after every epoch.

`dvc exp show` reads a running experiment's workspace, and `dvc plots show`
reads its files, so rewriting `metrics/train.json` and `plots/history.csv`
(atomically) after each epoch shows a run while it trains. A run that stops
early keeps `epochs_done` below `epochs_planned` and has none of the
final-only keys, so it can never pass for a finished one.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from .atomic import write_json, write_with

LIVE = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr")


def live_metrics(history: list[dict], planned: int, about: dict) -> dict:
    """The latest epoch's numbers, how far the run is, and `about` (max_lr, device...)."""
    latest = history[-1] if history else {}
    return {
        "epochs_done": len(history),
        "epochs_planned": planned,
        **{key: latest[key] for key in LIVE if key in latest},
        **about,
    }


def final_metrics(history: list[dict]) -> dict:
    """What only a finished run has: final and best accuracies, time per epoch."""
    table = pd.DataFrame(history)
    return {
        "final_train_accuracy": table.train_accuracy.iloc[-1],
        "final_test_accuracy": table.test_accuracy.iloc[-1],
        "best_train_accuracy": table.train_accuracy.max(),
        "best_test_accuracy": table.test_accuracy.max(),
        "seconds_per_epoch": round(statistics.median(table.seconds), 2),
        "seconds": round(float(table.seconds.sum()), 1),
    }


def write(
    metrics_path: str | Path,
    history_path: str | Path,
    history: list[dict],
    planned: int,
    about: dict,
    *,
    finished: bool = False,
) -> None:
    """Rewrite the history table (without timings) and the metrics file, each atomically."""
    columns = ["epoch", *LIVE]
    table = pd.DataFrame(history, columns=columns)
    write_with(history_path, lambda tmp: table.to_csv(tmp, index=False))
    metrics = live_metrics(history, planned, about)
    if finished:
        metrics |= final_metrics(history)
    write_json(metrics_path, metrics)
