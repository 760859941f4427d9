"""Many recipe variants through the real stage code, in one process: the ablation harness.

    python scripts/grid.py GRID.yaml OUT [--seconds N]

GRID.yaml lists runs, each a name and `-S`-style overrides of params.yaml (a
YAML alias of a list of them is spliced in, so a recipe is written once); for
each, the lr_find, train and evaluate stages run in OUT/<name>/ exactly as
`dvc exp run -S key=value ...` would run them (the downloaded data is shared),
but in one process, so start-up and the upload of the images to the device
are paid once: on a GPU that is most of a short run's time. Use it where DVC
is not installed or a queue's per-run start-up would dominate; elsewhere
`dvc exp run --queue` is the tool. A `confirm` entry then reruns the best of
the listed runs (by test accuracy) with more seeds and epoch counts, and the
`after` runs follow. Every run's params are checked before the first starts.
OUT/summary.json gets one row per run, rewritten after each.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
from pathlib import Path

import torch
import yaml

from beluga import cli
from beluga.atomic import write_json
from beluga.errors import ParamsError
from beluga.params import parse_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("lr_find", "train", "evaluate")


def _override(params: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    *sections, leaf = key.split(".")
    node = params
    for section in sections:
        node = node.get(section) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        raise ParamsError(f"{assignment}: {key} is not a key of params.yaml")
    node[leaf] = yaml.safe_load(value)


def _params(overrides: list[str], base: dict) -> dict:
    params = json.loads(json.dumps(base))
    for assignment in overrides:
        _override(params, assignment)
    return params


def _variants(confirm: dict) -> list[tuple[str, str]]:
    """A confirm entry's reruns of the best run: (name suffix, override), seeds then epochs."""
    return [(f"seed{seed}", f"seed={seed}") for seed in confirm.get("seeds", [])] + [
        (f"epochs{epochs}", f"train.epochs={epochs}") for epochs in confirm.get("epochs", [])
    ]


def check(grid: dict, base: dict) -> None:
    """Refuse the whole grid, in one line, if any run's params would be refused, so that a
    typo in its last run costs nothing (a grid can take a GPU's whole lease)."""
    confirm = grid.get("confirm") or {}
    runs = {entry["name"]: entry["overrides"] for entry in grid["runs"]}
    unknown = set(confirm.get("among", [])) - set(runs)
    if unknown:
        raise ParamsError(f"confirm.among: {', '.join(sorted(unknown))}: not a run of the grid")
    confirmed = [{"name": f"confirm {name} {assignment}", "overrides": [*runs[name], assignment]}
                 for name in confirm.get("among", [])
                 for _, assignment in _variants(confirm)]  # fmt: skip
    for entry in [*grid["runs"], *grid.get("after", []), *confirmed]:
        try:
            parse_params(_params(_flat(entry["overrides"]), base))
        except ParamsError as error:
            raise ParamsError(f"grid run {entry['name']}: {error}") from None


def _run(name: str, overrides: list[str], base: dict, out: Path, mains: dict) -> dict:
    """The three stages for one set of overrides, in out/name; the row for the summary."""
    params = _params(overrides, base)
    params["paths"]["data"] = str(ROOT / base["paths"]["data"])
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    row: dict = {"name": name, "overrides": overrides, "seconds": {}}
    here = Path.cwd()
    os.chdir(folder)
    try:
        for stage in STAGES:
            if stage == "lr_find" and params["train"]["max_lr"] is not None:
                continue
            start = time.perf_counter()
            sys.argv = [f"stages/{stage}.py"]  # the stage parses its own (empty) arguments
            mains[stage]()
            row["seconds"][stage] = round(time.perf_counter() - start, 2)
    except SystemExit as failed:
        row["failed"] = f"{stage} exited {failed.code}"
    finally:
        os.chdir(here)
    for metrics in ("lr_find", "train", "eval"):
        path = folder / "metrics" / f"{metrics}.json"
        if path.exists():
            row[metrics] = json.loads(path.read_text())
    return row


def _flat(overrides: list) -> list[str]:
    """Overrides with YAML-aliased lists (a shared recipe, `*bag`) spliced in."""
    return [a for item in overrides for a in (item if isinstance(item, list) else [item])]


def _accuracy(row: dict) -> float:
    return row.get("eval", {}).get("accuracy", -1.0)


@cli.command
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=float("inf"), help="start no run after")
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    grid = yaml.safe_load(args.grid.read_text())
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    check(grid, base)
    mains = {stage: runpy.run_path(str(ROOT / "stages" / f"{stage}.py"))["main"]
             for stage in STAGES}  # fmt: skip
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows: list[dict] = []

    def run(name: str, overrides: list[str]) -> dict:
        row = _run(name, overrides, base, args.out, mains)
        row["device"], row["torch"] = device, torch.__version__
        rows.append(row)
        write_json(args.out / "summary.json", {"runs": rows})
        print(f"{name}: {100 * _accuracy(row):.2f}%  {row['seconds']}", flush=True)
        return row

    for entry in grid["runs"]:
        if time.monotonic() < deadline:
            run(entry["name"], _flat(entry["overrides"]))
    confirm = grid.get("confirm")
    among = [row for row in rows if row["name"] in (confirm or {}).get("among", [])]
    if among:  # none when the deadline came first
        best = max(among, key=_accuracy)
        print(f"best of {len(among)}: {best['name']}", flush=True)
        for suffix, assignment in _variants(confirm):
            if time.monotonic() < deadline:
                run(f"{best['name']}-{suffix}", [*best["overrides"], assignment])
    for entry in grid.get("after", []):
        if time.monotonic() < deadline:
            run(entry["name"], _flat(entry["overrides"]))


if __name__ == "__main__":
    main()
