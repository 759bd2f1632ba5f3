"""Learning-rate schedules (docs/design.md#learning-rate-schedules): the rate of a step is a
function of the GLOBAL step alone, so every world size uses the same rate at the same step
(the parity rule) and a resumed run finds its place from the checkpoint's epoch and step.

    from lr_core.schedule import rate
    rate({"kind": "cosine", "min_lr": 0.01, "epochs": 10}, 0.1, step=250, steps_per_epoch=50)

A schedule is a mapping (``train.lr_schedule``, resolved by the launcher's spec):

- ``{kind: step, step_epochs: E, factor: f}``: ``lr * f ** (epoch // E)``, constant
  within an epoch;
- ``{kind: cosine, min_lr: m, epochs: T}``: per step, from ``lr`` down to ``m`` along half
  a cosine over T epochs (``train.epochs`` unless given), ``m`` after them;
- either with ``warmup_epochs: K``: a linear rise to ``lr`` over the first K epochs' steps
  (``lr * (t + 1) / (K * steps_per_epoch)`` at step t); a cosine starts its descent after it.
"""
from __future__ import annotations

import math

__all__ = ["rate", "SCHEDULE_KINDS"]

SCHEDULE_KINDS = ("step", "cosine")


def rate(schedule: dict | None, base: float, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step ``step`` (0-based, counted over all epochs)."""
    if not schedule:
        return float(base)
    s = max(int(steps_per_epoch), 1)
    warmup = int(schedule.get("warmup_epochs") or 0) * s
    if step < warmup:
        return float(base) * (step + 1) / warmup
    if schedule["kind"] == "step":
        return float(base) * float(schedule["factor"]) ** ((step // s) // int(schedule["step_epochs"]))
    lo = float(schedule["min_lr"])
    span = int(schedule["epochs"]) * s - warmup
    done = min(1.0, (step - warmup) / span) if span > 0 else 1.0
    return lo + (float(base) - lo) * 0.5 * (1.0 + math.cos(math.pi * done))
