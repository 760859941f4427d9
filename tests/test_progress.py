"""Watching a run: per-epoch metrics in `dvc exp show`, and the one-page report."""

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import yaml
from conftest import DEFAULTS, sh, tool_env
from test_scale_out import _named_metrics

from beluga import progress, report_page

EPOCHS = 300  # of 50 images in batches of 8: minutes, stopped once an epoch is seen


def _train_metrics(project: Path, name: str) -> dict | None:
    shown = sh("dvc", "exp", "show", "--json", cwd=project, check=False)
    if shown.returncode:
        return None
    found = dict(_named_metrics(json.loads(shown.stdout), {name}))
    return (found.get(name) or {}).get("metrics/train.json")


def test_a_queued_experiment_shows_its_latest_epoch_while_it_trains(reproduced_copy: Path):
    project = reproduced_copy
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "baseline", cwd=project)
    sh("dvc", "exp", "run", "--queue", "-n", "live", "-S", f"train.epochs={EPOCHS}",
       "-S", "train.batch_size=8", cwd=project)  # fmt: skip
    # the worker runs on as a daemon holding its parent's stdout: do not capture it
    started = subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=project, env=tool_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert started.returncode == 0
    seen = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and seen is None:
            metrics = _train_metrics(project, "live")
            # until its train stage starts, the run's workspace holds the baseline's metrics
            if metrics and metrics.get("epochs_planned") == EPOCHS:
                assert metrics["epochs_done"] < EPOCHS, "the run ended before it was seen"
                if metrics["epochs_done"] > 0:
                    seen = metrics
            time.sleep(0.5)
    finally:
        sh("dvc", "queue", "stop", "--kill", cwd=project, check=False)
    assert seen, "dvc exp show never showed the running experiment between epochs"
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"} <= set(seen)
    assert "final_test_accuracy" not in seen and "best_test_accuracy" not in seen


def _page_rows(page: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in page.splitlines()
        if line.startswith("|") and not line.startswith("|:")
    ]


def _close(cell: str, value: float) -> bool:
    """Whether a page's cell ("91.33%", "683.3 s", "1,234", "1.05") shows `value`, to the
    digits it was written with."""
    text = cell.replace(",", "")
    if text.endswith("%"):
        return abs(float(text[:-1]) / 100 - value) <= 5.01e-5
    if text.endswith(" s"):
        return abs(float(text[:-2]) - value) <= 0.0501
    return abs(float(text) - value) <= 5e-3 * abs(value)


def test_metrics_are_written_as_people_read_them():
    readable = report_page.readable
    assert readable("accuracy", 0.97851265625) == "97.85%"
    assert readable("agreement", 1.0) == "100.00%"
    assert readable("best_test_accuracy", 0.9067) == "90.67%"
    assert readable("seconds", 4348.94) == "4,348.9 s"
    assert readable("seconds_per_epoch", 360.31) == "360.3 s"
    assert readable("suggested_lr", 1.0485232006616159) == "1.05"
    assert readable("lr", 4.1940928026118485e-06) == "4.19e-06"
    assert readable("train_images", 50000) == "50,000"
    assert readable("test_loss", 0.44685086607933044) == "0.4469"
    assert readable("max_logit_difference", 8.821487426757812e-06) == "8.821e-06"


def test_the_report_page_agrees_with_dvc_exp_show_and_links_its_pictures(reproduced: Path):
    project = reproduced
    page = (project / "plots/report.md").read_text()
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=project).stdout)
    workspace = next(e for e in shown if e["rev"] == "workspace")["data"]["metrics"]
    metrics = {file: entry["data"] for file, entry in workspace.items()}

    rows = [row for row in _page_rows(page) if row[0].startswith("metrics/")]
    assert {row[0] for row in rows} == set(metrics) - {"metrics/per_class.json"}
    for file, key, value in rows:
        assert _close(value, metrics[file][key]), (file, key, value)
    numbers = {(f, k) for f, values in metrics.items() for k, v in values.items()
               if isinstance(v, int | float) and f != "metrics/per_class.json"}  # fmt: skip
    assert {(file, key) for file, key, _ in rows} == numbers
    per_class = {row[0]: row[1] for row in _page_rows(page) if row[0] in
                 metrics["metrics/per_class.json"]}  # fmt: skip
    assert set(per_class) == set(metrics["metrics/per_class.json"])
    for name, cell in per_class.items():
        assert cell.endswith("%") and _close(cell, metrics["metrics/per_class.json"][name])

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    data_md5 = next(o["md5"] for o in lock["stages"]["download"]["outs"]
                    if o["path"] == "data/cifar10.npz")  # fmt: skip
    assert f"md5 `{data_md5}`" in page
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", page)
    assert len(pictures) == 5
    for picture in pictures:
        assert (project / "plots" / picture).is_file(), picture
    layers = {row[0]: row[1:] for row in _page_rows(page)}
    assert layers["layer1.0.1"] == ["MaxPool2d", "128x16x16", "0", "6", "2"]
    assert layers["head.2"] == ["Linear", "10", "5130", "88", "32"]
    recipe = page[page.index("## Recipe") : page.index("## Learning rate")]
    assert "`params.yaml`, the commit this run started from" in recipe
    assert recipe.rstrip().endswith("(none)")  # the workspace's params are the committed ones


def test_progress_files_say_how_far_a_run_is_and_only_a_finished_run_has_finals(
    tmp_path: Path,
):
    metrics, history = tmp_path / "train.json", tmp_path / "history.csv"
    about = {"max_lr": 0.1, "device": "cpu"}
    progress.write(metrics, history, [], 3, about)
    assert json.loads(metrics.read_text()) == {"epochs_done": 0, "epochs_planned": 3, **about}
    assert (
        history.read_text().strip() == "epoch,train_loss,train_accuracy,test_loss,test_accuracy,lr"
    )

    rows = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.1 * e, "test_loss": 2 / e,
             "test_accuracy": 0.2 * e, "lr": 0.01, "seconds": 5.0 + e} for e in (1, 2)]  # fmt: skip
    progress.write(metrics, history, rows, 3, about)
    live = json.loads(metrics.read_text())
    assert (live["epochs_done"], live["test_accuracy"], live["lr"]) == (2, 0.4, 0.01)
    assert not set(progress.final_metrics(rows)) & set(live)
    assert len(history.read_text().splitlines()) == 3 and "seconds" not in history.read_text()

    progress.write(metrics, history, rows, 2, about, finished=True)
    done = json.loads(metrics.read_text())
    assert done["best_test_accuracy"] == 0.4 and done["seconds"] == 13.0
    assert done["seconds_per_epoch"] == 6.5


def _render(**changes) -> str:
    paths = DEFAULTS.paths
    metrics = {
        paths.download_metrics: {"source": "cifar/", "source_md5": None, "data_md5": "abc",
                                 "train_images": 50, "test_images": 20, "seconds": 1.0},
        paths.lr_find_metrics: {"suggestion": "minimum", "suggested_lr": 0.05,
                                "iterations_finite": 20, "seconds": 2.0},
        paths.train_metrics: {"epochs_done": 1, "epochs_planned": 1, "max_lr": 0.2,
                              "device": "cpu", "machine": "A CPU", "precision": "fp32"},
        paths.eval_metrics: {"accuracy": 0.5, "correct": 10, "total": 20, "tta": "none"},
        paths.export_metrics: {"agreement": 1.0, "seconds": 3.0},
        paths.per_class_metrics: {"cat": 0.25},
    }  # fmt: skip
    layers = pd.DataFrame({"layer": ["fc"], "parameters": [10]})
    arguments = dict(paths=paths, params={"train": {"max_lr": 0.2}}, max_lr_set=True,
                     baseline=None, metrics=metrics, layers=layers,
                     model_config={"activation": "relu", "stem": "conv", "logit_scale": 1.0,
                                   "freeze_bn_scale": False},
                     trained_parameters=10, report_seconds=0.5)  # fmt: skip
    return report_page.render(Path("plots/report.md"), **{**arguments, **changes})


def test_report_page_for_a_folder_source_a_set_lr_and_no_commit():
    page = _render()
    assert "Source `cifar/` (a folder)" in page
    assert "`train.max_lr` is set: **0.2** (the range test's `minimum` rule suggested 0.05)" in page
    assert "No commit to compare `params.yaml` with." in page
    assert "![LR range test](lr_find.png)" in page

    page = _render(max_lr_set=False,
                   baseline=("abc1234", {"train": {"max_lr": None}, "seed": 1}))  # fmt: skip
    assert "max_lr **0.2**, chosen by the `minimum` rule" in page
    rows = {row[0]: row[1:] for row in _page_rows(page)}
    assert rows["train.max_lr"] == ["null", "0.2"] and rows["seed"] == ["1", "-"]


def test_report_page_times_every_stage_that_records_its_seconds():
    rows = {row[0]: row[1:] for row in _page_rows(_render())}
    assert rows["download"] == ["1.0 s"] and rows["lr_find"] == ["2.0 s"]
    assert rows["export"] == ["3.0 s"] and rows["report"] == ["0.5 s"]
    assert rows["train"] == ["-"]  # this train.json records no seconds
