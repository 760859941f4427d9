"""A sweep that two workers share: an Optuna study in one journal file, each trial a DVC
experiment pushed to one git remote, all of them seen from a third clone."""

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, commit_with_remote, sh, tool_env
from test_scale_out import _named_metrics

from beluga.errors import ParamsError
from beluga.sweep import load_space, storage

TRIALS = 2  # one round: each worker starts one as the study opens


def _space(tmp_path: Path, **params) -> Path:
    path = tmp_path / "space.yaml"
    searched = params or {"train.max_lr": {"low": 0.01, "high": 0.5, "log": True}}
    space = {"study": "lr", "storage": str(tmp_path / "study.journal"),
             "metric": "metrics/eval.json:accuracy", "params": searched}  # fmt: skip
    path.write_text(yaml.safe_dump(space))
    return path


def test_two_workers_share_one_study_and_every_trial_is_an_experiment_on_the_remote(
    reproduced_copy: Path, tmp_path: Path
):
    project = reproduced_copy
    commit_with_remote(project, tmp_path / "dvc-store", "baseline")
    origin = tmp_path / "origin.git"
    sh("git", "clone", "-q", "--bare", str(project), str(origin), cwd=tmp_path)
    workers = []
    for name in ("worker1", "worker2"):
        sh("git", "clone", "-q", str(origin), name, cwd=tmp_path)
        sh("dvc", "pull", cwd=tmp_path / name)
    space = _space(tmp_path)
    for name in ("worker1", "worker2"):
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "beluga.sweep", str(space), "--trials", str(TRIALS),
             "--push", "origin"], cwd=tmp_path / name, env=tool_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    for worker in workers:
        out, err = worker.communicate(timeout=900)
        assert worker.returncode == 0, err[-3000:]
        assert "Best of" in out

    study = optuna.load_study(study_name="lr", storage=storage(str(tmp_path / "study.journal")))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert TRIALS <= len(done) <= TRIALS + 1  # a worker may start one as the other ends
    assert {t.user_attrs["worker"].split(":", 1)[1] for t in done} == {
        str(tmp_path / "worker1"), str(tmp_path / "worker2")}  # fmt: skip
    assert len({t.params["train.max_lr"] for t in done}) == len(done)

    sh("git", "clone", "-q", str(origin), "reader", cwd=tmp_path)
    sh("dvc", "exp", "pull", "-A", "origin", cwd=tmp_path / "reader")
    shown = json.loads(sh("dvc", "exp", "show", "--json", "-A", cwd=tmp_path / "reader").stdout)
    names = {t.user_attrs["experiment"] for t in done}
    found = dict(_named_metrics(shown, names))
    assert set(found) == names
    for trial in done:
        metrics = found[trial.user_attrs["experiment"]]
        assert metrics["metrics/eval.json"]["accuracy"] == trial.value
        assert metrics["metrics/train.json"]["max_lr"] == pytest.approx(
            trial.params["train.max_lr"]
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"train.max_rl": {"low": 0.1, "high": 1.0}}, "params.train.max_rl: not a key of"),
        ({"train.max_lr": {"low": -1.0, "high": 1.0}}, "params.train.max_lr: -1.0 is refused"),
        ({"train.epochs": {"low": 0, "high": 4}}, "params.train.epochs: 0 is refused"),
        ({"augment.flip": {"choices": ["random", "sideways"]}}, "'sideways' is refused"),
    ],
)
def test_a_space_the_pipeline_would_refuse_is_one_line_before_any_trial(
    reproduced: Path, tmp_path: Path, params: dict, message: str, monkeypatch
):
    monkeypatch.chdir(reproduced)
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_space(_space(tmp_path, **params))


def test_the_shipped_space_is_one_the_pipeline_accepts():
    space, known = load_space(ROOT / "docs/sweeps/lr-wd.yaml", ROOT / "params.yaml")
    assert known["train.max_lr"] is None and known["train.epochs"] == 12
    assert set(space.params) == {"train.max_lr", "optimizer.weight_decay"}
    assert not Path(space.storage).resolve().is_relative_to(ROOT.resolve())  # outside a clone
