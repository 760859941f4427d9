"""A search over params that many workers share: an Optuna study whose trials are DVC experiments.

    python -m beluga.sweep SPACE.yaml [--trials N] [--push GIT_REMOTE]

SPACE.yaml names the study, where it is stored, the metric and the params to search:

    study: lr-wd
    storage: sweeps/lr-wd.journal     # a journal file every worker can reach, or a DB URL
    metric: metrics/eval.json:accuracy
    direction: maximize
    params:
      train.max_lr: {low: 0.25, high: 4.0, log: true}
      optimizer.weight_decay: {low: 1.0e-4, high: 1.0e-3, log: true}
      train.label_smoothing: {choices: [0.0, 0.1, 0.2]}

Each trial is one `dvc exp run -n <study>-<number> -S key=value ...` in the clone the
worker runs in, so it is an experiment like any other (`dvc exp show`, `dvc exp apply`);
with --push it goes to GIT_REMOTE (`dvc exp push`, its outputs to the DVC remote), where
`dvc exp pull` brings every worker's. Start as many workers as you like, each in its own
clone with the data, on one machine or many: they share the study through its storage,
so the sampler sees every finished trial, and together they stop at --trials (a worker
that starts a trial as the last one starts may add one more). A trial whose run fails is
recorded as failed and the worker goes on.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .cli import command
from .errors import ParamsError
from .params import flat_keys, load_params, parse_params


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    low: float
    high: float
    log: bool = False


class Choices(_Strict):
    choices: list = Field(min_length=1)


class Space(_Strict):
    study: str = Field(pattern=r"^[A-Za-z0-9_-]+$")  # it names the experiments, too
    storage: str = Field(min_length=1)
    metric: str = Field(pattern=r"^[^:]+\.json:[^:]+$")
    direction: Literal["maximize", "minimize"] = "maximize"
    params: dict[str, Range | Choices] = Field(min_length=1)


class TrialFailed(Exception):
    """A trial's `dvc exp run` failed: the trial is recorded as failed, the worker goes on."""


def _with(tree: dict, key: str, value: object) -> dict:
    """A copy of the params tree with one dotted key set."""
    head, _, rest = key.partition(".")
    return {**tree, head: _with(tree[head], rest, value) if rest else value}


def load_space(path: Path, params_path: Path = Path("params.yaml")) -> tuple[Space, dict]:
    """The search space, checked against params.yaml: every key exists and both ends of
    every range (every choice) are values the pipeline accepts; else one line. Also
    params.yaml's values by dotted key, which tell an integer key from a float one."""
    try:
        space = Space.model_validate(yaml.safe_load(path.read_text()) or {})
    except OSError as error:
        raise ParamsError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ParamsError(f"{path}: {where}: {first['msg']}") from None
    load_params(params_path)
    raw = yaml.safe_load(params_path.read_text())
    known = flat_keys(raw)
    for key, dimension in space.params.items():
        if key not in known:
            raise ParamsError(f"{path}: params.{key}: not a key of {params_path}")
        ends = dimension.choices if isinstance(dimension, Choices) else _ends(key, dimension, known)
        for value in ends:
            try:
                parse_params(_with(raw, key, value), params_path)
            except ParamsError as error:
                raise ParamsError(f"{path}: params.{key}: {value!r} is refused ({error})") from None
    return space, known


def _is_int(key: str, known: dict) -> bool:
    return isinstance(known[key], int) and not isinstance(known[key], bool)


def _ends(key: str, dimension: Range, known: dict) -> list:
    cast = int if _is_int(key, known) else float
    return [cast(dimension.low), cast(dimension.high)]


def _suggest(trial: optuna.Trial, key: str, dimension: Range | Choices, known: dict) -> object:
    if isinstance(dimension, Choices):
        return trial.suggest_categorical(key, dimension.choices)
    if _is_int(key, known):
        return trial.suggest_int(key, int(dimension.low), int(dimension.high), log=dimension.log)
    return trial.suggest_float(key, dimension.low, dimension.high, log=dimension.log)


def _run(*args: str) -> None:
    result = subprocess.run(args, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(result.stderr)
    if result.returncode:
        last = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        raise TrialFailed(f"{' '.join(args[:3])} failed: {last[0]}")


def run_trial(trial: optuna.Trial, space: Space, known: dict, push: str | None) -> float:
    """One experiment at the trial's params; its metric is the trial's value."""
    values = {key: _suggest(trial, key, dim, known) for key, dim in space.params.items()}
    name = f"{space.study}-{trial.number}"
    trial.set_user_attr("experiment", name)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{Path.cwd()}")
    overrides = [
        arg for key, value in values.items() for arg in ("-S", f"{key}={json.dumps(value)}")
    ]
    print(f"Trial {trial.number}: dvc exp run -n {name} {' '.join(overrides)}", flush=True)
    _run("dvc", "exp", "run", "-n", name, *overrides)
    file, key = space.metric.split(":")
    value = float(json.loads(Path(file).read_text())[key])
    if push:
        _run("dvc", "exp", "push", push, name)
    print(f"Trial {trial.number}: {space.metric} = {value:.4g} (experiment {name})", flush=True)
    return value


def storage(url: str) -> optuna.storages.BaseStorage | str:
    """A database URL as it is; a path, as a journal file (file locks; no server needed)."""
    if "://" in url:
        return url
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(url)
    return optuna.storages.journal.JournalStorage(backend)


@command
def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m beluga.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("space", type=Path, help="the search space (YAML)")
    parser.add_argument("--trials", type=int, default=20, help="trials in the whole study")
    parser.add_argument("--push", metavar="GIT_REMOTE", help="dvc exp push each trial here")
    args = parser.parse_args()
    space, known = load_space(args.space)
    journal = Path(space.storage).resolve()
    if "://" not in space.storage and journal.is_relative_to(Path.cwd().resolve()):
        raise ParamsError(f"{args.space}: storage: {space.storage} is inside this clone, where "
                          "every experiment would commit it; put it beside the clones")  # fmt: skip
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=space.study, storage=storage(space.storage),
                                direction=space.direction, load_if_exists=True)  # fmt: skip
    limit = optuna.study.MaxTrialsCallback(args.trials, states=None)
    if len(study.trials) < args.trials:
        study.optimize(lambda trial: run_trial(trial, space, known, args.push),
                       callbacks=[limit], catch=(TrialFailed,))  # fmt: skip
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        best = study.best_trial
        print(f"Best of {len(done)} trials: {space.metric} = {best.value:.4g}, "
              f"experiment {best.user_attrs['experiment']}, {best.params}")  # fmt: skip


if __name__ == "__main__":
    main()
