"""``lr_core.schedule.rate`` at its edges (docs/design.md#learning-rate-schedules), where
`make mutants` found the fast tests silent: one step an epoch (or none), a cosine whose
warm-up takes all its epochs or more, a cosine of one step, and an epoch index counted in
integers at any step."""
import math

import pytest

from lr_core.schedule import rate

STEP = {"kind": "step", "step_epochs": 1, "factor": 0.5}


@pytest.mark.parametrize("steps_per_epoch", [1, 0])
def test_one_step_an_epoch_or_none_is_one_step_an_epoch(steps_per_epoch):
    # step t is epoch t: the rate halves at every step
    assert [rate(STEP, 1.0, t, steps_per_epoch) for t in range(4)] == [1.0, 0.5, 0.25, 0.125]
    cos = {"kind": "cosine", "min_lr": 0.0, "epochs": 2}
    assert [rate(cos, 1.0, t, steps_per_epoch) for t in range(3)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-15)


@pytest.mark.parametrize("epochs", [2, 1])
def test_a_cosine_whose_warmup_takes_all_its_epochs_is_at_min_lr_after_it(epochs):
    sched = {"kind": "cosine", "min_lr": 0.01, "epochs": epochs, "warmup_epochs": 2}
    assert [rate(sched, 0.1, t, 2) for t in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1], rel=1e-15)
    assert rate(sched, 0.1, 4, 2) == 0.01 and rate(sched, 0.1, 9, 2) == 0.01


def test_a_cosine_of_one_step_starts_at_the_rate():
    sched = {"kind": "cosine", "min_lr": 0.0, "epochs": 1}
    assert rate(sched, 1.0, 0, 1) == 1.0
    assert rate(sched, 1.0, 1, 1) == 0.0
    assert rate({**sched, "epochs": 2}, 1.0, 1, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)), abs=1e-15)


def test_the_epoch_of_a_step_is_an_integer_division_at_any_step():
    # 10 steps an epoch: step 11,258,999,068,426,249 is in epoch 2 ** 50 (a float division
    # rounds it to the next epoch); a factor just below 1 tells the two powers apart
    f = 1 - 2 ** -52
    sched = {"kind": "step", "step_epochs": 1, "factor": f}
    assert rate(sched, 1.0, 11_258_999_068_426_249, 10) == f ** (2 ** 50)
    assert f ** (2 ** 50) != f ** (2 ** 50 + 1)
