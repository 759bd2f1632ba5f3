"""``lrjob parity``'s verdict and table (``launcher.report.parity``) beyond
tests/test_parity_compare.py: the exact table a user reads (as in the README), rows at
exactly the tolerance, empty parameters and metrics, and no NumPy warnings on the way."""
import warnings
from types import SimpleNamespace as Run

import numpy as np

from launcher.report.parity import ParityReport, compare


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
