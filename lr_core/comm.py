"""The communicator: the one seam that knows about distribution.

The training loop talks to a communicator for its rank and world size, to sum arrays
across workers, to broadcast the initial parameters, and to build and step the Gluon
trainer. ``lr_core`` ships the single-process communicator; ``launcher.backends.hvd_comm`` the
Horovod one.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from mxnet import gluon

__all__ = ["Communicator", "SingleProcessCommunicator"]


@runtime_checkable
class Communicator(Protocol):
    rank: int
    size: int
    local_rank: int

    def allreduce_sum(self, array: np.ndarray, name: str) -> np.ndarray:
        """Element-wise sum of ``array`` over all workers (every worker gets the result)."""

    def broadcast_parameters(self, params: gluon.ParameterDict) -> None:
        """Make every worker's parameters equal to rank 0's."""

    def make_trainer(self, params: gluon.ParameterDict, optimizer: str, optimizer_params: dict) -> gluon.Trainer:
        """A Gluon trainer whose ``step`` sees the gradient summed over workers."""

    def step(self, trainer: gluon.Trainer, global_batch_size: int) -> None:
        """Apply one update with gradient = (sum over workers of summed losses' gradient) / global_batch_size."""


class SingleProcessCommunicator:
    """World size 1, in-process: the reference run."""

    rank, size, local_rank = 0, 1, 0

    def allreduce_sum(self, array: np.ndarray, name: str) -> np.ndarray:
        return np.array(array, copy=True)

    def broadcast_parameters(self, params) -> None:
        return None

    def make_trainer(self, params, optimizer, optimizer_params):
        return gluon.Trainer(params, optimizer, optimizer_params, kvstore=None)

    def step(self, trainer, global_batch_size):
        # The loop backpropagates the SUM of per-sample losses; Gluon multiplies the
        # gradient by rescale_grad = 1 / batch_size: the mean over the global batch.
        trainer.step(global_batch_size)

    def barrier(self) -> None:
        return None
