"""Matplotlib pictures of a run, each written atomically as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .atomic import write_with  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def lr_find_figure(
    lrs: np.ndarray,
    losses: np.ndarray,
    picks: dict[str, float],
    chosen: float,
    label: str,
    span: tuple[float, float],
    path: str | Path,
) -> None:
    """Loss against LR on a log axis: every rule's pick marked, the span the chosen rule
    searched shaded, and the y-axis cut at the starting loss so the bottom can be read.

    The divergence at the end of a range test rises to many times the starting loss;
    drawn whole, it flattens the useful part of the curve into one line.
    """
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(lrs, losses, color="tab:blue", label="training loss (smoothed)")
    ax.axvspan(*span, color="tab:orange", alpha=0.12,
               label=f"searched by the rule: {span[0]:.3g} to {span[1]:.3g}")  # fmt: skip
    for (rule, lr), colour in zip(
        picks.items(), ("tab:purple", "tab:green", "tab:gray", "tab:olive"), strict=True
    ):
        ax.axvline(lr, color=colour, linestyle=":", linewidth=1.5, label=f"{rule}: {lr:.3g}")
    ax.axvline(chosen, color="tab:red", linestyle="--", label=f"max_lr = {label}: {chosen:.3g}")
    lowest = int(np.argmin(losses))
    start, bottom = float(losses[: lowest + 1].max()), float(losses[lowest])
    margin = 0.08 * max(start - bottom, 1e-3)
    ax.set_ylim(bottom - margin, start + margin)
    if losses.max() > start + margin:
        top = int(np.argmax(losses))
        ax.annotate(f"off the top: loss {losses[top]:.3g} at LR {lrs[top]:.3g}",
                    xy=(1, 1), xycoords="axes fraction", xytext=(-6, -6),
                    textcoords="offset points", ha="right", va="top",
                    fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title(f"LR range test: max_lr = {chosen:.3g} ({label})")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)


def training_curves(history: pd.DataFrame, path: str | Path) -> None:
    """Loss and accuracy, train against test, per epoch; and the learning rate."""
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(16, 4.5))
    for split, style in (("train", "-o"), ("test", "-s")):
        loss_ax.plot(history.epoch, history[f"{split}_loss"], style, label=split, markersize=3)
        acc_ax.plot(
            history.epoch, 100 * history[f"{split}_accuracy"], style, label=split, markersize=3
        )
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    lr_ax.plot(history.epoch, history.lr, "-o", color="tab:green", markersize=3)
    lr_ax.set(title="Learning rate (end of epoch)", xlabel="epoch", ylabel="lr")
    for ax in (loss_ax, acc_ax):
        ax.legend()
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(True, alpha=0.3)
    _save(fig, path)


def misclassified_grid(
    images: np.ndarray,
    true: Sequence[str],
    predicted: Sequence[str],
    confidence: Sequence[float],
    path: str | Path,
) -> None:
    """Mistaken test images, most confident first, with true and predicted class."""
    n = len(images)
    cols = min(5, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p, c in zip(axes.flat, images, true, predicted, confidence, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"true: {t}\npred: {p} ({100 * c:.0f}%)", fontsize=9)
    fig.suptitle("Misclassified test images, most confident mistakes first")
    _save(fig, path)


def per_class_bars(accuracy: dict[str, float], path: str | Path) -> None:
    """One bar per class, its accuracy printed on it."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(accuracy)
    values = [100 * accuracy[n] for n in names]
    bars = ax.bar(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=2, fontsize=9)
    ax.set(title="Test accuracy per class", xlabel="class", ylabel="accuracy (%)", ylim=(0, 105))
    ax.tick_params(axis="x", rotation=30)
    _save(fig, path)


def confusion_heatmap(matrix: np.ndarray, classes: Sequence[str], path: str | Path) -> None:
    """Counts of (true, predicted) pairs, with class names on both axes."""
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    threshold = matrix.max() / 2
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j, i, str(count), ha="center", va="center", fontsize=8,
            color="white" if count > threshold else "black",
        )  # fmt: skip
    ax.set(title="Confusion matrix (test set)", xlabel="predicted class", ylabel="true class")
    _save(fig, path)
