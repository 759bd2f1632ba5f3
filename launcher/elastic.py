"""Elastic restarts (docs/design.md#failures-and-restarts): how many workers the next worker
group gets, from what the Ray cluster can place.

The decision is plain arithmetic on the nodes' resources, tested without a cluster
(tests/test_elastic.py); the driver asks Ray for the nodes (``backends.cluster.node_resources``)
and records each change of world size as a ``Resize``. Changing the world size changes no
result: the parity rule makes every world size train the same model (docs/design.md#parity-rule).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["placeable", "world_size", "Resize"]


def placeable(nodes: list[dict], cpus_per_worker: float, gpus_per_worker: float = 0) -> int:
    """How many workers of ``cpus_per_worker`` CPUs (and ``gpus_per_worker`` GPUs) fit on ``nodes``
    (each a mapping of its resources: ``{"CPU": 2.0, "GPU": 1.0, ...}``), a worker on one node."""
    def fits(have: float, need: float) -> int:
        return math.floor(have / need + 1e-9)  # 3 x 0.1 CPU fit in 0.3
    total = 0
    for node in nodes:
        n = fits(float(node.get("CPU", 0.0)), cpus_per_worker)
        if gpus_per_worker:
            n = min(n, fits(float(node.get("GPU", 0.0)), gpus_per_worker))
        total += max(0, n)
    return total


def world_size(wanted: int, least: int, fit: int) -> int | None:
    """The workers of the next group: ``wanted`` when they ``fit``, else as many as fit down to
    ``least``; None when fewer than ``least`` fit."""
    if fit >= wanted:
        return wanted
    return fit if fit >= least else None


@dataclass(frozen=True)
class Resize:
    """One change of world size: from ``epoch`` (1-based, the first it trains) on, ``new`` workers
    instead of ``old``, and why. summary.json's ``resizes`` holds ``as_dict()`` of each."""

    epoch: int
    old: int
    new: int
    why: str

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "from": self.old, "to": self.new, "why": self.why}

    def line(self) -> str:
        """One line for the run's output."""
        return f"lrjob: world size {self.old} -> {self.new} from epoch {self.epoch}: {self.why}"
