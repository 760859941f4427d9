"""Many runs through DVC's experiment queue; shared artifacts through a DVC remote."""

import json
from pathlib import Path

from conftest import commit_with_remote, sh


def test_queued_experiments_run_and_show_different_metrics(reproduced_copy: Path):
    """Two queued experiments that change the test-time views: each reruns evaluate and
    report on the committed model, and `dvc exp show` tells them apart."""
    project = reproduced_copy
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "baseline", cwd=project)
    for tta in ("none", "flip"):
        sh("dvc", "exp", "run", "--queue", "-n", f"tta-{tta}", "-S", f"evaluate.tta={tta}",
           cwd=project)  # fmt: skip
    sh("dvc", "queue", "start", "-j", "1", cwd=project)
    sh("dvc", "queue", "logs", "-f", "tta-none", cwd=project)
    sh("dvc", "queue", "logs", "-f", "tta-flip", cwd=project)
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=project).stdout)
    found = dict(_named_metrics(shown, {"tta-none", "tta-flip"}))
    assert set(found) == {"tta-none", "tta-flip"}, shown
    assert found["tta-none"]["metrics/eval.json"]["tta"] == "none"
    assert found["tta-flip"]["metrics/eval.json"]["tta"] == "flip"
    losses = [found[name]["metrics/eval.json"]["loss"] for name in ("tta-none", "tta-flip")]
    assert losses[0] != losses[1]


def _named_metrics(node, names):
    """(name, {metrics file: values}) for each experiment called one of `names`."""
    if isinstance(node, dict):
        data = node.get("data") if isinstance(node.get("data"), dict) else node
        name = node.get("name") or data.get("name")
        metrics = data.get("metrics")
        if name in names and metrics:
            yield name, {path: entry.get("data") for path, entry in metrics.items()}
        for value in node.values():
            yield from _named_metrics(value, names)
    elif isinstance(node, list):
        for value in node:
            yield from _named_metrics(value, names)


def test_push_to_a_folder_remote_then_pull_into_a_fresh_clone(
    reproduced_copy: Path, tmp_path: Path
):
    project = reproduced_copy
    remote = tmp_path / "remote"
    commit_with_remote(project, remote, "trained")
    assert any(remote.rglob("*"))

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    for path in ("src", "stages"):  # the pipeline's code is in git; nothing to do
        assert (clone / path).is_dir()
    assert not (clone / "models/model.pt").exists()
    sh("dvc", "pull", cwd=clone)
    assert (clone / "models/model.pt").read_bytes() == (project / "models/model.pt").read_bytes()
    status = sh("dvc", "status", cwd=clone)
    assert "Data and pipelines are up to date" in status.stdout
    repro = sh("dvc", "repro", cwd=clone)
    assert "Running stage" not in repro.stdout
    shown = sh("dvc", "metrics", "show", "--json", cwd=clone)
    assert "final_test_accuracy" in shown.stdout
