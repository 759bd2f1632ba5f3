"""Where the epochs run (docs/design.md#flow). Every backend keeps the contract below;
the driver (``launcher/driver.py``) talks to nothing else.

- ``inprocess.py``: the loop in this process (``--workers 0``, the reference run).
- ``ray_horovod.py`` with ``worker.py`` (the actor) and ``cluster.py`` (the Ray session):
  N Horovod workers through ``horovod.ray.RayExecutor``.
- ``hvdrun.py``: one rank under ``horovodrun``/``mpirun`` (the MPIJob path).
- ``hvd_comm.py``: lr_core's communicator over Horovod (Gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lr_core.data import Dataset

    from ..spec import JobSpec

__all__ = ["Backend", "Progress", "make_backend", "InProcessBackend", "RayHorovodBackend"]

Progress = Callable[[int, int], None]


@runtime_checkable
class Backend(Protocol):
    """A group of workers that trains one job, an epoch per call."""

    workers: int                # 0 in-process, else the world size
    placement: list[dict]       # per rank: rank, local_rank, host, pid, device, node_id
    startup_seconds: float
    where: str                  # one line for people: "2 Horovod workers on 1 node"

    def run_epoch(self, epoch: int, progress: Progress | None = None, timeout_s: float | None = None,
                  start_step: int = 0, stop_step: int | None = None) -> list[dict]:
        """Train and evaluate epoch ``epoch`` (0-based) on every rank; the metrics per rank.
        With ``start_step``/``stop_step``, only those steps (a segment between mid-epoch
        checkpoints; ``{"partial": True, ...}`` per rank until the epoch's last step).
        Raises ``WorkerFailure`` naming the root-cause rank when a worker dies or hangs."""

    def get_state(self) -> dict:
        """Rank 0's parameters, optimizer state and epochs done: all a checkpoint holds."""

    def set_state(self, state: dict) -> None:
        """Restore every rank from a checkpoint's state."""

    def announce_stop(self, stop: bool) -> bool:
        """Before each epoch with ``train.early_stopping``: the driver's decision whether
        training ends here, told to ranks that run their own epoch loop (under horovodrun);
        returns the decision. Ranks the driver calls epoch by epoch need no word."""

    def all_params(self) -> list[dict]:
        """Every rank's parameters, in rank order."""

    def shard_logs(self) -> list[dict]:
        """Every rank's {epoch: training row indices} (with ``record_shards``)."""

    def shutdown(self) -> None:
        """Stop the workers; safe to call twice."""


def make_backend(spec: "JobSpec", data: "Dataset", record_shards: bool = False,
                 workers: int | None = None) -> Backend:
    """The backend that ``spec.resources`` asks for: in-process for 0 workers, else Ray + Horovod
    with ``workers`` workers (default ``resources.workers``; fewer after an elastic restart)."""
    if spec.workers == 0:
        from .inprocess import InProcessBackend

        return InProcessBackend(spec.loop_config(), data, record_shards=record_shards)
    from dataclasses import replace

    from .ray_horovod import RayHorovodBackend

    resources = spec.resources if workers is None else replace(spec.resources, workers=workers)
    return RayHorovodBackend(spec.loop_config(), data, resources, record_shards=record_shards)


def __getattr__(name):
    # Imported on first use: the in-process run never loads Ray or Horovod.
    if name == "InProcessBackend":
        from .inprocess import InProcessBackend
        return InProcessBackend
    if name == "RayHorovodBackend":
        from .ray_horovod import RayHorovodBackend
        return RayHorovodBackend
    raise AttributeError(name)
