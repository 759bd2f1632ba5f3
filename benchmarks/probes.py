"""Measurements run inside a Horovod worker (``RayHorovodBackend.execute``): they live
with the benchmarks, not on the production actor. Each takes the worker's
``HorovodWorker`` (unused where a probe needs only its process)."""
from __future__ import annotations

import os
import time

__all__ = ["allreduce_seconds", "local_step_seconds", "memory", "mxnet_ready"]


def allreduce_seconds(worker, size: int, iters: int) -> list[float]:
    """Seconds per allreduce of ``size`` float32 values."""
    import mxnet as mx

    import horovod.mxnet as hvd
    t = mx.nd.ones((size,), dtype="float32")
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        # a fixed name, as DistributedTrainer uses: Horovod's response cache applies
        hvd.allreduce(t, average=False, name=f"bench.{size}").wait_to_read()
        out.append(time.perf_counter() - t0)
    return out


def local_step_seconds(worker, batch_size: int, reps: int) -> list[float]:
    """Seconds per step of ``reps`` training epochs of the worker's model on the worker's data and
    device, at ``batch_size`` rows a step, with no communication (a single-process loop in this
    rank's process). Run on every worker at once, it is a step's compute while the ranks share the
    machine's cores, as they do in training."""
    from lr_core.comm import SingleProcessCommunicator
    from lr_core.config import LoopConfig
    from lr_core.loop import TrainingLoop

    base = worker.loop
    cfg = LoopConfig(**{**base.cfg.to_dict(), "hidden": tuple(base.cfg.hidden), "batch_size": batch_size})
    loop = TrainingLoop(cfg, base.data, SingleProcessCommunicator(), base.ctx)
    out = []
    for epoch in range(reps):
        m = loop.train_epoch(epoch)
        out.append(m["train_seconds"] / m["steps"])
    return out


def memory(worker=None) -> dict:
    """Peak RSS and current PSS of this process in bytes."""
    import resource

    info = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "pid": os.getpid()}
    try:
        import psutil
        info["pss"] = psutil.Process().memory_full_info().pss
    except Exception:  # noqa: BLE001 - PSS needs /proc/PID/smaps_rollup
        info["pss"] = None
    return info


def mxnet_ready(worker=None) -> int:
    """What any MXNet job's rank does before its first step: import MXNet and Horovod's MXNet
    binding and join Horovod (``hvd.init``: the Gloo rendezvous); returns the rank."""
    import mxnet  # noqa: F401

    import horovod.mxnet as hvd
    hvd.init()
    return hvd.rank()
