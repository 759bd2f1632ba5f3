"""The Horovod communicator: lr_core's ``Communicator`` over Gloo (CPU) or NCCL (GPU)."""
from __future__ import annotations

import numpy as np
import mxnet as mx

__all__ = ["HorovodCommunicator"]


class HorovodCommunicator:
    """Wraps ``horovod.mxnet`` after ``hvd.init()``.
    Implements the ``Communicator`` protocol (lr_core/comm.py)."""

    def __init__(self):
        import horovod.mxnet as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

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
