"""Watching a run: per-epoch metrics in `dvc exp show`, and the one-page report."""

import json
import re
import subprocess
import time
from pathlib import Path

import yaml
from conftest import sh, tool_env
from test_scale_out import _named_metrics


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
    sh("dvc", "exp", "run", "--queue", "-n", "live", "-S", "train.epochs=30",
       "-S", "train.batch_size=8", cwd=project)  # fmt: skip
    worker = subprocess.Popen(["dvc", "queue", "start", "-j", "1"], cwd=project, env=tool_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    worker.wait()
    seen: list[dict] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        metrics = _train_metrics(project, "live")
        if metrics and metrics.get("epochs_planned") == 30 and 0 < metrics["epochs_done"] < 30:
            seen.append(metrics)
            break
        time.sleep(0.5)
    sh("dvc", "queue", "logs", "-f", "live", cwd=project)
    assert seen, "dvc exp show never showed the running experiment between epochs"
    live = seen[0]
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"} <= set(live)
    assert "final_test_accuracy" not in live and "best_test_accuracy" not in live
    done = _train_metrics(project, "live")
    assert done["epochs_done"] == 30 and "final_test_accuracy" in done


def _page_rows(page: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in page.splitlines()
        if line.startswith("|") and not line.startswith("|:")
    ]


def test_the_report_page_agrees_with_dvc_exp_show_and_links_its_pictures(reproduced: Path):
    project = reproduced
    page = (project / "plots/report.md").read_text()
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=project).stdout)
    workspace = next(e for e in shown if e["rev"] == "workspace")["data"]["metrics"]
    metrics = {file: entry["data"] for file, entry in workspace.items()}

    rows = [row for row in _page_rows(page) if row[0].startswith("metrics/")]
    assert {row[0] for row in rows} == set(metrics) - {"metrics/per_class.json"}
    for file, key, value in rows:
        assert json.loads(value) == metrics[file][key], (file, key)
    numbers = {(f, k) for f, values in metrics.items() for k, v in values.items()
               if isinstance(v, int | float) and f != "metrics/per_class.json"}  # fmt: skip
    assert {(file, key) for file, key, _ in rows} == numbers
    per_class = {row[0]: json.loads(row[1]) for row in _page_rows(page) if row[0] in
                 metrics["metrics/per_class.json"]}  # fmt: skip
    assert per_class == metrics["metrics/per_class.json"]

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
    assert "(none)" in page  # the workspace's params are the committed ones
