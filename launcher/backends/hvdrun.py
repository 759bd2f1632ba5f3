"""``lrjob worker``: one rank of a job started by ``horovodrun`` (or ``mpirun``), for
clusters without Ray, such as the Kubeflow MPIJob of ``k8s/``.

Every rank loads the data and runs the same loop with the Horovod communicator; rank 0
also plays the driver and writes the run directory. A restart is the launcher's job
(the MPIJob's ``backoffLimit``): resume with ``--resume`` on storage every rank reads.

    horovodrun --gloo -np 2 -H localhost:2 lrjob worker jobs/binary_synthetic.yaml --output runs/x
"""
from __future__ import annotations

import socket

from .inprocess import InProcessBackend

__all__ = ["ThisRankBackend"]


class ThisRankBackend(InProcessBackend):
    """The backend interface for the rank that runs in this process.
    Implements the ``Backend`` protocol (launcher/backends/__init__.py)."""

    def __init__(self, cfg, data, comm, gpus_per_worker: float = 0):
        import mxnet as mx

        super().__init__(cfg, data, comm=comm, ctx=mx.gpu(comm.local_rank) if gpus_per_worker else mx.cpu())
        self.comm = comm
        self.workers = comm.size
        self.where = f"{comm.size} Horovod processes (horovodrun)"

    def get_state(self) -> dict:
        """The loop's state, with the ranks horovodrun started: the worker count a checkpoint
        records (the spec's ``resources.workers`` need not be it)."""
        return {**super().get_state(), "workers": self.workers}

    def announce_stop(self, stop: bool) -> bool:
        """Rank 0 (the driver) tells every rank whether early stopping ends the run before the next
        epoch; the other ranks pass False and get rank 0's decision (one allreduce, in the same
        order on every rank)."""
        import numpy as np

        flag = np.array([1.0 if stop and self.comm.rank == 0 else 0.0])
        return bool(self.comm.allreduce_sum(flag, name="early_stop")[0] > 0)

    def run_epoch(self, epoch, progress=None, timeout_s=None, start_step=0, stop_step=None):
        from lr_core.errors import LrjobError, WorkerFailure

        try:
            return super().run_epoch(epoch, progress, start_step=start_step, stop_step=stop_step)
        except LrjobError:
            raise
        except Exception as e:  # noqa: BLE001 - Horovod/Gloo errors when a peer is lost
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
            raise WorkerFailure(f"rank {self.comm.rank} on {socket.gethostname()} lost its Horovod peers during "
                                f"epoch {epoch + 1}: {first}", rank=self.comm.rank,
                                node=socket.gethostname()) from None
