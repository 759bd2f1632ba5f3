"""N stateful Horovod workers in the current Ray session (``horovod.ray.RayExecutor``):
the backend of ``--workers N`` (docs/design.md#flow).

Failures: a worker that dies (actor gone), an error in Horovod, or a group that does
not finish an epoch within the timeout becomes a ``WorkerFailure`` naming the root-cause
rank and node; the driver decides whether to restart. Errors of the job itself
(``LrjobError``, e.g. a diverging loss) pass through unchanged: restarting cannot help.
"""
from __future__ import annotations

import math
import os
import socket
import time

from lr_core.config import LoopConfig
from lr_core.data import Dataset
from lr_core.errors import LrjobError, WorkerFailure, counted

from . import Progress
from .positions import Positions
from .worker import HEARTBEAT_S, heartbeat_interval

__all__ = ["RayHorovodBackend", "probe_devices", "stalled_rank"]


# A rank not heard from for this many report intervals is silent (stopped, frozen), not merely waiting.
SILENT_BEATS = 5
SILENT_S = SILENT_BEATS * HEARTBEAT_S


def stalled_rank(busy: list[int], positions: dict, silent_s: float = SILENT_S) -> int:
    """Of the ``busy`` ranks, the one that stopped first (docs/design.md#failures-and-restarts).

    ``positions``: {rank: (epoch, step, seconds since its last report)} (``Positions``). A silent
    rank (no report for ``silent_s``: stopped, frozen) comes before the live ones, the longest
    silent first (a rank that never reported, first of all); a live rank waiting in a collective
    keeps reporting. Among live ranks the lowest (epoch, step) stopped first: the others went on
    to the next collective and wait there for it. Then the lowest rank."""
    def key(rank: int):
        if rank not in positions:
            return (0, -math.inf, 0, 0, rank)
        epoch, step, age = positions[rank]
        if age > silent_s:
            return (0, -age, 0, 0, rank)
        return (1, 0, epoch, step, rank)
    return min(busy, key=key)


def _describe_stall(rank: int, positions: dict, steps: int | None, silent_s: float) -> str:
    """How ``stalled_rank`` told the rank apart, for the error: its silence, or its position."""
    if rank not in positions:
        return "it never reported its position"
    epoch, step, age = positions[rank]
    where = f"step {step + 1}" + (f" of {steps}" if steps else "") + f" of epoch {epoch + 1}"
    if age > silent_s:
        return f"silent for {age:.0f} s, last heard at {where}"
    return f"still reporting, at {where}: the lowest position of the busy ranks"


class RayHorovodBackend:
    """N stateful Horovod workers (``horovod.ray.RayExecutor``) in the current Ray session.
    Implements the ``Backend`` protocol (launcher/backends/__init__.py)."""

    def __init__(self, cfg: LoopConfig, data: Dataset, resources, record_shards: bool = False,
                 start_timeout_s: int = 60):
        """``resources``: ``workers``, ``cpus_per_worker``, ``gpus_per_worker`` (a ``ResourcesSpec``)."""
        import ray
        from horovod.ray import RayExecutor

        from ..quiet import silence_known_noise
        from .cluster import check_resources, worker_env
        from .worker import HorovodWorker

        silence_known_noise()
        workers, cpus_per_worker, gpus_per_worker = (resources.workers, resources.cpus_per_worker,
                                                     resources.gpus_per_worker)
        self.workers = workers
        self.placement: list[dict] = []
        t0 = time.perf_counter()
        self.resources = check_resources(workers, cpus_per_worker, gpus_per_worker)
        self.executor = None
        self._positions_of = Positions(workers)
        # the calls of the last ``execute``: if one still runs at shutdown (a hang, a peer that
        # never answered, Ctrl-C), the workers' queues are blocked and they are not asked to leave
        self._calls: list = []
        self._data_ref = ray.put(data)
        try:
            settings = RayExecutor.create_settings(timeout_s=start_timeout_s,
                                                   placement_group_timeout_s=start_timeout_s)
            executor = RayExecutor(settings, num_workers=workers, cpus_per_worker=cpus_per_worker,
                                   use_gpu=bool(gpus_per_worker), gpus_per_worker=gpus_per_worker or None)
            self.executor = executor
            executor.start(executable_cls=HorovodWorker,
                           executable_kwargs={"cfg": cfg.to_dict(), "data_box": [self._data_ref],
                                              "gpus_per_worker": gpus_per_worker, "record_shards": record_shards,
                                              "positions_group": self._positions_of.group},
                           extra_env_vars=worker_env(cpus_per_worker))
            self.placement = self.execute(lambda w: w.setup(), "start-up", timeout_s=max(120, start_timeout_s))
        except TimeoutError:
            # horovod.ray's placement group did not come up: the resources were counted, yet they
            # are not free (another job holds them, or a lost node is not yet known to be lost).
            self.shutdown()
            raise WorkerFailure(f"the Ray cluster could not place {counted(workers, 'worker')} of {cpus_per_worker:g} CPU"
                                f"{f' and {gpus_per_worker:g} GPU' if gpus_per_worker else ''} within "
                                f"{start_timeout_s} s (it has {self.resources['CPU']:g} CPUs on "
                                f"{self.resources['nodes']} node(s), some of them in use)") from None
        except BaseException:
            # A half-started worker group is torn down before re-raising.
            self.shutdown()
            raise
        self.startup_seconds = time.perf_counter() - t0
        nodes = len({p["node_id"] for p in self.placement})
        self.where = f"{counted(workers, 'Horovod worker')} on {counted(nodes, 'node')}"

    def _actors(self):
        adapter = getattr(self.executor, "adapter", None)
        return list(getattr(adapter, "workers", []) or [])

    def pids(self) -> list[int]:
        """The process id of every worker, in rank order."""
        return [p["pid"] for p in self.placement]

    def _where(self, rank: int) -> str:
        if rank < len(self.placement):
            p = self.placement[rank]
            return f"{p['host']} (node {str(p['node_id'])[:8]}, pid {p['pid']})"
        return "an unknown node"

    def execute(self, fn, what: str, timeout_s: float | None = None, progress: Progress | None = None) -> list:
        """Run ``fn`` on every worker and gather the results in rank order.

        ``timeout_s`` bounds the time without progress: each new step rank 0 reports
        (``Positions.progress``, read every poll) starts it again, so a slow but healthy epoch
        (a large data set read from disk) is not taken for a hang; a stopped or hung rank
        stops rank 0's progress (its peers wait in the allreduce).

        The first failure is attributed: a dead actor is the root cause over ranks that
        merely lost their Horovod peer, so after the first error the others get a short
        grace period to report."""
        import ray

        refs = [actor.execute.remote(fn) for actor in self._actors()]
        self._calls = refs
        rank_of = {ref: r for r, ref in enumerate(refs)}
        pending, results, errors = list(refs), {}, {}
        deadline = time.monotonic() + timeout_s if timeout_s else None
        grace_until = None
        board = self._positions_of
        posted = board.progress  # rank 0's last confirmed (epoch, step, steps): a change is progress
        while pending:
            now = time.monotonic()
            if grace_until is not None and now >= grace_until:
                break
            if deadline is not None and now >= deadline and not errors:
                ranks = sorted(rank_of[r] for r in pending)
                board.poll()
                positions, silent_s = board.positions(), SILENT_BEATS * heartbeat_interval(len(refs))
                rank = stalled_rank(ranks, positions, silent_s)
                others = [r for r in ranks if r != rank]
                steps = posted[2] if posted and posted[0] >= 0 else None
                busy = f": {others[:8]}{'...' if len(others) > 8 else ''}" if others else ""
                raise WorkerFailure(
                    f"rank {rank} on {self._where(rank)} made no progress in {what} for {timeout_s:.0f} s "
                    f"(hung: {_describe_stall(rank, positions, steps, silent_s)}; {len(others)} other rank(s) still "
                    f"busy{busy})", rank=rank, node=self._where(rank))
            wait = 0.25 if progress else 1.0
            done, pending = ray.wait(pending, num_returns=1, timeout=wait)
            if progress is not None or deadline is not None:
                board.poll()  # one request to the GCS: every rank's report (positions.py)
                value = board.progress
                if value != posted:
                    posted = value
                    if deadline is not None:
                        deadline = time.monotonic() + timeout_s
                    if progress is not None and value[0] >= 0 and value[1]:
                        progress(value[1], value[2])
            for ref in done:
                rank = rank_of[ref]
                try:
                    results[rank] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - classified below
                    errors[rank] = e
                    if grace_until is None:
                        grace_until = time.monotonic() + 5.0
        if errors:
            raise self._classify(errors, what, still_running=sorted(rank_of[r] for r in pending))
        return [results[r] for r in range(len(refs))]

    def _classify(self, errors: dict, what: str, still_running: list[int] | None = None) -> Exception:
        import ray

        for rank, e in sorted(errors.items()):
            cause = getattr(e, "cause", None)
            if isinstance(cause, LrjobError):
                return cause
        dead = [r for r, e in sorted(errors.items())
                if isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError))]
        if not dead and still_running:
            # Peers lost their Horovod partner while these ranks never answered: the
            # silent ranks (hung, stopped) are the likely root cause, not the ones that raised;
            # of them, the one that stopped first.
            rank = stalled_rank(still_running, self._positions(),
                                SILENT_BEATS * heartbeat_interval(len(self.placement) or 1))
            return WorkerFailure(f"rank {rank} on {self._where(rank)} stopped responding during {what} "
                                 f"(hung?; ranks {sorted(errors)} lost their Horovod peer)",
                                 rank=rank, node=self._where(rank))
        rank = dead[0] if dead else min(errors)
        e = errors[rank]
        if dead:
            why = "the worker process died"
        else:
            lines = [x for x in str(e).strip().splitlines() if x.strip()]
            why = lines[-1][:300] if lines else type(e).__name__
        return WorkerFailure(f"rank {rank} on {self._where(rank)} failed during {what}: {why}",
                             rank=rank, node=self._where(rank))

    def _positions(self) -> dict:
        """Every rank's last reported position, read now (``Positions.positions``)."""
        self._positions_of.poll()
        return self._positions_of.positions()

    def run_epoch(self, epoch: int, progress: Progress | None = None, timeout_s: float | None = None,
                  start_step: int = 0, stop_step: int | None = None) -> list[dict]:
        return self.execute(lambda w: w.run_epoch(epoch, start_step, stop_step), f"epoch {epoch + 1}", timeout_s,
                            progress)

    def get_state(self) -> dict:
        return self._call_one(lambda w: w.get_state(), "checkpoint read-back")

    def _call_one(self, fn, what: str):
        import ray

        try:
            return ray.get(self._actors()[0].execute.remote(fn))
        except Exception as e:  # noqa: BLE001
            raise self._classify({0: e}, what) from None

    def set_state(self, state: dict) -> None:
        import ray

        ref = ray.put(state)
        self.execute(lambda w: w.set_state(ray.get(ref)), "restore", timeout_s=300)

    def announce_stop(self, stop: bool) -> bool:
        return stop  # the driver calls the workers epoch by epoch

    def all_params(self) -> list[dict]:
        return self.execute(lambda w: w.get_params(), "parameter read-back", timeout_s=300)

    def shard_logs(self) -> list[dict]:
        return self.execute(lambda w: w.shard_log(), "shard read-back", timeout_s=300)

    def shutdown(self) -> None:
        if self.executor is not None:
            _stop_executor(self.executor, leave=not _still_running(getattr(self, "_calls", [])))
        self.executor = None
        board = getattr(self, "_positions_of", None)
        if board is not None:
            board.clear()


def _still_running(refs: list) -> bool:
    """Whether any of the calls ``refs`` has not returned yet."""
    import ray

    if not refs:
        return False
    try:
        _, running = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    except Exception:  # noqa: BLE001 - unknown: ask the workers to leave, as before
        return False
    return bool(running)


def _stop_executor(executor, leave: bool = True) -> None:
    """Leave Horovod on every rank (with ``leave``), kill the actors, remove the placement group.

    Without ``leave`` (a call still runs on some rank: hung, waiting for a lost peer, or
    interrupted by Ctrl-C) the actors are killed at once: their queue is blocked, and a
    request to leave would only wait out its 10 s (docs/design.md#failures-and-restarts)."""
    import ray

    actors = list(getattr(getattr(executor, "adapter", None), "workers", []) or [])
    if leave:
        try:
            ray.wait([a.execute.remote(lambda w: w.close() if w is not None else None) for a in actors],
                     num_returns=len(actors), timeout=10)
        except Exception:  # noqa: BLE001 - dead actors cannot close
            pass
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead is fine
            pass
    try:
        # StaticAdapter.shutdown leaves the rendezvous HTTP server of horovod.ray's
        # Coordinator running in the driver: stop it (one thread and port per start).
        executor.adapter.coordinator.rendezvous.stop()
    except Exception:  # noqa: BLE001 - not started, or another horovod version
        pass
    try:
        executor.shutdown()
    except Exception:  # noqa: BLE001
        pass


def probe_devices(workers: int, cpus_per_worker: float = 1, gpus_per_worker: float = 0) -> list[dict]:
    """Start N Horovod workers, report where each runs and which device it would use
    (``gpu(local_rank)`` or ``cpu(0)``), and stop them. Touches no device: works with
    Ray's logical GPUs on a machine without any."""
    from horovod.ray import RayExecutor

    from .cluster import check_resources, worker_env
    from .worker import HorovodWorker

    check_resources(workers, cpus_per_worker, gpus_per_worker)
    settings = RayExecutor.create_settings(timeout_s=60, placement_group_timeout_s=60)
    executor = RayExecutor(settings, num_workers=workers, cpus_per_worker=cpus_per_worker,
                           use_gpu=bool(gpus_per_worker), gpus_per_worker=gpus_per_worker or None)
    try:
        executor.start(executable_cls=HorovodWorker,
                       executable_kwargs={"cfg": {}, "data_box": [None], "gpus_per_worker": gpus_per_worker},
                       extra_env_vars=worker_env(cpus_per_worker))
        return executor.execute(lambda w: w.device_info())
    finally:
        _stop_executor(executor)
