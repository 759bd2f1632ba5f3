"""Learning-rate schedules (docs/design.md#learning-rate-schedules) against the NumPy oracle.

``lr_core.schedule.rate`` equals the oracle's ``scheduled_lr`` at every step; the training
loop with a schedule trains the oracle's parameters (and lands far from the constant-rate
run); a run interrupted inside the schedule and resumed from its state, in the loop and
through the driver, equals the uninterrupted run bit for bit.
"""
import math

import numpy as np
import pytest

import oracle
from launcher.backends import InProcessBackend
from launcher.driver import DriverOptions, run_job
from launcher.rundir import list_checkpoints
from launcher.spec import load_spec
from lr_core.config import LoopConfig
from lr_core.errors import WorkerFailure
from lr_core.loop import TrainingLoop
from lr_core.schedule import rate
from test_optimizers_oracle import LOSS_ATOL, PARAM_ATOL, _data, _max_param_diff, _oracle_run

SCHEDULES = {
    "step": {"kind": "step", "step_epochs": 2, "factor": 0.3, "warmup_epochs": 0},
    "step-warmup": {"kind": "step", "step_epochs": 1, "factor": 0.5, "warmup_epochs": 1},
    "cosine": {"kind": "cosine", "min_lr": 0.01, "epochs": 3, "warmup_epochs": 0},
    "cosine-warmup": {"kind": "cosine", "min_lr": 0.0, "epochs": 3, "warmup_epochs": 1},
    "cosine-short": {"kind": "cosine", "min_lr": 0.02, "epochs": 2, "warmup_epochs": 0},  # min_lr after it
}
STEPS, EPOCHS = 7, 4


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_rates_equal_the_oracle_at_every_step(name):
    sched = SCHEDULES[name]
    for t in range(EPOCHS * STEPS):
        want = oracle.scheduled_lr(sched, 0.2, t // STEPS, t % STEPS, STEPS)
        assert rate(sched, 0.2, t, STEPS) == pytest.approx(want, rel=1e-12, abs=1e-15), t


def test_rates_at_known_points():
    step, cos, warm = SCHEDULES["step"], SCHEDULES["cosine"], SCHEDULES["cosine-warmup"]
    assert [rate(step, 1.0, e * STEPS, STEPS) for e in range(5)] == pytest.approx([1, 1, 0.3, 0.3, 0.09])
    assert rate(step, 1.0, 2 * STEPS - 1, STEPS) == 1.0            # constant to the epoch's last step
    assert rate(cos, 1.0, 0, STEPS) == 1.0
    assert rate(cos, 1.0, 3, 2) == pytest.approx(0.505)            # half way (6 steps): (lr + min_lr) / 2
    assert rate(cos, 1.0, 3 * STEPS, STEPS) == pytest.approx(0.01)             # the end, and after it
    assert rate(cos, 1.0, 5 * STEPS, STEPS) == pytest.approx(0.01)
    assert [rate(warm, 1.0, t, STEPS) for t in range(3)] == pytest.approx([1 / 7, 2 / 7, 3 / 7])
    assert rate(warm, 1.0, STEPS, STEPS) == 1.0                    # the cosine starts after the warmup
    assert rate(None, 0.3, 99, STEPS) == 0.3


def _config(model, opt, sched):
    from test_optimizers_oracle import _config as base

    cfg = base(model, opt, 0.0)
    return LoopConfig(**{**cfg.to_dict(), "hidden": cfg.hidden, "lr_schedule": sched})


@pytest.mark.parametrize("opt", ["sgd-momentum", "adam"])
@pytest.mark.parametrize("model", ["binary", "softmax-hidden"])
@pytest.mark.parametrize("name", ["step", "cosine-warmup"])
def test_the_loop_trains_the_oracles_scheduled_run(model, opt, name):
    """Three epochs of 7 steps (53 rows, batch 8) with the schedule; the constant-rate run of
    the oracle is far away, so the comparison sees the schedule."""
    sched = SCHEDULES[name]
    cfg, data = _config(model, opt, sched), _data(model)
    loop = TrainingLoop(cfg, data)
    history = [loop.run_epoch(e) for e in range(3)]
    want, want_hist = _oracle_run(cfg, data, schedule=sched)
    assert _max_param_diff(loop.get_params(), want) <= PARAM_ATOL
    for h, o in zip(history, want_hist):
        assert h["train_loss"] == pytest.approx(o["train_loss"], abs=LOSS_ATOL)
        assert h["val_loss"] == pytest.approx(o["val_loss"], abs=LOSS_ATOL)
    constant, _ = _oracle_run(cfg, data)
    assert _max_param_diff(loop.get_params(), constant) > 100 * PARAM_ATOL
    assert math.isclose(want_hist[0]["epoch_lrs"][0], oracle.scheduled_lr(sched, cfg.learning_rate, 0, 0, 7))


def test_a_resumed_loop_continues_the_schedule_bit_for_bit():
    """Stopped inside epoch 2 (after 3 of its 7 steps), its state taken to a new loop: the
    rest of the run equals the uninterrupted one exactly (the rate comes from the epoch
    and step the state carries)."""
    sched = SCHEDULES["cosine-warmup"]
    cfg, data = _config("softmax-hidden", "adam", sched), _data("softmax-hidden")
    full = TrainingLoop(cfg, data)
    want = [full.run_epoch(e) for e in range(3)]

    first = TrainingLoop(cfg, data)
    first.run_epoch(0)
    assert first.run_epoch(1, stop_step=3)["partial"]
    state = first.get_state()
    second = TrainingLoop(cfg, data)
    second.set_state(state)
    got = [second.run_epoch(1, start_step=3), second.run_epoch(2)]
    for name, value in full.get_params().items():
        assert np.array_equal(second.get_params()[name], value), name
    for a, b in zip(want[1:], got):
        assert (a["train_loss"], a["val_loss"]) == (b["train_loss"], b["val_loss"])


class _DiesOnce(InProcessBackend):
    """The in-process backend; the worker group fails once before the segment ``at``."""

    def __init__(self, spec, at: list):
        super().__init__(spec.loop_config(), spec.load_data())
        self.at = at

    def run_epoch(self, epoch, progress=None, timeout_s=None, start_step=0, stop_step=None):
        if (epoch, start_step) in self.at:
            self.at.remove((epoch, start_step))
            raise WorkerFailure(f"rank 1 died in epoch {epoch + 1}", rank=1, node="n1")
        return super().run_epoch(epoch, progress, timeout_s, start_step=start_step, stop_step=stop_step)


def test_a_run_resumed_mid_schedule_equals_the_uninterrupted_one(tmp_path):
    """Through the driver: a step schedule with warmup, early stopping and mid-epoch
    checkpoints; the workers die inside epoch 3, ``--resume`` continues from its step 10.
    Parameters, metrics, the stopping epoch and the exported epoch equal the run that was
    never interrupted."""
    sets = ["resources.workers=0", "train.epochs=8", "train.batch_size=128", "train.learning_rate=0.2",
            "train.momentum=0.9", "checkpoint.every_steps=5", "checkpoint.keep=50", "checkpoint.keep_best=true",
            "train.lr_schedule={kind: step, step_epochs: 2, factor: 0.5, warmup_epochs: 1}",
            "train.early_stopping={metric: val_accuracy, patience: 1}"]
    spec = load_spec("jobs/digits_softmax.yaml", sets)
    full = run_job(spec, tmp_path / "full")
    assert (full.summary["stopped_early"]["epoch"], full.summary["exported"]["epoch"]) == (6, 5)
    at = [(2, 10)]
    with pytest.raises(WorkerFailure):
        run_job(spec, tmp_path / "part", options=DriverOptions(backend_factory=lambda: _DiesOnce(spec, at)))
    assert list_checkpoints(tmp_path / "part")[-1].name == "epoch-0002-step-00000010"
    resumed = run_job(spec, resume=tmp_path / "part")
    for name, value in full.params.items():
        assert np.array_equal(resumed.params[name], value), name
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    for key in ("epochs_done", "stopped_early", "exported"):
        assert resumed.summary.get(key) == full.summary.get(key), key
