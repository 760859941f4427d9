"""Test accuracy of a trained model under richer test-time augmentations than `flip_shift`.

    python scripts/tta_views.py MODEL.pt [--data data/cifar10.npz] [--out FILE.json]

Each of 18 views (the nine one-pixel shifts of the reflect-padded image, each also
mirrored) runs once over the test set at the evaluate stage's precision; the logits are
then averaged in fixed combinations chosen beforehand (`COMBOS`), among them the
evaluate stage's own `flip_shift`, so the script checks itself against `eval.json`.
Choosing among a few combinations on the test set flatters the winner slightly; the
gains are measured on the same 10,000 images, so they are paired.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from beluga import data
from beluga.evaluate import TTA, predict
from beluga.loader import DeviceLoader
from beluga.model import load_model
from beluga.params import RuntimeParams
from beluga.runtime import resolve

SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
DIAGONAL = [(-1, -1), (1, 1)]  # the evaluate stage's flip_shift
ANTI = [(-1, 1), (1, -1)]
AXES = [(-1, 0), (1, 0), (0, -1), (0, 1)]

# name: {shift: weight of the pair (view, its mirror)}
COMBOS = {
    "none (one view)": None,
    "flip": {(0, 0): 1.0},
    "flip_shift (evaluate stage)": {(0, 0): 1 / 2, **{s: 1 / 4 for s in DIAGONAL}},
    "flip + 4 diagonal shifts, centre 1/2": {(0, 0): 1 / 2, **{s: 1 / 8 for s in DIAGONAL + ANTI}},
    "flip + 4 axis shifts, centre 1/2": {(0, 0): 1 / 2, **{s: 1 / 8 for s in AXES}},
    "flip + 8 shifts, centre 1/2": {(0, 0): 1 / 2, **{s: 1 / 16 for s in SHIFTS if s != (0, 0)}},
    "flip + 8 shifts, equal": {s: 1 / 9 for s in SHIFTS},
    "flip + 2 diagonal shifts, equal": {(0, 0): 1 / 3, **{s: 1 / 3 for s in DIAGONAL}},
}


def shifted(
    dy: int, dx: int, mirror: bool
) -> Callable[[torch.Tensor], tuple[list[torch.Tensor], list[float]]]:
    """A view function for beluga.evaluate.TTA: the batch moved by (dy, dx), maybe mirrored."""

    def view(x: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        out = padded[..., 1 + dy : 33 + dy, 1 + dx : 33 + dx]
        return [out.flip(3) if mirror else out], [1.0]

    return view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", default="data/cifar10.npz")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out")
    args = parser.parse_args()
    runtime = resolve(RuntimeParams(device="auto", precision="auto", channels_last=True))
    test = data.load(args.data).test
    model, _ = load_model(args.model)
    model = runtime.prepare(model)
    loader = DeviceLoader(test.images, test.labels, args.batch_size, runtime)
    logits = {}
    for dy, dx in SHIFTS:
        for mirror in (False, True):
            name = f"view{dy}{dx}{mirror}"
            TTA[name] = shifted(dy, dx, mirror)
            logits[dy, dx, mirror] = predict(model, loader, runtime, name)
    labels = loader.labels
    results = {}
    for combo, weights in COMBOS.items():
        if weights is None:
            mean = logits[0, 0, False]
        else:
            mean = sum(
                w / 2 * (logits[s + (False,)] + logits[s + (True,)]) for s, w in weights.items()
            )
        results[combo] = (mean.argmax(1) == labels).float().mean().item()
        print(f"{100 * results[combo]:6.2f}%  {combo}")
    singles = {
        f"{dy},{dx},{'mirror' if m else 'plain'}": (v.argmax(1) == labels).float().mean().item()
        for (dy, dx, m), v in logits.items()
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "device": str(runtime.device), "combos": results,
                       "single_views": singles}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
