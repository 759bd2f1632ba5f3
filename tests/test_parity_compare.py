"""The parity verdict (``launcher.report.parity``) on crafted runs: parameters within 1e-5
(linear) or 1e-4 (hidden layers), every reported metric within 1e-6 over all epochs,
timings ignored; anything that cannot be compared (NaN, a missing parameter or metric,
a shape or epoch-count mismatch) fails the verdict instead of passing or crashing."""
import copy
import warnings
from types import SimpleNamespace as Run

import numpy as np
import pytest

from launcher.report.parity import METRIC_TOLERANCE, TIMING_KEYS, Outcome, ParityReport, compare, param_tolerance

W, B = "lrjob_layer0_weight", "lrjob_layer0_bias"


def _params(dtype=np.float64):
    rng = np.random.default_rng(0)
    return {W: rng.normal(size=(3, 4)).astype(dtype), B: rng.normal(size=3).astype(dtype)}


def _history(epochs=3):
    return [{"epoch": e + 1, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.65 - 0.1 * e, "val_accuracy": 0.5 + 0.1 * e,
             "val_auc": 0.6 + 0.05 * e, "tp": 3 + e, "fp": 2, "epoch_seconds": 1.5, "train_seconds": 1.2,
             "samples_per_s": 1000.0, "steps": 7}
            for e in range(epochs)]


def _compare(params, history, hidden=(), ref_params=None, ref_history=None, workers=3) -> ParityReport:
    ref = Outcome(_params() if ref_params is None else ref_params, _history() if ref_history is None else ref_history)
    return compare(ref, Outcome(params, history), hidden, workers)


def _param_row(report, name):
    (row,) = [r for r in report.param_rows if r[0] == name]
    return row


def _metric_row(report, name):
    (row,) = [r for r in report.metric_rows if r[0] == name]
    return row


def test_tolerances():
    assert param_tolerance(()) == 1e-5
    assert param_tolerance([]) == 1e-5
    assert param_tolerance((10,)) == 1e-4
    assert param_tolerance((10, 10, 10)) == 1e-4
    assert METRIC_TOLERANCE == 1e-6


def test_identical_runs_hold():
    report = _compare(copy.deepcopy(_params()), copy.deepcopy(_history()))
    assert report.ok
    assert report.max_param_diff == 0.0 and report.max_metric_diff == 0.0
    assert {r[0] for r in report.param_rows} == {W, B}
    assert {r[0] for r in report.metric_rows} == {"train_loss", "val_loss", "val_accuracy", "val_auc",
                                                  "tp", "fp"}
    text = report.render()
    assert "parity holds" in text and "FAILS" not in text
    assert "--workers 3" in text and " NO" not in text


@pytest.mark.parametrize("hidden", [(), (8,)], ids=["linear", "hidden"])
@pytest.mark.parametrize("factor,ok", [(0.0, True), (0.5, True), (0.99, True),
                                       (1.01, False), (1.5, False), (3.0, False)])
def test_parameter_difference_around_the_tolerance(hidden, factor, ok):
    tol = param_tolerance(hidden)
    params = _params()
    params[W][1, 2] += factor * tol
    report = _compare(params, _history(), hidden)
    assert report.ok is ok
    name, shape, d, t = _param_row(report, W)
    assert shape == (3, 4) and t == tol
    assert d == pytest.approx(factor * tol, rel=1e-6, abs=1e-15)
    assert _param_row(report, B)[2] == 0.0
    assert report.max_param_diff == d
    assert ("parity holds" if ok else "parity FAILS") in report.render()


@pytest.mark.parametrize("hidden", [(), (8,)], ids=["linear", "hidden"])
def test_parameter_difference_exactly_at_the_tolerance_holds(hidden):
    tol = param_tolerance(hidden)
    ref = {W: np.zeros((3, 4)), B: np.zeros(3)}
    params = {W: np.zeros((3, 4)), B: np.zeros(3)}
    params[B][0] = -tol
    report = _compare(params, _history(), hidden, ref_params=ref)
    assert _param_row(report, B)[2] == tol
    assert report.ok


def test_float32_parameters_are_compared_in_float64():
    ref = _params(np.float32)
    params = {k: v.copy() for k, v in ref.items()}
    params[W][0, 0] = np.float32(params[W][0, 0] + np.float32(2e-5))
    report = _compare(params, _history(), (), ref_params=ref)
    assert not report.ok and _param_row(report, W)[2] == pytest.approx(2e-5, rel=1e-2)


@pytest.mark.parametrize("epoch", [0, 1, 2])
@pytest.mark.parametrize("factor,ok", [(0.5, True), (0.99, True), (1.01, False), (2.0, False)])
def test_metric_difference_around_the_tolerance_in_any_epoch(epoch, factor, ok):
    history = _history()
    history[epoch]["val_loss"] += factor * METRIC_TOLERANCE
    report = _compare(_params(), history)
    assert report.ok is ok
    name, d, t = _metric_row(report, "val_loss")
    assert t == METRIC_TOLERANCE
    assert d == pytest.approx(factor * METRIC_TOLERANCE, rel=1e-6)
    assert _metric_row(report, "train_loss")[1] == 0.0
    assert report.max_metric_diff == d
    assert ("parity holds" if ok else "parity FAILS") in report.render()


def test_metric_difference_exactly_at_the_tolerance_holds():
    ref = _history()
    ref[1]["train_loss"] = 0.0
    history = copy.deepcopy(ref)
    history[1]["train_loss"] = METRIC_TOLERANCE
    report = _compare(_params(), history, ref_history=ref)
    assert _metric_row(report, "train_loss")[1] == METRIC_TOLERANCE
    assert report.ok


def test_a_failing_metric_fails_even_when_every_parameter_matches():
    history = _history()
    history[2]["tp"] += 1
    report = _compare(_params(), history)
    assert report.max_param_diff == 0.0
    assert not report.ok
    text = report.render()
    assert "parity FAILS" in text
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith("tp ")]
    assert line.rstrip().endswith("NO")


@pytest.mark.parametrize("where", ["ref", "dist", "both"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_a_parameter_fails(where, value):
    ref, params = _params(), _params()
    for p in {"ref": [ref], "dist": [params], "both": [ref, params]}[where]:
        p[W][2, 3] = value
    report = _compare(params, _history(), ref_params=ref)
    assert not report.ok
    d, t = _param_row(report, W)[2:]
    assert not d <= t
    assert report.max_param_diff == np.inf
    assert "parity FAILS" in report.render()


@pytest.mark.parametrize("epoch", [0, 1, 2])
@pytest.mark.parametrize("where", ["ref", "dist", "both"])
def test_nan_in_a_metric_fails_in_any_epoch(epoch, where):
    ref, history = _history(), _history()
    for h in {"ref": [ref], "dist": [history], "both": [ref, history]}[where]:
        h[epoch]["val_loss"] = float("nan")
    report = _compare(_params(), history, ref_history=ref)
    assert not report.ok
    d, t = _metric_row(report, "val_loss")[1:]
    assert not d <= t
    assert report.max_metric_diff == np.inf
    assert "parity FAILS" in report.render()


def test_parameter_missing_from_the_distributed_run_is_a_failed_row():
    params = _params()
    del params[B]
    report = _compare(params, _history())
    assert not report.ok
    name, shape, d, t = _param_row(report, B)
    assert shape == (3,) and d == np.inf
    assert _param_row(report, W)[2] == 0.0
    text = report.render()
    assert "parity FAILS" in text
    (line,) = [ln for ln in text.splitlines() if B in ln]
    assert line.rstrip().endswith("NO")


def test_parameter_only_in_the_distributed_run_is_a_failed_row():
    params = _params()
    params["lrjob_layer1_weight"] = np.zeros((2, 3))
    report = _compare(params, _history())
    assert not report.ok
    assert _param_row(report, "lrjob_layer1_weight")[2] == np.inf


def test_parameter_shape_mismatch_fails_even_when_it_would_broadcast():
    ref = {W: np.zeros((3, 4)), B: np.zeros(3)}
    params = {W: np.zeros((3, 4)), B: np.zeros(1)}
    report = _compare(params, _history(), ref_params=ref)
    assert not report.ok
    assert _param_row(report, B)[2] == np.inf


@pytest.mark.parametrize("ref_epochs,epochs", [(3, 2), (2, 3), (3, 0)])
def test_different_epoch_counts_fail(ref_epochs, epochs):
    report = _compare(_params(), _history(epochs), ref_history=_history(ref_epochs))
    assert not report.ok
    assert _metric_row(report, "epochs_done")[1] == abs(ref_epochs - epochs)
    assert "parity FAILS" in report.render()


def test_timing_keys_are_ignored():
    assert {"epoch_seconds", "train_seconds", "samples_per_s"} <= TIMING_KEYS
    history = _history()
    for h in history:
        for key in TIMING_KEYS:
            h[key] = 1e9
    report = _compare(_params(), history)
    assert report.ok
    names = {r[0] for r in report.metric_rows}
    assert not names & TIMING_KEYS and "epoch" not in names


@pytest.mark.parametrize("ref_value,value", [(None, 0.7), (0.7, None), ([1.0, 2.0], [1.0, 2.0, 3.0])])
def test_none_against_a_value_or_a_length_mismatch_is_infinite(ref_value, value):
    ref, history = _history(), _history()
    ref[1]["val_auc"], history[1]["val_auc"] = ref_value, value
    report = _compare(_params(), history, ref_history=ref)
    assert _metric_row(report, "val_auc")[1] == np.inf
    assert not report.ok


def test_none_in_both_runs_holds():
    ref, history = _history(), _history()
    ref[0]["val_auc"] = history[0]["val_auc"] = None
    report = _compare(_params(), history, ref_history=ref)
    assert _metric_row(report, "val_auc")[1] == 0.0
    assert report.ok


def test_metric_missing_from_the_distributed_run_fails():
    history = _history()
    del history[2]["val_accuracy"]
    report = _compare(_params(), history)
    assert _metric_row(report, "val_accuracy")[1] == np.inf
    assert not report.ok


def test_render_marks_each_row():
    params, history = _params(), _history()
    params[W][0, 0] += 1.0
    history[0]["val_loss"] += 1e-3
    text = _compare(params, history).render()
    rows = {ln.split()[0]: ln.rstrip() for ln in text.splitlines() if ln.startswith("  ") and ln.split()}
    assert rows[W].endswith("NO") and rows[B].endswith("yes")
    assert rows["val_loss"].endswith("NO") and rows["train_loss"].endswith("yes")
    assert text.splitlines()[-1].startswith("parity FAILS")


# ---------------------------------------------------------------------------- the table a user reads
def test_the_table_as_printed():
    report = ParityReport(3, [("lrjob_layer0_weight", (10, 10), 4.172e-07, 1e-4),
                              ("lrjob_layer0_bias", [1], 1e-4, 1e-4)],
                          [("val_loss", 1.846e-07, 1e-6), ("val_f1", 1e-6, 1e-6), ("val_accuracy", 2e-6, 1e-6)])
    assert report.render() == "\n".join([
        "parity: --workers 0 vs --workers 3",
        "",
        "  parameter                      shape    max |diff|   tolerance  ok",
        "  lrjob_layer0_weight         (10, 10)     4.172e-07       1e-04  yes",
        "  lrjob_layer0_bias               (1,)     1.000e-04       1e-04  yes",
        "",
        "  metric (all epochs)                     max |diff|   tolerance  ok",
        "  val_loss                                 1.846e-07       1e-06  yes",
        "  val_f1                                   1.000e-06       1e-06  yes",
        "  val_accuracy                             2.000e-06       1e-06  NO",
        "",
        "parity FAILS: largest parameter difference 1.000e-04, largest metric difference 2.000e-06",
    ])


def test_the_table_of_a_run_that_holds():
    report = ParityReport(2, [], [])
    assert report.render().splitlines() == [
        "parity: --workers 0 vs --workers 2", "",
        "  parameter                      shape    max |diff|   tolerance  ok", "",
        "  metric (all epochs)                     max |diff|   tolerance  ok", "",
        "parity holds: largest parameter difference 0.000e+00, largest metric difference 0.000e+00"]


def test_empty_parameters_and_metrics_compare_equal():
    ref = {"w": np.zeros((0, 3), np.float32), "b": np.zeros(0, np.float32)}
    history = [{"epoch": 1, "per_class_recall": [], "val_loss": 0.5}]
    report = compare(Run(params=ref, history=history),
                     Run(params={k: v.copy() for k, v in ref.items()}, history=[dict(h) for h in history]), (), 2)
    assert report.ok
    assert [r[2] for r in report.param_rows] == [0.0, 0.0]
    assert dict((r[0], r[1]) for r in report.metric_rows) == {"per_class_recall": 0.0, "val_loss": 0.0}


def test_infinities_compare_without_warnings():
    ref = {"w": np.array([np.inf, 1.0])}
    history = [{"epoch": 1, "val_loss": float("inf")}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = compare(Run(params=ref, history=history),
                         Run(params={"w": np.array([np.inf, 1.0])}, history=[{"epoch": 1, "val_loss": float("inf")}]),
                         (), 2)
    assert not report.ok
    assert report.param_rows[0][2] == float("inf") and report.metric_rows[0][1] == float("inf")
