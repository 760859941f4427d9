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

from .params import PathsParams


def committed_params(path: str | Path = "params.yaml") -> dict | None:
    """params.yaml as of the last commit (what `dvc params diff` compares with), if any."""
    try:
        shown = subprocess.run(["git", "show", f"HEAD:./{path}"], capture_output=True,
                               text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return yaml.safe_load(shown.stdout)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def params_changes(current: dict, committed: dict | None) -> pd.DataFrame:
    """Keys whose value differs from the committed params.yaml."""
    now, before = _flat(current), _flat(committed or {})
    keys = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    return pd.DataFrame(
        {
            "key": keys,
            "committed": [before.get(k) for k in keys],
            "this run": [now.get(k) for k in keys],
        }  # fmt: skip
    )


def metrics_table(metrics: dict[str, dict]) -> pd.DataFrame:
    """Every number of the metrics files (file, key, value), written as in the JSON file."""
    rows = [
        {"file": file, "key": key, "value": json.dumps(value)}
        for file, values in metrics.items()
        for key, value in _flat(values).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    return pd.DataFrame(rows)


def _link(picture: str, page: Path, title: str) -> str:
    return f"![{title}]({Path(os.path.relpath(picture, page.parent)).as_posix()})"


def _table(frame: pd.DataFrame) -> str:
    """A Markdown table whose cells are written as given (numbers as in the JSON files)."""
    return frame.to_markdown(index=False, disable_numparse=True) if len(frame) else "(none)"


def render(
    page: Path,
    *,
    paths: PathsParams,
    params: dict,
    committed: dict | None,
    metrics: dict[str, dict],
    layers: pd.DataFrame,
    model_config: dict,
    trained_parameters: int,
    report_seconds: float,
) -> str:
    """The page's Markdown. `metrics` maps each metrics file's path to its contents."""
    download = metrics[paths.download_metrics]
    finder = metrics[paths.lr_find_metrics]
    train = metrics[paths.train_metrics]
    evaluation = metrics[paths.eval_metrics]
    changes = params_changes(params, committed)
    chosen = params["train"]["max_lr"]
    lr_line = (
        f"`train.max_lr` is set: **{chosen:g}** (the range test's `{finder['suggestion']}` "
        f"rule suggested {finder['suggested_lr']:.4g})"
        if chosen is not None
        else f"max_lr **{train['max_lr']:.4g}**, chosen by the `{finder['suggestion']}` rule "
        f"(`lr_find.suggestion`) from {finder['iterations_finite']} finite points"
    )
    done = f"{train['epochs_done']} of {train['epochs_planned']} epochs"
    by_stage = {"download": download, "lr_find": finder, "train": train, "evaluate": evaluation}
    times = pd.DataFrame(
        [{"stage": stage, "seconds": values.get("seconds")} for stage, values in by_stage.items()]
        + [{"stage": "report", "seconds": round(report_seconds, 1)}]
    )
    per_class = metrics[paths.per_class_metrics]
    classes = pd.DataFrame(
        {"class": list(per_class), "accuracy": [json.dumps(v) for v in per_class.values()]}
    )
    overall = {file: values for file, values in metrics.items() if file != paths.per_class_metrics}
    stem = "frozen 3x3 patch whitening, then a learnt 1x1 convolution"
    model_line = (
        f"ResNet-9, activation `{model_config['activation']}`, stem "
        f"`{model_config['stem']}`"
        + (f" ({stem})" if model_config["stem"] == "whiten" else " (3x3 convolution)")
        + f", logit scale {model_config['logit_scale']}, "
        f"BN scales {'frozen at 1' if model_config['freeze_bn_scale'] else 'learnt'}; "
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
        "Params that differ from the committed `params.yaml` (as `dvc params diff` shows):"
        if committed is not None
        else "No committed `params.yaml` to compare with (not a git repository).",
        _table(changes) if committed is not None else "",
        "## Learning rate",
        _link(paths.lr_find_plot, page, "LR range test"),
        lr_line + ".",
        "## Training",
        _link(paths.curves_plot, page, "Training curves"),
        f"{done}; {train['device']} ({train['machine']}), {train['precision']}.",
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
        "seconds per stage, without Python's start-up (train: the epochs alone).",
        _table(times),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def read_metrics(files: list[str]) -> dict[str, dict]:
    """Each metrics file's contents, keyed by its path."""
    return {file: json.loads(Path(file).read_text()) for file in files}
