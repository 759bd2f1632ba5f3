"""The communicator: the one seam that knows about distribution.

The training loop talks to a communicator for its rank and world size, to sum arrays
across workers, to broadcast the initial parameters, and to build and step the Gluon
trainer. ``lr_core`` ships the single-process communicator; ``launcher.backends.hvd_comm`` the
Horovod one.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import mxnet as mx
from mxnet import gluon

__all__ = ["Communicator", "SingleProcessCommunicator", "fused_step"]


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
        fused_step(trainer, global_batch_size)

    def barrier(self) -> None:
        return None


def _sgd_plan(trainer: gluon.Trainer):
    """The groups of (indices, weights, gradients) that Gluon's updater hands SGD in one step, or
    None where ``fused_step`` must leave the step to Gluon: another optimizer, a kvstore, several
    devices, float16 weights, clipping, loss scaling, sparse or added gradients."""
    opt = trainer._optimizer
    updaters = trainer._updaters
    if (type(opt) is not mx.optimizer.SGD or opt.clip_gradient or trainer._kvstore is not None
            or len(updaters) != 1 or not updaters[0].aggregate_updates or opt.aggregate_num < 1
            or getattr(trainer, "_amp_loss_scaler", None) is not None or trainer._params_to_init):
        return None
    entries = []
    for i, param in enumerate(trainer._params):
        if param.grad_req == "null":
            continue
        datas, grads = param.list_data(), param.list_grad()
        if param.grad_req != "write" or len(datas) != 1 or datas[0].dtype != np.float32 \
                or datas[0].stype != "default" or grads[0].stype != "default":
            return None
        entries.append((i, datas[0], grads[0]))
    # the updater's grouping (optimizer.Updater: by dtype, then aggregate_num at a time), so the
    # same operators see the same arrays
    n = opt.aggregate_num
    return [tuple(zip(*entries[a:a + n])) for a in range(0, len(entries), n)], entries[0][1].context.device_id


def fused_step(trainer: gluon.Trainer, batch_size: float) -> bool:
    """``trainer.step(batch_size)``, with plain SGD's fused update (``multi_sgd_update``, or
    ``multi_sgd_mom_update`` with momentum) called directly: the same operators on the same arrays
    as Gluon's ``Trainer._update`` and ``Updater``, bit for bit, without their Python, a third of an
    in-process step on a small model (docs/design.md#the-update-step). The gradients are reduced
    first as the trainer does (``_allreduce_grads``: Horovod's DistributedTrainer sums them over
    ranks). The first step, and every step of another optimizer, is Gluon's own; it creates the
    optimizer's state, which checkpoints read as before. Returns whether the update was fused."""
    plan = getattr(trainer, "_lrjob_sgd_plan", False)
    if plan is False:  # not looked at yet: Gluon's step first (it initializes), then the plan
        trainer.step(batch_size)
        trainer._lrjob_sgd_plan = _sgd_plan(trainer)
        return False
    if plan is None:
        trainer.step(batch_size)
        return False
    groups, device = plan
    opt = trainer._optimizer
    opt.rescale_grad = trainer._scale / batch_size  # as Trainer.step
    trainer._allreduce_grads()
    opt._set_current_context(device)
    states = trainer._updaters[0].states
    for indices, weights, grads in groups:
        opt._update_count(list(indices))  # the counters a checkpoint keeps (lr_core/state.py)
        lrs, wds = opt._get_lrs(indices), opt._get_wds(indices)
        if opt.momentum > 0:
            arrays = [a for i, w, g in zip(indices, weights, grads) for a in (w, g, states[i])]
            mx.nd.multi_sgd_mom_update(*arrays, out=list(weights), num_weights=len(weights), lrs=lrs, wds=wds,
                                       rescale_grad=opt.rescale_grad, momentum=opt.momentum)
        else:
            arrays = [a for w, g in zip(weights, grads) for a in (w, g)]
            mx.nd.multi_sgd_update(*arrays, out=list(weights), num_weights=len(weights), lrs=lrs, wds=wds,
                                   rescale_grad=opt.rescale_grad)
    return True
