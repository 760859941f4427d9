"""Each LR rule's pick on saved range-test curves (plots/lr_find.csv files), as a table.

    python scripts/lr_picks.py CURVE.csv ... [--set lr_find.KEY=VALUE ...] [--smooth-f F]

The rules and their settings are the pipeline's own (`beluga.lr_find.suggest`, params.yaml's
`lr_find:` with --set on top). --smooth-f re-smooths a curve at another factor: the CSV
holds torch-lr-finder's smoothed loss, an exponential average without bias correction whose
first point is the raw loss, so the raw batch losses come back exactly from the file's
`lr_find.smooth_f`. docs/lr_rules.md uses it.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from beluga.lr_find import Curve, suggest
from beluga.params import LRFindParams, load_params


def _resmoothed(losses: np.ndarray, recorded_f: float, new_f: float) -> np.ndarray:
    raw = np.concatenate([losses[:1], (losses[1:] - (1 - recorded_f) * losses[:-1]) / recorded_f])
    out = np.empty_like(raw)
    out[0] = raw[0]
    for i in range(1, len(raw)):
        out[i] = new_f * raw[i] + (1 - new_f) * out[i - 1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", nargs="+", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="lr_find.KEY=VALUE")
    parser.add_argument("--smooth-f", type=float, help="re-smooth each curve at this factor")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    values = load_params(args.params).lr_find.model_dump()
    for assignment in args.set:
        key, value = assignment.removeprefix("lr_find.").split("=", 1)
        values[key] = yaml.safe_load(value)
    finder = LRFindParams.model_validate(values)
    rules = ("plateau", "minimum", "valley", "steepest")
    print("| curve | points | " + " | ".join(rules) + " |")
    print("|---|---:|" + "---:|" * len(rules))
    for path in args.curves:
        table = pd.read_csv(path)
        losses = table.loss.to_numpy()
        if args.smooth_f is not None:
            losses = _resmoothed(losses, finder.smooth_f, args.smooth_f)
        picks = suggest(Curve(table.lr.to_numpy(), losses), finder)
        cells = " | ".join(f"{picks[rule]:.3g}" for rule in rules)
        print(f"| {path} | {len(table)} | {cells} |")


if __name__ == "__main__":
    main()
