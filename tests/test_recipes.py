"""Recipes are Hydra config groups: `dvc exp run -S recipe=NAME` composes conf/ into params.yaml."""

from pathlib import Path

import pytest
from conftest import ROOT, compose_params

from beluga.params import load_params

RECIPES = sorted(path.stem for path in (ROOT / "conf/recipe").glob("*.yaml"))


def _composed(tmp_path: Path, recipe: str) -> Path:
    (tmp_path / "conf").symlink_to(ROOT / "conf")
    compose_params(tmp_path, f"recipe={recipe}")
    return tmp_path / "params.yaml"


def test_params_yaml_is_conf_composed_with_the_default_recipe(tmp_path: Path):
    # what a plain `dvc exp run` writes, so it changes nothing in a clean checkout
    assert _composed(tmp_path, "default").read_text() == (ROOT / "params.yaml").read_text()


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_into_params_the_stages_accept(tmp_path: Path, recipe: str):
    assert RECIPES == ["default", "long", "quick", "reference"]
    load_params(_composed(tmp_path, recipe))  # an unknown or misspelt key fails here
