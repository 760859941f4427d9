"""One Markdown page per run: what a person reads instead of opening five files.

The page only arranges what the stages wrote (metrics JSON, pictures, the
model file's layers); it computes no result of its own, so it cannot disagree
with `dvc exp show`. Pictures are linked relative to the page, so it renders
on a git host.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from .params import PathsParams, flat_keys


def baseline(path: str | Path = "params.yaml") -> tuple[str, dict] | None:
    """(commit, its params.yaml) for the commit this run started from, if there is one.

    That is what `dvc params diff` compares the workspace with; the page names
    the commit, because once the run is committed its parent is the baseline.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        shown = subprocess.run(["git", "show", f"{commit}:./{path}"], capture_output=True,
                               text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit, yaml.safe_load(shown.stdout)


def params_changes(current: dict, before: dict) -> pd.DataFrame:
    """Keys whose value differs between two params files, values as JSON (`-`: no such key)."""
    now, old = flat_keys(current), flat_keys(before)
    missing = object()
    keys = sorted(k for k in set(now) | set(old)
                  if now.get(k, missing) != old.get(k, missing))  # fmt: skip
    return pd.DataFrame(
        {
            "key": keys,
            "baseline": [json.dumps(old[k]) if k in old else "-" for k in keys],
            "this run": [json.dumps(now[k]) if k in now else "-" for k in keys],
        }  # fmt: skip
    )


def readable(key: str, value: float) -> str:
    """A metric as a person reads it, by what its name says it is: accuracies and shares
    in % with 2 decimals, seconds with 1, learning rates with 3 significant digits,
    counts with thousands separators, anything else with 4 significant digits."""
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, int):
        return f"{value:,}"
    if "accuracy" in name or name == "agreement":
        return f"{100 * value:.2f}%"
    if name.startswith("seconds"):
        return f"{value:,.1f} s"
    if name == "lr" or name.endswith("_lr"):
        return f"{value:.3g}"
    return f"{value:.4g}"


def metrics_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """Every number of the metrics files (file, key, value), the value as people read it."""
    rows = [
        {"file": file, "key": key, "value": readable(key, value)}
        for file, values in metrics.items()
        for key, value in flat_keys(values).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    return pd.DataFrame(rows)


def _link(picture: str, page: Path, title: str) -> str:
    """A Markdown image whose path is relative to the page, so it renders on a git host."""
    return f"![{title}]({Path(os.path.relpath(picture, page.parent)).as_posix()})"


def _table(frame: pd.DataFrame) -> str:
    """A Markdown table whose cells are written as given."""
    return frame.to_markdown(index=False, disable_numparse=True) if len(frame) else "(none)"


def render(
    page: Path,
    *,
    paths: PathsParams,
    params: dict,
    max_lr_set: bool,
    baseline: tuple[str, dict] | None,
    metrics: dict[str, dict],
    layers: pd.DataFrame,
    model_config: dict,
    trained_parameters: int,
    report_seconds: float,
) -> str:
    """The page's Markdown.

    `params` is params.yaml as read, `baseline` the commit the run started from and
    its params, `metrics` each metrics file's path and contents.
    """
    download = metrics[paths.download_metrics]
    finder = metrics[paths.lr_find_metrics]
    train = metrics[paths.train_metrics]
    evaluation = metrics[paths.eval_metrics]
    divide_by = finder.get("divide_by", 1)
    lr_line = (
        f"`train.max_lr` is set: **{train['max_lr']:.3g}** (the range test's "
        f"`{finder['suggestion']}` rule{f' / {divide_by:g}' if divide_by != 1 else ''} "
        f"suggested {finder['suggested_lr']:.3g})"
        if max_lr_set
        else f"max_lr **{train['max_lr']:.3g}**, chosen by the `{finder['suggestion']}` rule "
        f"(`lr_find.suggestion`) from {finder['iterations_finite']} finite points"
        + (f", divided by {divide_by:g} (`lr_find.divide_by`)" if divide_by != 1 else "")
    )
    done = f"{train['epochs_done']} of {train['epochs_planned']} epochs"
    by_stage = {"download": download, "lr_find": finder, "train": train, "evaluate": evaluation,
                "export": metrics.get(paths.export_metrics, {})}  # fmt: skip
    recipe = (
        [f"Params that differ from commit `{baseline[0]}`'s `params.yaml`, the commit this run "
         "started from (what `dvc params diff` showed then):",
         _table(params_changes(params, baseline[1]))]
        if baseline
        else ["No commit to compare `params.yaml` with."]
    )  # fmt: skip
    times = pd.DataFrame(
        [
            {
                "stage": stage,
                "seconds": readable("seconds", values["seconds"]) if "seconds" in values else "-",
            }
            for stage, values in by_stage.items()
        ]
        + [{"stage": "report", "seconds": readable("seconds", report_seconds)}]
    )
    per_class = metrics[paths.per_class_metrics]
    classes = pd.DataFrame(
        {
            "class": list(per_class),
            "accuracy": [readable("accuracy", v) for v in per_class.values()],
        }
    )
    overall = {file: values for file, values in metrics.items() if file != paths.per_class_metrics}
    stem = "frozen 3x3 patch whitening, then a learnt 1x1 convolution"
    model_line = (
        f"ResNet-9, activation `{model_config['activation']}`"
        + (
            f" (alpha {model_config.get('celu_alpha', 0.075)})"
            if model_config["activation"] == "celu"
            else ""
        )
        + f", stem `{model_config['stem']}`"
        + (f" ({stem})" if model_config["stem"] == "whiten" else " (3x3 convolution)")
        + f", logit scale {model_config['logit_scale']}, "
        f"BN scales {'frozen at 1' if model_config['freeze_bn_scale'] else 'learnt'}, "
        f"ghost BN splits {model_config.get('ghost_bn_splits', 1)}, "
        f"BN bias LR factor {model_config.get('bn_bias_lr_factor', 1.0)}; "
        f"{int(layers.parameters.sum()):,} parameters, {trained_parameters:,} of them trained. "
        "Receptive field in input pixels "
        "along the longest path; jump is the input-pixel distance between outputs."
    )
    sections = [
        "# Run report",
        "Written by the `report` stage from this run's outputs "
        "(`dvc exp show` and `dvc plots show` read the same files).",
        "## Data",
        f"Source `{download['source']}`"
        + (f", md5 `{download['source_md5']}`" if download["source_md5"] else " (a folder)")
        + f"; prepared data `{paths.data}`, md5 `{download['data_md5']}`: "
        f"{download['train_images']:,} training and {download['test_images']:,} test images.",
        "## Recipe",
        *recipe,
        "## Learning rate",
        _link(paths.lr_find_plot, page, "LR range test"),
        lr_line + ".",
        "## Training",
        _link(paths.curves_plot, page, "Training curves"),
        f"{done}.",
        "## Results",
        f"Test accuracy {100 * evaluation['accuracy']:.2f}% "
        f"({evaluation['correct']:,} of {evaluation['total']:,}, "
        f"test-time augmentation `{evaluation['tta']}`).",
        _table(metrics_table(overall)),
        "### Per class",
        _table(classes),
        _link(paths.per_class_plot, page, "Accuracy per class"),
        _link(paths.confusion_plot, page, "Confusion matrix"),
        _link(paths.misclassified_plot, page, "Most confident mistakes"),
        "## Model",
        model_line,
        _table(layers),
        "## Time and machine",
        f"Training ran on {train['machine']} ({train['device']}, {train['precision']}); "
        "seconds per stage, without Python's start-up (train: its epochs, each with its "
        "test pass).",
        _table(times),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def read_metrics(files: list[str]) -> dict[str, dict]:
    """Each metrics file's contents, keyed by its path."""
    return {file: json.loads(Path(file).read_text()) for file in files}
