"""End to end with the real tools: dvc repro, dvc exp run, git, on a tiny official archive."""

import json
import re
import sys
from pathlib import Path

import pandas as pd
from conftest import set_params, sh, timing_terms

OUTPUTS = [
    "data/cifar10.npz", "models/model.pt", "metrics/download.json",
    "metrics/lr_find.json", "metrics/train.json", "metrics/eval.json", "metrics/per_class.json",
    "plots/lr_find.csv", "plots/history.csv", "plots/confusion.csv",
    "plots/lr_find.png", "plots/accuracy_curve.png", "plots/misclassified.png",
    "plots/per_class_accuracy.png", "plots/confusion_matrix.png", "plots/model_summary.txt",
    "plots/layers.csv",
    "plots/report.md",
]  # fmt: skip


def _json(project: Path, name: str) -> dict:
    return json.loads((project / name).read_text())


def test_every_stage_says_where_its_wall_time_went(reproduced: Path):
    stdout = (reproduced.parent / "repro.stdout").read_text()
    chunks = {chunk.split("'")[0]: chunk for chunk in stdout.split("Running stage '")[1:]}
    assert sorted(chunks) == ["download", "evaluate", "export", "lr_find", "report", "train"]
    for stage, chunk in chunks.items():
        line = re.search(r"^timing: .*$", chunk, re.MULTILINE)
        assert line, f"{stage}: no timing line in {chunk!r}"
        total, terms = timing_terms(line.group(0))
        assert abs(sum(terms.values()) - total) <= 0.05 * (len(terms) + 1), line.group(0)
        assert list(terms)[0] == "start-up" and list(terms)[-1] == "work", line.group(0)
        assert terms["start-up"] > 0.05, line.group(0)  # the interpreter and the imports
        assert ("data" in terms) == (stage != "download"), line.group(0)
        assert ("test passes" in terms) == (stage in ("train", "evaluate", "export"))
        assert ("onnx export" in terms) == ("onnx runtime" in terms) == (stage == "export")


def test_repro_runs_every_stage_then_nothing(reproduced: Path):
    project = reproduced
    stdout = (project.parent / "repro.stdout").read_text()
    for stage in ("download", "lr_find", "train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in stdout
    for name in OUTPUTS:
        assert (project / name).stat().st_size > 0, name
    for name in OUTPUTS:
        if name.endswith(".png"):
            assert (project / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    lr = _json(project, "metrics/lr_find.json")
    assert lr["suggested_lr"] == lr["plateau_lr"] / lr["divide_by"]
    assert 1e-4 <= lr["suggested_lr"] <= 10
    assert lr["num_iter"] == 20 and lr["suggestion"] == "plateau"
    train = _json(project, "metrics/train.json")
    assert train["epochs_done"] == train["epochs_planned"] == 1
    assert (
        train["final_test_accuracy"] == train["test_accuracy"] and 0 <= train["test_accuracy"] <= 1
    )
    assert train["max_lr"] == lr["suggested_lr"]
    evaluation = _json(project, "metrics/eval.json")
    assert evaluation["total"] == 20 and evaluation["correct"] == round(20 * evaluation["accuracy"])
    per_class = _json(project, "metrics/per_class.json")
    assert list(per_class) == ["airplane", "automobile", "bird", "cat", "deer",
                               "dog", "frog", "horse", "ship", "truck"]  # fmt: skip
    confusion = pd.read_csv(project / "plots/confusion.csv")
    assert len(confusion) == 20 and set(confusion.columns) >= {"actual", "predicted"}
    assert (confusion.actual == confusion.predicted).mean() == evaluation["accuracy"]
    history = pd.read_csv(project / "plots/history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "train_accuracy", "test_loss",
                                     "test_accuracy", "lr"]  # fmt: skip
    # the default's whitening stem: 6,573,130 weights as in the reference table, plus the 729
    # frozen whitening filters; the 2,240 batch-norm scales are frozen at 1 too
    summary = (project / "plots/model_summary.txt").read_text()
    assert "Total params: 6,573,859" in summary and "Trainable params: 6,570,890" in summary
    assert not (project / "checkpoints/train.pt").exists()

    again = sh("dvc", "repro", cwd=project)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in again.stdout

    shown = sh("dvc", "metrics", "show", "--json", cwd=project)
    assert "final_test_accuracy" in shown.stdout and "suggested_lr" in shown.stdout


def test_experiment_and_metrics_diff_between_commits(reproduced_copy: Path):
    project = reproduced_copy
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "one epoch", cwd=project)
    before = _json(project, "metrics/train.json")
    loss_before = _json(project, "metrics/eval.json")["loss"]

    # a recipe from conf/recipe/, and a value on top of it
    sh("dvc", "exp", "run", "-S", "recipe=reference", "-S", "train.epochs=2", cwd=project)
    after = _json(project, "metrics/train.json")
    finder = _json(project, "metrics/lr_find.json")
    assert finder["optimizer"] == "adam" and finder["suggestion"] == "steepest"
    assert _json(project, "metrics/eval.json")["tta"] == "none"
    assert after["epochs_done"] == 2 and before["epochs_done"] == 1
    assert _json(project, "metrics/eval.json")["loss"] != loss_before
    shown = sh("dvc", "exp", "show", "--json", cwd=project)
    assert '"train.epochs": 2' in shown.stdout or '"epochs": 2' in shown.stdout

    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "two epochs", cwd=project)
    diff = sh("dvc", "metrics", "diff", "HEAD~1", "--json", cwd=project)
    changes = json.loads(diff.stdout)
    assert changes["metrics/train.json"]["epochs_done"] == {"old": 1, "new": 2, "diff": 1}
    params = sh("dvc", "params", "diff", "HEAD~1", "--json", cwd=project)
    changed = json.loads(params.stdout)["params.yaml"]
    assert changed["train.epochs"]["new"] == 2 and changed["optimizer.name"]["new"] == "adam"
    page = (project / "plots/report.md").read_text()
    assert re.search(r"\|\s*train\.epochs\s*\|\s*1\s*\|\s*2\s*\|", page), page[:2000]

    page = sh("dvc", "plots", "show", "--json", cwd=project)
    assert "LR range test" in page.stdout
    sh("dvc", "plots", "show", "-o", "page", cwd=project)
    html = (project / "page" / "index.html").read_text()
    assert "Confusion matrix" in html and '"scale": {"type": "log"}' in html.replace("\n", "")


def test_changed_params_rerun_only_downstream_stages(reproduced_copy: Path):
    project = reproduced_copy
    set_params(project, evaluate={"tta": "none"})
    result = sh("dvc", "repro", cwd=project)
    ran = [s for s in ("download", "lr_find", "train", "evaluate", "report")
           if f"Running stage '{s}'" in result.stdout]  # fmt: skip
    assert ran == ["evaluate", "report"] or ran == ["evaluate"]
    assert _json(project, "metrics/eval.json")["tta"] == "none"


def test_report_stage_runs_without_torch(reproduced_copy: Path):
    """The export stage writes the layer table, so the report's process never loads PyTorch."""
    project = reproduced_copy
    layers = pd.read_csv(project / "plots/layers.csv")
    assert (layers.parameters.sum(), layers.trained_parameters.sum()) == (6_573_859, 6_570_890)
    (project / "plots/report.md").unlink()
    result = sh(sys.executable, "-X", "importtime", "stages/report.py", cwd=project)
    assert not [line for line in result.stderr.splitlines() if line.endswith(" torch")]
    page = (project / "plots/report.md").read_text()
    assert "6,573,859 parameters, 6,570,890 of them trained" in page
    assert "| prep.1 " in page and "64x32x32" in page
