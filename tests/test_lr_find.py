import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CPU, DEFAULTS, ROOT, sh

from beluga import figures
from beluga.loader import DeviceLoader
from beluga.lr_find import (
    Curve,
    LRFindError,
    minimum,
    plateau,
    run_range_test,
    searched,
    steepest,
    suggest,
    usable,
    valley,
)
from beluga.model import ResNet9
from beluga.params import LRFindParams


def _finder(**changes) -> LRFindParams:
    return LRFindParams.model_validate({**DEFAULTS.lr_find.model_dump(), **changes})


def _curve(losses):
    return Curve(np.logspace(-4, 1, len(losses)), np.asarray(losses, dtype=float))


def test_steepest_is_where_the_loss_falls_fastest():
    losses = np.array([2.3, 2.3, 2.29, 2.2, 1.8, 1.7, 1.65, 1.7, 2.5])
    assert steepest(losses) == 4


def test_valley_sits_inside_the_longest_descent():
    losses = np.concatenate([np.full(10, 2.3), np.linspace(2.3, 1.0, 30), np.linspace(1, 4, 10)])
    index = valley(losses)
    assert 10 < index < 40


def test_nan_losses_and_everything_after_them_are_ignored():
    losses = [2.3] * 5 + list(np.linspace(2.3, 1.0, 20)) + [np.nan, 0.1, 0.05, 0.01]
    curve = _curve(losses)
    assert len(usable(curve).losses) == 25
    params = _finder(num_iter=29, skip_start=0, skip_end=0)
    picked = suggest(curve, params)
    assert all(lr < curve.lrs[25] for lr in picked.values())


def test_no_finite_curve_is_a_clear_error():
    curve = _curve([np.inf] * 30)
    with pytest.raises(LRFindError, match="only 0 finite losses of 30"):
        suggest(curve, _finder(num_iter=30))


def test_range_test_records_rising_lrs_and_restores_the_model():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 64)
    runtime = CPU
    loader = DeviceLoader(images, labels, 16, runtime, augment=DEFAULTS.augment, shuffle=True)
    model = ResNet9()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = _finder(
        start_lr=1e-3, end_lr=0.05, num_iter=20, skip_start=2, skip_end=2, diverge_th=1e6
    )  # random labels may blow up; all 20 steps must run
    curve = run_range_test(model, loader, runtime, optimizer=DEFAULTS.optimizer,
                           label_smoothing=0.0, finder=params)  # fmt: skip
    assert len(curve.lrs) == 20
    assert curve.lrs[0] == pytest.approx(1e-3) and np.all(np.diff(curve.lrs) > 0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_minimum_ignores_a_second_dip_after_the_loss_has_climbed():
    losses = np.concatenate(
        [np.linspace(2.3, 1.8, 30), np.linspace(1.8, 2.1, 10), np.linspace(2.1, 1.5, 20)]
    )
    assert minimum(losses, 0.05) == 29
    assert int(np.argmin(losses)) == 59  # what a plain argmin would pick


def test_plateau_takes_the_middle_of_a_bumpy_bottom_wherever_its_lowest_bump_falls():
    rng = np.random.default_rng(0)
    descent, climb = np.linspace(2.3, 1.8, 40), np.linspace(1.8, 2.5, 20)
    picks = set()
    for _ in range(5):
        bottom = 1.7 + rng.uniform(0, 0.01, 41)  # within 1% of 1.7 from index 40 to 80
        losses = np.concatenate([descent, bottom, climb])
        assert 40 <= minimum(losses, 0.05) <= 80
        picks.add(plateau(losses, 0.05, 0.02))
    assert picks == {60}


def test_plateau_ends_at_the_first_climb_and_ignores_a_lower_second_dip():
    losses = np.concatenate([np.linspace(2.3, 1.8, 30), np.full(11, 1.8),
                             np.linspace(1.8, 2.1, 10), np.linspace(2.1, 1.5, 20)])  # fmt: skip
    # within 2% of 1.8 (up to 1.836): the descent's last 3 points, the flat 29-40, the climb's
    # first 2; the second dip (60-70) lies below that too but after the first 5% climb
    assert plateau(losses, 0.05, 0.02) == (27 + 42) // 2
    curve = _curve(losses)
    picked = suggest(curve, _finder(num_iter=71, skip_start=0, skip_end=0, plateau_tol=0.02))[
        "plateau"
    ]
    assert picked == pytest.approx(curve.lrs[34])


def _diverging_curve() -> Curve:
    """A range test's shape: flat, a long descent, a bumpy bottom, a first climb, a late
    second dip, then the divergence to many times the starting loss."""
    losses = np.concatenate([
        np.full(20, 2.3), np.linspace(2.3, 1.7, 60), 1.7 + 0.01 * np.sin(np.arange(30)),
        np.linspace(1.7, 2.0, 10), np.linspace(2.0, 1.6, 10), np.geomspace(1.6, 14.0, 20),
    ])  # fmt: skip
    return _curve(losses)


def test_the_minimum_rule_searched_up_to_its_first_climb_and_the_others_everywhere():
    curve = _diverging_curve()
    finder = _finder(skip_start=10, skip_end=5, min_rise=0.05)
    low, high = searched(curve, finder)
    assert low == curve.lrs[10]
    climb = 110 + int(np.argmax(curve.losses[110:120] > 1.69 * 1.05))
    assert high == curve.lrs[climb - 1] and suggest(curve, finder)["minimum"] < high
    assert searched(curve, _finder(suggestion="steepest", skip_end=5))[1] == curve.lrs[-6]


def test_the_lr_picture_clips_the_divergence_and_marks_every_rule(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    curve = _diverging_curve()
    finder = _finder()
    picks = suggest(curve, finder)
    chosen = picks["minimum"] / 2
    figures.lr_find_figure(curve.lrs, curve.losses, picks, chosen, "minimum / 2",
                           searched(curve, finder), tmp_path / "lr.png")  # fmt: skip
    ax = drawn[0].axes[0]
    bottom, top = ax.get_ylim()
    assert 1.5 < bottom < curve.losses.min() and 2.3 < top < 2.5  # not up to the 14.0
    marked = {round(line.get_xdata()[0], 9) for line in ax.lines[1:]}
    assert marked == {round(lr, 9) for lr in [*picks.values(), chosen]}
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any(text.startswith("searched by the rule") for text in legend)
    assert any("off the top: loss 14" in text.get_text() for text in ax.texts)


def test_lr_picks_recovers_the_raw_losses_and_picks_as_the_stage_does(tmp_path):
    spec = importlib.util.spec_from_file_location("lr_picks", ROOT / "scripts/lr_picks.py")
    lr_picks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lr_picks)
    raw = np.random.default_rng(0).uniform(1.5, 2.5, 50)
    smoothed = [raw[0]]
    for loss in raw[1:]:  # torch-lr-finder's smoothing
        smoothed.append(0.05 * loss + 0.95 * smoothed[-1])
    assert lr_picks._resmoothed(np.array(smoothed), 0.05, 1.0) == pytest.approx(raw)
    curve = _diverging_curve()
    path = tmp_path / "lr_find.csv"
    pd.DataFrame({"lr": curve.lrs, "loss": curve.losses}).to_csv(path, index=False)
    table = sh(sys.executable, ROOT / "scripts/lr_picks.py", path, cwd=ROOT).stdout
    row = table.splitlines()[-1].removesuffix(" |").split(" | ")
    assert row[2:6] == [f"{suggest(curve, DEFAULTS.lr_find)[rule]:.3g}"
                        for rule in ("plateau", "minimum", "valley", "steepest")]  # fmt: skip
