"""The stateful Horovod worker that ``horovod.ray.RayExecutor`` creates in each actor.

The driver calls ``setup`` once, then ``run_epoch(e)`` per epoch (every rank), and
``get_state`` on rank 0 for checkpoints. Workers return values; they write no files.
While an epoch runs, every rank's heartbeat thread reports where its loop is to the
GCS (``positions.py``), so a hang is blamed on the rank that stopped first.
"""
from __future__ import annotations

import os
import socket
import sys
import threading

__all__ = ["HorovodWorker", "HEARTBEAT_S", "heartbeat_interval", "own_session", "import_mxnet"]

# How often a rank reports its position while an epoch runs (docs/design.md#failures-and-restarts).
HEARTBEAT_S = 0.5


def heartbeat_interval(size: int) -> float:
    """Seconds between a rank's reports in a group of ``size``: ``HEARTBEAT_S`` up to 256 ranks,
    longer beyond, so the GCS gets at most about 512 reports a second from one group."""
    return HEARTBEAT_S * max(1.0, size / 256)


def own_session() -> bool:
    """Move this process into a session of its own, as ``horovodrun`` starts each rank; whether it
    is in one now (docs/design.md#flow).

    With the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) a busy
    CPU is shared between sessions before the processes inside them: Ray starts its workers in the
    session of the command that started Ray, so both ranks, the driver and Ray's daemons shared one
    session's share while each ``horovodrun`` rank had its own. A Ray worker leads its own process
    group, which ``setsid`` refuses: it joins its parent's group (in the same session) first, and
    ``setsid`` makes it the leader of a new group of its own id again."""
    pid = os.getpid()
    try:
        if os.getsid(0) == pid:
            return True
        if os.getpgid(0) == pid:
            os.setpgid(0, os.getpgid(os.getppid()))
        os.setsid()
        return True
    except OSError:
        try:
            if os.getpgid(0) != pid:
                os.setpgid(0, 0)  # back to a group of its own, as the raylet started it
        except OSError:
            pass
        return False


def import_mxnet():
    """``import mxnet`` in a process that only trains, with scikit-learn hidden meanwhile.

    MXNet 1.9 imports scikit-learn when it is installed (``mxnet.model``), only for the base
    class of its legacy ``FeedForward``, which lrjob never uses; scikit-learn brings pandas.
    Measured in a fresh interpreter: MXNet and Horovod's binding imported in 0.87 s and 184 MiB
    of private memory that way, against 1.07 s and 255 MiB. Once MXNet is imported,
    scikit-learn can be imported again as usual."""
    if "mxnet" in sys.modules:
        return sys.modules["mxnet"]
    hide = "sklearn" not in sys.modules
    if hide:
        sys.modules["sklearn"] = None  # `import sklearn` fails with ImportError, which mxnet.model expects
    try:
        import mxnet
    finally:
        if hide and "sklearn" in sys.modules and sys.modules["sklearn"] is None:
            del sys.modules["sklearn"]
    return mxnet


class _Heartbeat:
    """A thread that reports ``rank``'s state ``state()``, its position and its confirmed progress,
    every ``interval`` s until stopped (``positions.report``: a key of the GCS, no actor).

    A thread, not the loop: a rank waiting in an allreduce (MXNet waits with the GIL released)
    keeps reporting, while a stopped or frozen process falls silent: its counter stops."""

    def __init__(self, group: str, rank: int, state, interval: float, seq: int = 0):
        self._group, self._rank, self._state, self._interval = group, rank, state, interval
        self.seq = seq
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lrjob-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.report()
            if self._stop.wait(self._interval):
                self.report()  # the epoch's final position and progress
                return

    def report(self) -> None:
        """Send one report (``positions.report``)."""
        from .positions import report

        self.seq += 1
        try:
            report(self._group, self._rank, self.seq, *self._state())
        except Exception:  # noqa: BLE001 - best effort: Ray may be going away at shutdown
            pass

    def stop(self) -> None:
        """Stop the thread after its last report."""
        self._stop.set()
        self._thread.join(timeout=6.0)


class HorovodWorker:
    """One rank in a Ray actor: holds this rank's ``TrainingLoop`` and returns its results to the
    driver."""

    def __init__(self, cfg: dict, data_box: list, gpus_per_worker: float = 0, record_shards: bool = False,
                 positions_group: str | None = None):
        # data_box holds the Ray ObjectRef of the Dataset (in a list so Ray does not
        # resolve it on the way in); resolved in setup, read-only from the object store.
        self._cfg, self._data_box = cfg, data_box
        self._gpus = gpus_per_worker
        self._record = record_shards
        self._group = positions_group  # where this rank reports its position (positions.py)
        self._seq = 0  # reports so far: the counter goes on growing across epochs
        self.loop = None
        own_session()

    def device_info(self) -> dict:
        """Where this worker runs and which device it would use (no device is touched)."""
        import_mxnet()
        import ray

        import horovod.mxnet as hvd
        if not hvd.is_initialized():
            hvd.init()
        ctx = self._device_name(hvd.local_rank())
        return {"rank": hvd.rank(), "local_rank": hvd.local_rank(), "size": hvd.size(),
                "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                "pid": os.getpid(), "device": ctx, "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def _device_name(self, local_rank: int) -> str:
        # The executor exposes all of a node's job GPUs to each worker: pick by local rank.
        return f"gpu({local_rank})" if self._gpus else "cpu(0)"

    def setup(self) -> dict:
        """Join Horovod, pick the device (``gpu(local_rank)`` or the CPU) and build this rank's loop;
        returns ``device_info()``. A GPU request that MXNet cannot see is a ``ClusterError``."""
        mx = import_mxnet()
        import ray

        from launcher.backends.hvd_comm import HorovodCommunicator
        from launcher.quiet import silence_known_noise
        from lr_core.config import LoopConfig
        from lr_core.errors import ClusterError
        from lr_core.loop import TrainingLoop

        silence_known_noise()
        comm = HorovodCommunicator()
        info = self.device_info()
        if self._gpus:
            n = mx.context.num_gpus() if hasattr(mx.context, "num_gpus") else 0
            if n == 0:
                raise ClusterError(
                    f"rank {comm.rank} on {info['host']}: resources.gpus_per_worker={self._gpus:g} but this "
                    f"MXNet ({mx.__version__}) sees no GPU (CPU build or no CUDA device); install "
                    f"mxnet-cu112 and Horovod built with HOROVOD_GPU_OPERATIONS=NCCL, or set --gpus-per-worker 0")
            ctx = mx.gpu(comm.local_rank)
        else:
            ctx = mx.cpu()
        data = ray.get(self._data_box[0])
        cfg = LoopConfig(**{**self._cfg, "hidden": tuple(self._cfg["hidden"])})
        self.loop = TrainingLoop(cfg, data, comm, ctx, record_shards=self._record)
        return info

    def run_epoch(self, epoch: int, start_step: int = 0, stop_step: int | None = None) -> dict:
        """Train and evaluate epoch ``epoch`` (0-based), or its steps ``[start_step, stop_step)``,
        on this rank; returns its metrics. Every rank reports its position and its confirmed
        progress while the epoch runs (``_Heartbeat``); rank 0's progress is the run's."""
        if self._group is None:
            return self.loop.run_epoch(epoch, None, start_step, stop_step)
        done = [(-1, 0, 1)]  # nothing confirmed in this epoch yet

        # Every rank gets a callback, called with the steps its device has finished (the loop's
        # confirming thread: docs/design.md#progress-and-the-device). It only keeps the value:
        # the heartbeat thread sends it, and the training thread never waits for the network.
        def progress(step, steps):
            done[0] = (epoch, step, steps)
        self.loop.position = (epoch, start_step)  # the first report is of this epoch already
        beat = _Heartbeat(self._group, self.loop.comm.rank, lambda: (self.loop.position, done[0]),
                          heartbeat_interval(self.loop.comm.size), self._seq)
        try:
            return self.loop.run_epoch(epoch, progress, start_step, stop_step)
        finally:
            beat.stop()
            self._seq = beat.seq

    def get_state(self) -> dict:
        """This rank's parameters, optimizer state and epochs done: all a checkpoint holds."""
        return self.loop.get_state()

    def set_state(self, state: dict) -> None:
        """Restore this rank from a checkpoint's state."""
        self.loop.set_state(state)

    def get_params(self) -> dict:
        """This rank's parameters as {name: array}."""
        return self.loop.get_params()

    def shard_log(self) -> dict:
        """This rank's {epoch: training row indices} (filled only with ``record_shards``)."""
        return self.loop.shard_log

    def close(self) -> None:
        """Leave the Horovod ring cleanly so peers do not log connection resets."""
        import horovod.mxnet as hvd

        self.loop = None
        if hvd.is_initialized():
            hvd.shutdown()
