"""OneCycleLR cycles momentum as params.yaml says; the range test starts where training does."""

import copy
from functools import partial

import numpy as np
import pytest
import torch
from conftest import CPU, DEFAULTS
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from beluga import lr_find
from beluga.loader import DeviceLoader
from beluga.model import ResNet9
from beluga.optim import WeightAverage, one_cycle


def _momenta(cycle: bool, name: str = "sgd") -> list[float]:
    train = DEFAULTS.train.model_copy(update={"epochs": 4, "pct_start": 0.25,
                                              "cycle_momentum": cycle})  # fmt: skip
    optimizer = DEFAULTS.optimizer.model_copy(update={"name": name, "momentum": 0.95})
    opt = one_cycle(ResNet9(), optimizer=optimizer, train=train, max_lr=0.1, steps_per_epoch=10,
                    runtime=CPU)  # fmt: skip
    key = "momentum" if name == "sgd" else "betas"
    seen = []
    for _ in range(40):
        value = opt.optimizer.param_groups[0][key]
        seen.append(value if name == "sgd" else value[0])
        opt.optimizer.step()
        opt.scheduler.step()
    return seen


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_cycled_momentum_runs_from_optimizer_momentum_down_to_base_and_back(name: str):
    seen = _momenta(cycle=True, name=name)
    assert seen[0] == pytest.approx(0.95)
    assert min(seen) == pytest.approx(DEFAULTS.train.base_momentum) == seen[9]
    assert seen[-1] == pytest.approx(0.95, abs=1e-3)


def test_without_cycling_the_momentum_stays_at_optimizer_momentum():
    assert set(_momenta(cycle=False)) == {0.95}


def test_range_test_runs_at_the_momentum_training_starts_with(monkeypatch):
    used = []
    real = lr_find.make_optimizer

    def spy(model, params, lr):
        optimizer = real(model, params, lr)
        used.append(optimizer.param_groups[0]["momentum"])
        return optimizer

    monkeypatch.setattr(lr_find, "make_optimizer", spy)
    rng = np.random.default_rng(0)
    loader = DeviceLoader(rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
                          rng.integers(0, 10, 32), 16, CPU)  # fmt: skip
    finder = DEFAULTS.lr_find.model_copy(update={"num_iter": 20, "skip_start": 2, "skip_end": 2})
    lr_find.run_range_test(ResNet9(), loader, CPU, optimizer=DEFAULTS.optimizer,
                           label_smoothing=0.0, finder=finder)  # fmt: skip
    assert used == [DEFAULTS.optimizer.momentum]


def test_ema_is_the_model_kept_and_trails_the_trained_weights():
    train = DEFAULTS.train.model_copy(update={"epochs": 1, "ema_decay": 0.5})
    model = ResNet9()
    opt = one_cycle(model, optimizer=DEFAULTS.optimizer, train=train, max_lr=0.1,
                    steps_per_epoch=3, runtime=CPU)  # fmt: skip
    assert opt.kept(model) is opt.ema.module
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    weights = []
    for _ in range(3):
        opt.step(opt.criterion(model(x), y), model)
        weights.append(model.head[2].weight.detach().clone())
    expected = weights[0]
    for w in weights[1:]:
        expected = 0.5 * expected + 0.5 * w
    torch.testing.assert_close(opt.ema.module.head[2].weight, expected)
    state = opt.state_dict()
    assert state["ema"] is not None


def test_ema_every_k_steps_averages_those_steps_at_the_decay_to_the_power_k():
    train = DEFAULTS.train.model_copy(update={"epochs": 1, "ema_decay": 0.5, "ema_every": 2})
    model = ResNet9()
    opt = one_cycle(model, optimizer=DEFAULTS.optimizer, train=train, max_lr=0.1,
                    steps_per_epoch=5, runtime=CPU)  # fmt: skip
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    weights = []
    for _ in range(5):
        opt.step(opt.criterion(model(x), y), model)
        weights.append(model.head[2].weight.detach().clone())
    # updated after steps 2 and 4 only: the first copies, the second decays by 0.5 ** 2
    expected = 0.25 * weights[1] + 0.75 * weights[3]
    torch.testing.assert_close(opt.ema.module.head[2].weight, expected)
    assert not torch.allclose(expected, weights[4])


def _lookahead_run(
    steps: int, resume_after: int | None = None, total: int = 7, decay: float | None = 0.5
) -> tuple[list, nn.Module]:
    """Weights after each of `steps` steps (of `total`) with lookahead `decay` every 3 steps
    (none: the same run without lookahead)."""
    changes = {"epochs": 1, "ema_decay": None, "lookahead_decay": decay, "lookahead_every": 3}
    train = DEFAULTS.train.model_copy(update=changes)
    torch.manual_seed(0)
    model = ResNet9()
    build = partial(one_cycle, optimizer=DEFAULTS.optimizer, train=train, max_lr=0.1,
                    steps_per_epoch=total, runtime=CPU)  # fmt: skip
    opt = build(model)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    weights = []
    for step in range(steps):
        if step == resume_after:  # a new process: a fresh model and optimizer, loaded
            state, saved = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
            model = ResNet9()
            model.load_state_dict(saved)
            opt = build(model)
            opt.load_state_dict(state)
        opt.step(opt.criterion(model(x), y), model)
        weights.append(model.head[2].weight.detach().clone())
    return weights, model


@pytest.mark.parametrize("total", [7, 6])  # the last step off and on the 3-step schedule
def test_lookahead_pulls_the_weights_to_the_slow_copy_on_its_schedule_and_ends_on_it(total):
    weights, model = _lookahead_run(total, total=total)
    # the reference, airbench's loop: the same steps without lookahead, a pull every 3 steps
    # at 0.5 ** 3 * progress ** 3, and after the last step the weights set to the slow copy
    train = DEFAULTS.train.model_copy(update={"epochs": 1, "ema_decay": None})
    torch.manual_seed(0)
    plain = ResNet9()
    opt = one_cycle(plain, optimizer=DEFAULTS.optimizer, train=train, max_lr=0.1,
                    steps_per_epoch=total, runtime=CPU)  # fmt: skip
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    slow = [t.detach().clone() for t in plain.parameters()]
    for step in range(1, total + 1):
        opt.step(opt.criterion(plain(x), y), plain)
        with torch.no_grad():
            for s, fast in zip(slow, plain.parameters()):
                if step % 3 == 0:
                    s.lerp_(fast, 1 - 0.5**3 * (step / total) ** 3)
                if step % 3 == 0 or step == total:
                    fast.copy_(s)
        torch.testing.assert_close(weights[step - 1], plain.head[2].weight)
    assert not torch.equal(weights[2], weights[1])
    for s, fast in zip(slow, model.parameters()):
        torch.testing.assert_close(fast, s)


def test_lookahead_in_a_run_shorter_than_its_period_keeps_the_trained_weights():
    weights, _ = _lookahead_run(2, total=2)  # pulls every 3 steps: none in 2
    plain, _ = _lookahead_run(2, total=2, decay=None)
    torch.manual_seed(0)
    initial = ResNet9().head[2].weight
    torch.testing.assert_close(weights[-1], plain[-1])
    assert not torch.equal(weights[-1], initial)


def test_lookahead_resumes_from_its_saved_slow_copy_as_if_never_stopped():
    uninterrupted, _ = _lookahead_run(7)
    resumed, _ = _lookahead_run(7, resume_after=4)
    for a, b in zip(uninterrupted, resumed):
        assert torch.equal(a, b)


def test_weight_average_equals_averaged_model_bit_for_bit_also_after_a_resume():
    torch.manual_seed(0)
    model = ResNet9(**DEFAULTS.model.model_dump())  # ghost batch norm: per-split and int buffers
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ours = WeightAverage(model, 0.5)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for step in range(4):
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        sgd.step()
        ours.update_parameters(model)
        theirs.update_parameters(model)
        if step == 1:  # a resumed run: a new average loaded from the saved one goes on alike
            ours = WeightAverage(model, 0.5)
            ours.load_state_dict(theirs.state_dict())
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys()
    assert all(torch.equal(mine[k], reference[k]) for k in mine)
    # integer buffers are averaged and truncated, not copied: 1, 1.5 -> 1, 2, 3 against 4
    assert model.prep[2].num_batches_tracked == 4 and mine["module.prep.2.num_batches_tracked"] == 3
    assert not torch.equal(mine["module.head.2.weight"], model.head[2].weight)
