"""Where the epochs run: in this process (``--workers 0``) or on N Horovod workers
through Ray. Both expose the same small interface to the driver (``runner.py``)."""
from __future__ import annotations

import os
import socket
import time

from lr_core.config import LoopConfig
from lr_core.data import Dataset
from lr_core.errors import ClusterError, LrjobError, WorkerFailure

__all__ = ["InProcessBackend", "RayHorovodBackend", "probe_devices"]


class InProcessBackend:
    """The single-process reference run: the same loop with world size 1."""

    workers = 0

    def __init__(self, cfg: LoopConfig, data: Dataset, record_shards: bool = False):
        import mxnet as mx

        from lr_core.loop import TrainingLoop

        self.loop = TrainingLoop(cfg, data, ctx=mx.cpu(), record_shards=record_shards)
        self.placement = [{"rank": 0, "local_rank": 0, "size": 1, "host": socket.gethostname(),
                           "pid": os.getpid(), "device": "cpu(0)", "node_id": None}]
        self.startup_seconds = 0.0
        self.where = "in-process"

    def run_epoch(self, epoch: int) -> list[dict]:
        return [self.loop.run_epoch(epoch)]

    def get_state(self) -> dict:
        return self.loop.get_state()

    def set_state(self, state: dict) -> None:
        self.loop.set_state(state)

    def all_params(self) -> list[dict]:
        return [self.loop.get_params()]

    def shard_logs(self) -> list[dict]:
        return [self.loop.shard_log]

    def shutdown(self) -> None:
        self.loop = None


class RayHorovodBackend:
    """N stateful Horovod workers (``horovod.ray.RayExecutor``) in the current Ray session."""

    def __init__(self, cfg: LoopConfig, data: Dataset, workers: int, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, record_shards: bool = False, start_timeout_s: int = 60):
        import ray
        from horovod.ray import RayExecutor

        from .cluster import check_resources, worker_env
        from .quiet import silence_known_noise
        from .worker import HorovodWorker

        silence_known_noise()
        self.workers = workers
        t0 = time.perf_counter()
        self.resources = check_resources(workers, cpus_per_worker, gpus_per_worker)
        self.executor = None
        self._data_ref = ray.put(data)
        settings = RayExecutor.create_settings(timeout_s=start_timeout_s, placement_group_timeout_s=start_timeout_s)
        executor = RayExecutor(settings, num_workers=workers, cpus_per_worker=cpus_per_worker,
                               use_gpu=bool(gpus_per_worker), gpus_per_worker=gpus_per_worker or None)
        try:
            executor.start(executable_cls=HorovodWorker,
                           executable_kwargs={"cfg": cfg.to_dict(), "data_box": [self._data_ref],
                                              "gpus_per_worker": gpus_per_worker, "record_shards": record_shards},
                           extra_env_vars=worker_env(cpus_per_worker))
            self.executor = executor
            self.placement = self._call(lambda w: w.setup(), "start-up")
        except BaseException:
            # A half-started worker group is torn down before re-raising.
            self.executor = executor
            self.shutdown()
            raise
        self.startup_seconds = time.perf_counter() - t0
        self.where = f"{workers} Horovod workers on {len({p['node_id'] for p in self.placement})} node(s)"

    def _actors(self):
        adapter = getattr(self.executor, "adapter", None)
        return list(getattr(adapter, "workers", []) or [])

    def _call(self, fn, what: str) -> list:
        """Run ``fn`` on every worker; turn a dead actor into a ``WorkerFailure`` naming its rank."""
        import ray

        refs = [actor.execute.remote(fn) for actor in self._actors()]
        pending = list(refs)
        results = {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ref = done[0]
            rank = refs.index(ref)
            try:
                results[rank] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if hasattr(e, "cause") else None
                if isinstance(cause, LrjobError):
                    raise cause from None
                raise ClusterError(f"rank {rank} failed during {what}: {str(e).strip().splitlines()[-1]}") from None
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                node = (self.placement[rank]["host"] if getattr(self, "placement", None) else "?")
                raise WorkerFailure(f"rank {rank} on {node} died during {what} ({type(e).__name__})",
                                    rank=rank, node=node) from None
        return [results[r] for r in range(len(refs))]

    def run_epoch(self, epoch: int) -> list[dict]:
        return self._call(lambda w: w.run_epoch(epoch), f"epoch {epoch + 1}")

    def get_state(self) -> dict:
        import ray

        return ray.get(self._actors()[0].execute.remote(lambda w: w.get_state()))

    def set_state(self, state: dict) -> None:
        self._call(lambda w: w.set_state(state), "restore")

    def all_params(self) -> list[dict]:
        return self._call(lambda w: w.get_params(), "parameter read-back")

    def shard_logs(self) -> list[dict]:
        return self._call(lambda w: w.shard_log(), "shard read-back")

    def shutdown(self) -> None:
        if self.executor is not None:
            _stop_executor(self.executor)
        self.executor = None


def _stop_executor(executor) -> None:
    """Leave Horovod on every rank, kill the actors, remove the placement group."""
    import ray

    actors = list(getattr(getattr(executor, "adapter", None), "workers", []) or [])
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
        executor.shutdown()
    except Exception:  # noqa: BLE001
        pass


def probe_devices(workers: int, cpus_per_worker: float = 1, gpus_per_worker: float = 0) -> list[dict]:
    """Start N Horovod workers, report where each runs and which device it would use
    (``gpu(local_rank)`` or ``cpu(0)``), and stop them. Touches no device: works with
    Ray's logical GPUs on a machine without any."""
    import ray
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
