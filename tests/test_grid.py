"""scripts/grid.py refuses a grid with a run the pipeline would refuse before any run starts."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tool_env

from beluga.errors import ParamsError

GRID = runpy.run_path(str(ROOT / "scripts" / "grid.py"))
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "grids").glob("*.yaml")), ids=str)
def test_every_shipped_grid_is_one_the_pipeline_accepts(path: Path):
    GRID["check"](yaml.safe_load(path.read_text()), BASE)


@pytest.mark.parametrize(
    ("last", "message"),
    [
        (
            "train.epoch=10",
            "grid run last: train.epoch=10: train.epoch is not a key of params.yaml",
        ),
        ("trian.epochs=10", "grid run last: trian.epochs=10: trian.epochs is not a key of"),
        (
            "train.pct_start=1.5",
            "grid run last: params.yaml: train.pct_start: Input should be less",
        ),
    ],
)
def test_a_bad_run_anywhere_stops_the_grid_before_the_first_run(
    tmp_path: Path, last: str, message: str
):
    grid = {"runs": [{"name": "first", "overrides": ["train.epochs=1"]},
                     {"name": "last", "overrides": [last]}]}  # fmt: skip
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "grid.py"), "grid.yaml", "out"], cwd=tmp_path,
        env=tool_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().startswith(f"error: {message}"), result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_confirm_entry_must_name_runs_of_the_grid_and_give_them_values_the_pipeline_takes():
    grid = {"runs": [{"name": "a", "overrides": []}], "confirm": {"among": ["a", "b"]}}
    with pytest.raises(ParamsError, match="confirm.among: b: not a run of the grid"):
        GRID["check"](grid, BASE)
    grid["confirm"] = {"among": ["a"], "seeds": [1], "epochs": [0]}
    with pytest.raises(ParamsError, match=r"grid run confirm a train\.epochs=0: .*train\.epochs"):
        GRID["check"](grid, BASE)
