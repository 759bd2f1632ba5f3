"""The Horovod communicator: lr_core's ``Communicator`` over Gloo (CPU) or NCCL (GPU)."""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
import mxnet as mx

from lr_core.comm import fused_step

__all__ = ["HorovodCommunicator", "find_loop_threads", "init_lowering_loops", "lower_threads"]

# The system calls an event loop waits in, by machine: epoll_wait, epoll_pwait, epoll_pwait2
# (x86-64: arch/x86/entry/syscalls/syscall_64.tbl; arm64 and riscv64: the generic table). On
# other machines no loop is found, and the rank says so.
EPOLL_WAITS = {"x86_64": {232, 281, 441}, "aarch64": {22, 441}, "riscv64": {22, 441}}


def _threads() -> set[int]:
    """This process's thread ids (none where there is no /proc)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _epoll_fds() -> set[int]:
    """This process's open epoll descriptors."""
    fds = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return fds
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]":
                fds.add(int(name))
        except (OSError, ValueError):
            continue
    return fds


def _epoll_waited_on(tid: int, waits: set[int]) -> int | None:
    """The epoll descriptor thread ``tid`` waits on now (``/proc/self/task/TID/syscall``: the call's
    number, then its arguments), or None."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            parts = f.read().split()
        if len(parts) > 1 and int(parts[0]) in waits:
            return int(parts[1], 16)
    except (OSError, ValueError):  # gone, or "running" / "-1 ..." (not in a system call)
        pass
    return None


def find_loop_threads(new_threads: set[int], new_epolls: set[int], timeout: float = 2.0) -> list[int]:
    """The threads of ``new_threads`` seen waiting in an epoll wait on one of ``new_epolls``: the
    event loops ``hvd.init`` started for Gloo, each with the epoll descriptor it made. Each thread's
    system call is read until every descriptor has its thread or ``timeout`` seconds pass (a busy
    loop is not always in its wait)."""
    waits = EPOLL_WAITS.get(platform.machine(), set())
    found: dict[int, int] = {}
    left = set(new_epolls)
    deadline = time.monotonic() + timeout
    while left and new_threads - set(found):
        for tid in sorted(new_threads - set(found)):
            fd = _epoll_waited_on(tid, waits)
            if fd in left:
                found[tid] = fd
                left.discard(fd)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.0005)
    return sorted(found)


def _nice(tid: int) -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return 20  # gone: nothing to lower


def lower_threads(tids: list[int], nice: int) -> list[int]:
    """Give each thread of ``tids`` the nice value ``nice`` where its own is lower (a thread already
    nicer keeps its own: this never raises a priority); returns the threads changed."""
    changed = []
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed.append(tid)
        except OSError:
            continue
    return changed


def init_lowering_loops(hvd, nice: int) -> tuple[list[int], list[int], bool]:
    """``hvd.init()``, then give the event loops it started for Gloo nice ``nice``: Gloo's loops spin
    while Horovod's background thread holds a pair's lock, and take the CPU it needs to let go, so
    with fewer cores than busy threads nice loops let it run (docs/design.md#the-ranks-threads).
    They are the threads ``hvd.init`` started that wait on an epoll descriptor ``hvd.init`` made;
    nothing is looked for with ``nice`` 0, without Gloo (MPI's own threads) or when Horovod was
    initialized before. Returns the loops found, those lowered, and whether (on Linux) any was
    missed: fewer found than new descriptors, or one left below ``nice``."""
    fresh = not hvd.is_initialized()
    threads, epolls = _threads(), _epoll_fds()
    hvd.init()
    if not (nice and fresh and hvd.gloo_enabled()):
        return [], [], False
    new_epolls = _epoll_fds() - epolls
    loops = find_loop_threads(_threads() - threads, new_epolls) if threads else []
    lowered = lower_threads(loops, nice)
    kept = [t for t in loops if t not in lowered and _nice(t) < nice]
    return loops, lowered, bool(threads) and (not loops or len(loops) < len(new_epolls) or bool(kept))


class HorovodCommunicator:
    """Wraps ``horovod.mxnet`` after ``hvd.init()``.
    Implements the ``Communicator`` protocol (lr_core/comm.py)."""

    def __init__(self):
        import horovod.mxnet as hvd

        from .cluster import gloo_loop_nice

        nice = gloo_loop_nice()
        self.loops, self.lowered, missed = init_lowering_loops(hvd, nice)
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        if missed:
            print(f"lrjob: warning: rank {self.rank}: {len(self.loops)} of Gloo's event-loop threads found "
                  f"in /proc/self/task and {len(self.lowered)} given nice {nice}; the others keep their "
                  f"priority", file=sys.stderr, flush=True)

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
        fused_step(trainer, global_batch_size / self.size)

    def barrier(self) -> None:
        """Wait until every rank gets here (an allreduce of one zero)."""
        self.allreduce_sum(np.zeros(1), name="barrier")
