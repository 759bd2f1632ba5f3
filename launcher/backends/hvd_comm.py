"""The Horovod communicator: lr_core's ``Communicator`` over Gloo (CPU) or NCCL (GPU)."""
from __future__ import annotations

import os

import numpy as np
import mxnet as mx

__all__ = ["HorovodCommunicator", "GLOO_LOOP_NICE", "gloo_loop_nice", "lower_loop_threads"]

# The nice value of Gloo's event-loop threads (docs/design.md#the-ranks-threads); 0 leaves them as
# they start.
GLOO_LOOP_NICE = "LRJOB_GLOO_LOOP_NICE"
DEFAULT_GLOO_LOOP_NICE = 19


def gloo_loop_nice() -> int:
    """``LRJOB_GLOO_LOOP_NICE`` (0 to 19), or 19 when it is not set."""
    raw = os.environ.get(GLOO_LOOP_NICE, "").strip()
    if not raw:
        return DEFAULT_GLOO_LOOP_NICE
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise ValueError(f"{GLOO_LOOP_NICE}={raw!r}: give a whole number from 0 (leave Gloo's threads as they "
                         f"start) to 19 (the default)")
    return value


def _threads() -> set[int]:
    """This process's thread ids (none where there is no /proc)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def lower_loop_threads(new: set[int], nice: int, samples: int = 200) -> list[int]:
    """Give ``nice`` to the threads of ``new`` that wait in ``epoll_wait``: the event loops that
    ``hvd.init`` started for Gloo's TCP pairs (its background thread sleeps or waits on a lock, never
    in epoll). Each thread's kernel wait (``/proc/self/task/TID/wchan``) is read ``samples`` times,
    as a busy loop is not always in its wait. Returns the threads changed."""
    if nice <= 0:
        return []
    loops: set[int] = set()
    for _ in range(samples):
        for tid in new - loops:
            try:
                with open(f"/proc/self/task/{tid}/wchan") as f:
                    if f.read() == "do_epoll_wait":
                        loops.add(tid)
            except OSError:
                continue
    changed = []
    for tid in sorted(loops):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            changed.append(tid)
        except OSError:
            continue
    return changed


class HorovodCommunicator:
    """Wraps ``horovod.mxnet`` after ``hvd.init()``.
    Implements the ``Communicator`` protocol (lr_core/comm.py)."""

    def __init__(self):
        import horovod.mxnet as hvd

        nice = gloo_loop_nice()
        before = _threads()
        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        # Gloo's event loop spins while Horovod's background thread holds a pair's lock, and takes
        # the CPU from it: on a rank with fewer cores than busy threads, a nice loop lets the
        # holder run (docs/design.md#the-ranks-threads).
        self.lowered = lower_loop_threads(_threads() - before, nice) if before else []

    def allreduce_sum(self, array: np.ndarray, name: str) -> np.ndarray:
        if self.size == 1:
            return np.array(array, copy=True)
        t = mx.nd.array(np.asarray(array, dtype=np.float64), dtype="float64")
        return self.hvd.allreduce(t, average=False, name=name).asnumpy()

    def broadcast_parameters(self, params) -> None:
        self.hvd.broadcast_parameters(params, root_rank=0)

    def make_trainer(self, params, optimizer, optimizer_params):
        # num_groups=1: one grouped allreduce per step for all gradients.
        return self.hvd.DistributedTrainer(params, optimizer, optimizer_params, num_groups=1)

    def step(self, trainer, global_batch_size):
        # DistributedTrainer sums the gradients over ranks and folds 1/size into the
        # rescale factor (in the framework on CPU/Gloo, in the backend with NCCL >= 2.10).
        # Passing B/size makes that rescale exactly 1/B: gradient = sum over ranks of the
        # summed per-sample gradients / global batch size, the single-process update.
        # The learning rate is NOT scaled by the world size (that would break parity).
        trainer.step(global_batch_size / self.size)

    def barrier(self) -> None:
        """Wait until every rank gets here (an allreduce of one zero)."""
        self.allreduce_sum(np.zeros(1), name="barrier")
