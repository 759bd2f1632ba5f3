"""The warnings a statistician would give (docs/design.md#warnings): each fires on data
made for it, through a real run where that is cheap, and the shipped jobs stay silent.
Plots never fail a run: a one-class training set once crashed curves.png."""
import json

import numpy as np
import pytest

from launcher.driver import run_job
from launcher.report.advice import (PATIENCE, baseline_loss, data_warnings, fit_warnings, history_warnings)
from launcher.spec import load_spec


def _codes(warnings):
    return [w["code"] for w in warnings]


def test_class_balance_warnings():
    assert _codes(data_warnings(np.array([0, 450]), [], None)) == ["one-class"]
    assert "class 1, all 450 rows" in data_warnings(np.array([0, 450]), [], None)[0]["message"]
    rare = data_warnings(np.array([995, 5]), [], None)
    assert _codes(rare) == ["rare-class"] and "class 1: 5 of 1000 rows (0.5%)" in rare[0]["message"]
    assert "train.class_weight: balanced" in rare[0]["message"]
    assert _codes(data_warnings(np.array([300, 0, 200]), [], None)) == ["rare-class"]  # a softmax class without rows
    assert data_warnings(np.array([990, 10]), [], None) == []  # exactly 1% is not under 1%
    assert data_warnings(np.array([500, 500]), ["a"], {"constant": []}) == []


def test_constant_feature_warning_names_the_columns():
    (w,) = data_warnings(np.array([5, 5]), ["age", "site", "zip"], {"constant": [1, 2]})
    assert w["code"] == "constant-feature" and "(site, zip)" in w["message"]


def _hist(losses):
    return [{"train_loss": v} for v in losses]


def test_loss_warnings_fire_on_a_rising_or_useless_loss_only():
    base = baseline_loss(np.array([50, 50]))  # ln 2
    assert base == pytest.approx(np.log(2))
    rising = history_warnings(_hist([0.5, 0.4, 0.45, 0.5, 0.6]), base, 0.1)
    assert _codes(rising) == ["loss-rising"] and "lower train.learning_rate (now 0.1)" in rising[0]["message"]
    flat = history_warnings(_hist([3e7, 2.9e7, 3.4e7, 3.0e7]), base, 0.1)
    assert "loss-flat" in _codes(flat) and "data.standardize: true" in flat[-1]["message"]
    assert history_warnings(_hist([0.7, 0.6, 0.5, 0.45, 0.44]), base, 0.1) == []  # learning
    assert history_warnings(_hist([0.3, 0.3, 0.3, 0.3, 0.3]), base, 0.1) == []  # converged, below the baseline
    assert history_warnings(_hist([0.5, 0.6, 0.7]), base, 0.1) == []  # too few epochs to tell
    # the rise must last PATIENCE epochs
    assert _codes(history_warnings(_hist([0.5, 0.4] + [0.4 * 1.1 ** k for k in range(1, PATIENCE + 1)]), base,
                                   0.1)) == ["loss-rising"]
    assert history_warnings(_hist([0.5, 0.4, 0.39] + [0.4 * 1.1 ** k for k in range(1, PATIENCE)]), base, 0.1) == []
    # a converged plateau's noise (0.8% above its lowest loss) rises without a warning
    assert history_warnings(_hist([0.7, 0.3, 0.3, 0.301, 0.302, 0.3024]), base, 0.1) == []
    assert history_warnings(_hist([0.9, 0.9, 0.9, 0.9]), None, 0.1) == []  # weighted loss: no baseline


def test_overfit_warning():
    (w,) = fit_warnings(1.0, 0.7)
    assert w["code"] == "overfit" and "validation accuracy 0.7000 is far below training accuracy 1.0000" in w["message"]
    assert fit_warnings(0.95, 0.9) == [] and fit_warnings(None, 0.5) == []
    # 60 validation rows: a gap of 0.15 is within 3 standard errors (0.155) of chance
    assert fit_warnings(0.95, 0.8, val_rows=60) == []
    assert _codes(fit_warnings(0.95, 0.8, val_rows=6000)) == ["overfit"]
    assert _codes(fit_warnings(1.0, 0.5, val_rows=40)) == ["overfit"]


def _csv(path, x, labels):
    cols = [f"f{i}" for i in range(x.shape[1])]
    with open(path, "w") as f:
        f.write(",".join(cols) + ",label\n")
        for row, label in zip(x, labels):
            f.write(",".join(f"{v:.5f}" for v in row) + f",{label}\n")
    return path


def _spec(tmp_path, csv, *overrides):
    return load_spec("jobs/binary_2d.yaml", ["data.source=csv", f"data.path={csv}", "data.options={}",
                                             f"data.cache={tmp_path / 'cache'}", "resources.workers=0",
                                             *overrides])


@pytest.mark.pictures
def test_one_class_training_data_warns_and_every_picture_is_drawn(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (60, 2))
    res = run_job(_spec(tmp_path, _csv(tmp_path / "d.csv", x, [1] * 60), "train.epochs=2"), tmp_path / "run")
    assert res.summary["status"] == "completed"
    assert "one-class" in _codes(res.summary["warnings"])
    assert res.history[-1]["val_auc"] is None
    for name in ("curves.png", "boundary.png", "report.html"):
        assert (tmp_path / "run" / name).is_file(), name
    assert "not drawn" not in (tmp_path / "run" / "report.html").read_text()


def test_validation_far_below_training_warns(tmp_path):
    """40 features of noise, random labels, 40 training rows: the model learns the rows."""
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (80, 40))
    csv = _csv(tmp_path / "d.csv", x, rng.integers(0, 2, 80))
    res = run_job(_spec(tmp_path, csv, "data.val_fraction=0.5", "train.epochs=40", "train.learning_rate=0.5"),
                  tmp_path / "run")
    assert "overfit" in _codes(res.summary["warnings"]), res.summary
    assert res.summary["train_accuracy"] - res.summary["final"]["val_accuracy"] > 0.1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["warnings"] == res.summary["warnings"]


JOB2D = "jobs/binary_2d.yaml"


# MNIST's ten epochs take tens of seconds: the slow tier.
JOBS = ["binary_2d", "binary_synthetic", "digits_softmax", pytest.param("mnist_softmax", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", JOBS)
def test_the_shipped_jobs_stay_silent(tmp_path, name):
    """Each shipped job, in-process, at its shipped epochs (more than PATIENCE: every check
    has its say)."""
    spec = load_spec(f"jobs/{name}.yaml", ["resources.workers=0"])
    assert spec.train.epochs > PATIENCE
    res = run_job(spec, tmp_path / "run")
    assert res.summary["status"] == "completed"
    assert res.summary["warnings"] == [], res.summary["warnings"]


def test_a_converged_plateau_does_not_warn_of_a_rising_loss(tmp_path):
    """binary_2d, separation 1, learning rate 0.5, 30 epochs: the loss settles and then moves
    by a fraction of a percent; no loss-rising warning."""
    spec = load_spec(JOB2D, ["resources.workers=0", "data.options.separation=1", "train.learning_rate=0.5",
                             "train.epochs=30"])
    res = run_job(spec, tmp_path / "run")
    assert "loss-rising" not in _codes(res.summary["warnings"]), res.summary["warnings"]


def test_quiet_still_prints_the_warnings(tmp_path, capsys):
    """``--quiet`` prints only the run directory on stdout; the data and fit warnings still go
    to stderr."""
    from launcher.cli import main

    x = np.random.default_rng(1).normal(0, 1, (60, 2))
    csv = _csv(tmp_path / "d.csv", x, [1] * 60)
    job = tmp_path / "job.yaml"
    job.write_text(_spec(tmp_path, csv, "train.epochs=2").to_yaml())
    assert main(["run", str(job), "--quiet", "--output", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "run")
    warning = "lrjob: warning: the training rows hold one class only"
    assert any(line.startswith(warning) for line in err.splitlines()), err


@pytest.mark.parametrize("kind", ["step", "cosine"])
def test_a_warmup_as_long_as_the_run_warns_and_a_shorter_one_does_not(tmp_path, kind):
    """A warmup of train.epochs or more trains the whole run below the rate (a warning, not
    an error: the run may be resumed with more epochs, docs/design.md#warnings)."""
    schedule = "{kind: step, step_epochs: 1, factor: 0.5, warmup_epochs: 2}" if kind == "step" else \
        "{kind: cosine, epochs: 6, warmup_epochs: 2}"
    base = ["resources.workers=0", "data.options.n_train=64", "data.options.n_val=16", f"train.lr_schedule={schedule}"]
    res = run_job(load_spec("jobs/binary_2d.yaml", base + ["train.epochs=2"]), output=tmp_path / "a")
    (w,) = res.summary["warnings"]
    assert w["code"] == "warmup-past-end"
    assert w["message"].startswith("train.lr_schedule.warmup_epochs (2) is not less than train.epochs (2)")
    res = run_job(load_spec("jobs/binary_2d.yaml", base + ["train.epochs=3"]), output=tmp_path / "b")
    assert res.summary["warnings"] == []


def test_gpus_asked_of_an_in_process_run_are_a_warning(tmp_path):
    """--workers 0 trains on the CPU: GPUs asked of it are named in one warning, kept in summary.json;
    a run that asks none, or a backend given to the driver (horovodrun's ranks), has none."""
    from launcher.driver import DriverOptions
    from launcher.backends import InProcessBackend

    base = ["resources.workers=0", "data.options.n_train=64", "data.options.n_val=16", "train.epochs=1"]
    res = run_job(load_spec("jobs/binary_2d.yaml", base + ["resources.gpus_per_worker=1"]), output=tmp_path / "a")
    assert res.summary["warnings"] == [{"code": "gpus-unused", "message": (
        "resources.gpus_per_worker is 1 but the run is in-process (--workers 0), which trains on the CPU; give "
        "--workers N to train on GPUs, or --gpus-per-worker 0")}]
    assert run_job(load_spec("jobs/binary_2d.yaml", base), output=tmp_path / "b").summary["warnings"] == []
    spec = load_spec("jobs/binary_2d.yaml", base + ["resources.gpus_per_worker=1"])
    given = run_job(spec, output=tmp_path / "c", options=DriverOptions(
        backend_factory=lambda: InProcessBackend(spec.loop_config(), spec.load_data())))
    assert given.summary["warnings"] == []
