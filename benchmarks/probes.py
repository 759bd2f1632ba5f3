"""Measurements run inside a Horovod worker (``RayHorovodBackend.execute``): they live
with the benchmarks, not on the production actor. Each takes the worker's
``HorovodWorker`` (unused where a probe needs only its process)."""
from __future__ import annotations

import os
import time

__all__ = ["allreduce_seconds", "memory", "mxnet_ready"]


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
