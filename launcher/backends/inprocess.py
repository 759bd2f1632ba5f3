"""The loop in this process: the single-process reference run (``--workers 0``), or
this process's rank of a ``horovodrun`` job (``hvdrun.py``)."""
from __future__ import annotations

import os
import socket

from lr_core.config import LoopConfig
from lr_core.data import Dataset

from . import Progress

__all__ = ["InProcessBackend"]


class InProcessBackend:
    """World size 1 without a communicator; given one, this process's rank.
    Implements the ``Backend`` protocol (launcher/backends/__init__.py)."""

    workers = 0

    def __init__(self, cfg: LoopConfig, data: Dataset, record_shards: bool = False, comm=None, ctx=None):
        import mxnet as mx

        from lr_core.loop import TrainingLoop

        ctx = ctx or mx.cpu()
        self.loop = TrainingLoop(cfg, data, comm, ctx=ctx, record_shards=record_shards)
        c = self.loop.comm
        self.placement = [{"rank": c.rank, "local_rank": c.local_rank, "size": c.size, "host": socket.gethostname(),
                           "pid": os.getpid(), "device": str(ctx), "node_id": None}]
        self.startup_seconds = 0.0
        self.where = "in-process"

    def run_epoch(self, epoch: int, progress: Progress | None = None, timeout_s: float | None = None,
                  start_step: int = 0, stop_step: int | None = None) -> list[dict]:
        return [self.loop.run_epoch(epoch, progress, start_step, stop_step)]

    def get_state(self) -> dict:
        return self.loop.get_state()

    def set_state(self, state: dict) -> None:
        self.loop.set_state(state)

    def announce_stop(self, stop: bool) -> bool:
        return stop  # the driver calls this loop epoch by epoch

    def all_params(self) -> list[dict]:
        return [self.loop.get_params()]

    def shard_logs(self) -> list[dict]:
        return [self.loop.shard_log]

    def shutdown(self) -> None:
        self.loop = None
