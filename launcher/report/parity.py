"""``lrjob parity``: the distributed run against the single-process run of the same job.

docs/design.md#parity-rule: parameters within 1e-5 (linear models) or 1e-4 (hidden
layers); every reported metric within 1e-6.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["ParityReport", "Outcome", "compare", "param_tolerance", "METRIC_TOLERANCE", "TIMING_KEYS"]

METRIC_TOLERANCE = 1e-6
TIMING_KEYS = {"epoch_seconds", "train_seconds", "samples_per_s", "wall_seconds", "steps"}


def param_tolerance(hidden) -> float:
    """The parameter tolerance of docs/design.md#parity-rule: 1e-5 without hidden layers, else 1e-4."""
    return 1e-4 if len(hidden) else 1e-5


@dataclass
class ParityReport:
    """The verdict of ``compare``: per parameter and per metric, the largest difference and its
    tolerance."""

    workers: int
    param_rows: list[tuple[str, tuple, float, float]]    # name, shape, max |diff|, tolerance
    metric_rows: list[tuple[str, float, float]]           # name, max |diff| over epochs, tolerance

    @property
    def ok(self) -> bool:
        """True when every parameter and metric difference is within its tolerance."""
        return all(d <= t for _, _, d, t in self.param_rows) and all(d <= t for _, d, t in self.metric_rows)

    @property
    def max_param_diff(self) -> float:
        """The largest parameter difference (0.0 without parameters)."""
        return max((d for _, _, d, _ in self.param_rows), default=0.0)

    @property
    def max_metric_diff(self) -> float:
        """The largest metric difference over all epochs (0.0 without metrics)."""
        return max((d for _, d, _ in self.metric_rows), default=0.0)

    def render(self) -> str:
        """The report as text: the parameter table, the metric table and the verdict line."""
        lines = [f"parity: --workers 0 vs --workers {self.workers}", "",
                 f"  {'parameter':<24}{'shape':>12}{'max |diff|':>14}{'tolerance':>12}  ok"]
        for name, shape, d, t in self.param_rows:
            lines.append(f"  {name:<24}{str(tuple(shape)):>12}{d:>14.3e}{t:>12.0e}  {'yes' if d <= t else 'NO'}")
        lines += ["", f"  {'metric (all epochs)':<36}{'max |diff|':>14}{'tolerance':>12}  ok"]
        for name, d, t in self.metric_rows:
            lines.append(f"  {name:<36}{d:>14.3e}{t:>12.0e}  {'yes' if d <= t else 'NO'}")
        lines += ["", f"parity {'holds' if self.ok else 'FAILS'}: largest parameter difference "
                      f"{self.max_param_diff:.3e}, largest metric difference {self.max_metric_diff:.3e}"]
        return "\n".join(lines)


def _flat(v):
    if v is None:
        return None
    return np.asarray(v, dtype=np.float64).ravel()


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|; inf when the shapes differ or a difference is NaN (NaN would
    otherwise compare as neither above nor below a tolerance)."""
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    with np.errstate(invalid="ignore"):  # inf - inf
        d = float(np.max(np.abs(a - b)))
    return float("inf") if np.isnan(d) else d


class Outcome(NamedTuple):
    """What a run leaves for the comparison (a ``RunResult`` fits too)."""

    params: dict
    history: list[dict]


def compare(reference, run, hidden, workers: int) -> ParityReport:
    """``run`` (N workers) against ``reference`` (``--workers 0``): each has ``params``
    and ``history``. The verdict applies docs/design.md#parity-rule."""
    ref_params, ref_history, params, history = reference.params, reference.history, run.params, run.history
    tol = param_tolerance(hidden)
    prow = []
    # A parameter missing from either run is a failed row, not a crash.
    for name in sorted(set(ref_params) | set(params)):
        if name not in ref_params or name not in params:
            shape = np.shape(ref_params[name] if name in ref_params else params[name])
            prow.append((name, shape, float("inf"), tol))
            continue
        a, b = np.asarray(ref_params[name], np.float64), np.asarray(params[name], np.float64)
        prow.append((name, a.shape, _max_abs_diff(a, b), tol))
    mrow: dict[str, float] = {}
    if len(ref_history) != len(history):
        mrow["epochs_done"] = float(abs(len(ref_history) - len(history)))
    for ra, rb in zip(ref_history, history):
        for key in ra:
            if key in TIMING_KEYS or key == "epoch":
                continue
            a, b = _flat(ra.get(key)), _flat(rb.get(key))
            if a is None and b is None:
                d = 0.0
            elif a is None or b is None:
                d = float("inf")
            else:
                d = _max_abs_diff(a, b)
            mrow[key] = max(mrow.get(key, 0.0), d)
    return ParityReport(workers, prow, [(k, v, METRIC_TOLERANCE) for k, v in mrow.items()])
