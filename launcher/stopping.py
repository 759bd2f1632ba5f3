"""Early stopping and the best epoch (docs/design.md#early-stopping-and-the-best-model): the
driver's decisions, as pure functions of the run's history.

The history holds the metrics every rank computed from sums over all ranks (the parity
rule), so the decisions are the same for every world size; the driver takes them, never a
rank. They read nothing but the history, which every checkpoint carries: a resumed run
decides as the uninterrupted one would.

    watch = Watch("val_loss", "min", min_delta=1e-3)
    best = watch.best_epoch(history)           # 1-based, or None
    reason = stop_reason(history, watch, patience=3)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Watch", "METRICS", "MODES", "metric_mode", "stop_reason", "undefined_message", "watches"]

# The metrics of an epoch that a decision may watch, by model kind (lr_core/loop.py names them).
METRICS = {
    "binary": ("val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_auc", "train_loss"),
    "softmax": ("val_loss", "val_accuracy", "val_macro_f1", "train_loss"),
}
MODES = ("min", "max")


def metric_mode(metric: str) -> str:
    """The direction in which ``metric`` improves: ``min`` for a loss, ``max`` otherwise."""
    return "min" if metric.endswith("loss") else "max"


@dataclass(frozen=True)
class Watch:
    """A metric watched for improvement: an epoch improves on the best so far when its value
    is better by more than ``min_delta`` (the first epoch with a value always does)."""

    metric: str
    mode: str = "min"
    min_delta: float = 0.0

    def improving(self, history: list[dict]) -> list[int]:
        """The 1-based epochs that improved on every epoch before them."""
        out, best = [], None
        for i, h in enumerate(history):
            v = h.get(self.metric)
            if v is None or not math.isfinite(v):
                continue  # an undefined value (an AUC on one class) is no improvement
            if best is None or (v < best - self.min_delta if self.mode == "min" else v > best + self.min_delta):
                out.append(i + 1)
                best = v
        return out

    def best_epoch(self, history: list[dict]) -> int | None:
        """The last improving epoch (1-based): the best one; None before any value."""
        found = self.improving(history)
        return found[-1] if found else None


def stop_reason(history: list[dict], watch: Watch, patience: int) -> str | None:
    """Why training stops after ``history`` (``patience`` epochs in a row without
    improvement since the best epoch), or None to go on. A metric that has had no value
    in any epoch (``val_auc`` of a one-class validation set) never stops a run: nothing
    was measured, so nothing failed to improve (the driver warns about it instead)."""
    best = watch.best_epoch(history)
    if best is None:
        return None
    waited = len(history) - best
    if waited < patience:
        return None
    by = f" by more than {watch.min_delta:g}" if watch.min_delta else ""
    since = f"best {history[best - 1][watch.metric]:.6g} at epoch {best}"
    return f"early stopping: {watch.metric} did not improve{by} for {waited} epoch{'s' * (waited != 1)} ({since})"


def undefined_message(metric: str, epochs: int, what: str) -> str:
    """The warning of a watched metric that had no value in any of ``epochs`` epochs."""
    return (f"{metric} had no value in any of the {epochs} epoch{'s' * (epochs != 1)} (an AUC is undefined when "
            f"the validation rows hold one class): {what}; watch another metric, e.g. val_loss")


def watches(spec) -> tuple[tuple[Watch, int] | None, Watch | None]:
    """The job's early-stopping watch with its patience, and its keep-best watch (the same
    one when ``checkpoint.keep_best`` names the early-stopping metric); None when off."""
    es, keep = spec.train.early_stopping, spec.checkpoint.keep_best
    stop = (Watch(es["metric"], es["mode"], es["min_delta"]), int(es["patience"])) if es else None
    if not keep:
        return stop, None
    if stop is not None and stop[0].metric == keep:
        return stop, stop[0]
    return stop, Watch(keep, metric_mode(keep))
