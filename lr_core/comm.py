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


class _SGDPlan:
    """What ``fused_step`` updates, found after a Gluon step: the optimizer and updater, each
    trainable parameter with its index, weight and gradient arrays, the updater's groups of
    (indices, weights, gradients, the weights and gradients interleaved as the operator takes
    them), and the device the weights live on."""

    __slots__ = ("optimizer", "updater", "params", "groups", "device")

    def __init__(self, optimizer, updater, params, groups, device):
        self.optimizer, self.updater, self.params, self.groups, self.device = \
            optimizer, updater, params, groups, device


def _sgd_plan(trainer: gluon.Trainer) -> _SGDPlan | None:
    """The plan of ``trainer``'s next steps, or None where ``fused_step`` must leave them to Gluon:
    another optimizer, a kvstore, several devices, float16 weights, clipping, loss scaling, sparse
    or added gradients, nothing to train."""
    opt = trainer._optimizer
    updaters = trainer._updaters
    if (type(opt) is not mx.optimizer.SGD or opt.clip_gradient or trainer._kvstore is not None
            or len(updaters) != 1 or updaters[0].optimizer is not opt
            or not updaters[0].aggregate_updates or opt.aggregate_num < 1
            or getattr(trainer, "_amp_loss_scaler", None) is not None or trainer._params_to_init):
        return None
    params, entries = [], []
    for i, param in enumerate(trainer._params):
        if param.grad_req == "null":
            params.append((param, None, None))
            continue
        datas, grads = param.list_data(), param.list_grad()
        if param.grad_req != "write" or len(datas) != 1 or datas[0].dtype != np.float32 \
                or datas[0].stype != "default" or grads[0].stype != "default":
            return None
        params.append((param, datas[0], grads[0]))
        entries.append((i, datas[0], grads[0]))
    if not entries:
        return None
    # the updater's grouping (optimizer.Updater: by dtype, then aggregate_num at a time)
    n = opt.aggregate_num
    groups = []
    for a in range(0, len(entries), n):
        indices, weights, grads = (list(x) for x in zip(*entries[a:a + n]))
        groups.append((indices, weights, grads, [x for pair in zip(weights, grads) for x in pair]))
    return _SGDPlan(opt, updaters[0], params, groups, entries[0][1].context.device_id)


def _holds(trainer: gluon.Trainer, plan: _SGDPlan) -> bool:
    """Whether ``plan`` still describes ``trainer``: the same optimizer and updater (and the updater
    still updating with that optimizer), no clipping and no loss scaling, every parameter trained
    (or frozen) as then and holding the same arrays, every optimizer state on its device, and every
    gradient fresh from a backward pass (else Gluon's step, which says so)."""
    opt = trainer._optimizer
    if opt is not plan.optimizer or trainer._updaters[0] is not plan.updater or plan.updater.optimizer is not opt \
            or opt.clip_gradient or trainer._params_to_init or getattr(trainer, "_amp_loss_scaler", None) is not None:
        return False
    for param, weight, grad in plan.params:
        if weight is None:
            if param.grad_req != "null":
                return False
        elif param.grad_req != "write" or param.list_data()[0] is not weight or param.list_grad()[0] is not grad \
                or not weight._fresh_grad:
            return False
    synced = plan.updater.states_synced
    return all(synced.get(i, False) for group in plan.groups for i in group[0])


def fused_step(trainer: gluon.Trainer, batch_size: float) -> bool:
    """``trainer.step(batch_size)``, with plain SGD's fused update (``multi_sgd_update``, or
    ``multi_sgd_mom_update`` with momentum) called directly: the same operators on the same arrays
    as Gluon's ``Trainer._update`` and ``Updater``, bit for bit, without their Python
    (docs/design.md#the-update-step). The gradients are reduced first as the trainer does
    (``_allreduce_grads``: Horovod's DistributedTrainer sums them over ranks). The first step is
    Gluon's own: it creates the optimizer's state, which checkpoints read as before. So is every
    step of another optimizer, and any step after the trainer changed (another optimizer or
    states loaded, a parameter frozen or re-initialized, clipping or loss scaling set) or without a
    fresh gradient. After each of Gluon's steps the plan is made again, so a trainer that becomes
    plain SGD again (its clipping cleared) is fused from its next step. Returns whether the update
    was fused."""
    plan = getattr(trainer, "_lrjob_sgd_plan", None)
    if plan is None or not _holds(trainer, plan):  # Gluon's step (it initializes, or raises), then a plan
        trainer.step(batch_size)
        trainer._lrjob_sgd_plan = _sgd_plan(trainer)
        return False
    opt = trainer._optimizer
    opt.rescale_grad = trainer._scale / batch_size  # as Trainer.step
    trainer._allreduce_grads()
    opt._set_current_context(plan.device)
    states = plan.updater.states
    for indices, weights, grads, pairs in plan.groups:
        opt._update_count(indices)  # the counters a checkpoint keeps (lr_core/state.py)
        lrs, wds = opt._get_lrs(indices), opt._get_wds(indices)
        if opt.momentum > 0:  # the states are read each step: a restored state replaces them
            arrays = [a for i, w, g in zip(indices, weights, grads) for a in (w, g, states[i])]
            mx.nd.multi_sgd_mom_update(*arrays, out=weights, num_weights=len(weights), lrs=lrs, wds=wds,
                                       rescale_grad=opt.rescale_grad, momentum=opt.momentum)
        else:
            mx.nd.multi_sgd_update(*pairs, out=weights, num_weights=len(weights), lrs=lrs, wds=wds,
                                   rescale_grad=opt.rescale_grad)
        for w in weights:
            w._fresh_grad = False  # as Trainer._update: the next step needs a new backward pass
    return True
