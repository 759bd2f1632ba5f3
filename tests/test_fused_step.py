"""The update step (``lr_core.comm.fused_step``, docs/design.md#the-update-step) on real Gluon
trainers: plain SGD's fused update called directly trains bit for bit like Gluon's own
``Trainer.step`` (momentum, weight decay, hidden layers in two update groups, a schedule, class
weights, standardization, a remainder batch), keeps the same optimizer state and update
counters for checkpoints, follows states restored mid-run, and leaves every other optimizer to
Gluon; and the rows gathered inside the loss graph train as the rows gathered before it."""
import mxnet as mx
import numpy as np
import pytest

from lr_core.comm import SingleProcessCommunicator, fused_step
from lr_core.config import LoopConfig
from lr_core.data import Dataset, array_blocks, feature_stats
from lr_core.loop import TrainingLoop


class GluonSteps(SingleProcessCommunicator):
    """The reference: every step is Gluon's ``Trainer.step``."""

    def step(self, trainer, global_batch_size):
        trainer.step(global_batch_size)


class Counting(SingleProcessCommunicator):
    """The communicator under test, counting the steps ``fused_step`` fused."""

    def __init__(self):
        self.fused = self.steps = 0

    def step(self, trainer, global_batch_size):
        self.steps += 1
        self.fused += fused_step(trainer, global_batch_size)


def _data(kind, n=203, n_val=31, d=5, classes=3, seed=0, stats=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_val, d)).astype(np.float32) * 3 + 1
    w = rng.normal(size=(d, classes))
    y = (x @ w).argmax(axis=1) if kind == "softmax" else (x @ w[:, 0] > 0).astype(np.int64)
    return Dataset(x[:n], y[:n], x[n:], y[n:], source="test",
                   stats=feature_stats(array_blocks(x[:n])) if stats else None)


CASES = {  # name -> (LoopConfig fields, data fields)
    "sgd": (dict(kind="softmax", num_classes=3), {}),
    "weight decay": (dict(kind="binary", weight_decay=0.01), {}),
    "momentum": (dict(kind="softmax", num_classes=3, momentum=0.9, weight_decay=0.001), {}),
    "hidden layers, two update groups": (dict(kind="softmax", num_classes=3, hidden=(7, 6), momentum=0.5), {}),
    "cosine schedule": (dict(kind="binary", lr_schedule={"kind": "cosine", "warmup_epochs": 1, "min_lr": 0.01}), {}),
    "class weights, standardized": (dict(kind="softmax", num_classes=3, class_weight="balanced"), {"stats": True}),
}


def _pair(fields, data_fields, **more):
    cfg = LoopConfig(epochs=3, batch_size=16, learning_rate=0.2, seed=3, **{**fields, **more})
    loops = {}
    for name, comm in (("gluon", GluonSteps()), ("fused", Counting())):
        data = _data(cfg.kind, **data_fields)
        loops[name] = TrainingLoop(cfg, data, comm=comm)
    return cfg, loops


def _same_state(a, b):
    for name, value in a.get_params().items():
        assert np.array_equal(value, b.get_params()[name]), name
    sa, sb = a.get_state(), b.get_state()
    assert sa["optimizer_meta"] == sb["optimizer_meta"]
    assert sa["optimizer_arrays"].keys() == sb["optimizer_arrays"].keys()
    for key, value in sa["optimizer_arrays"].items():
        assert np.array_equal(value, sb["optimizer_arrays"][key]), key


@pytest.mark.parametrize("case", list(CASES))
def test_the_fused_update_is_gluons_bit_for_bit(case):
    cfg, loops = _pair(*CASES[case])
    steps = -(-203 // 16)  # the last batch has 11 rows
    for epoch in range(cfg.epochs):
        ra, rb = (loops[k].train_epoch(epoch) for k in ("gluon", "fused"))
        assert ra["train_loss"] == rb["train_loss"], epoch
    _same_state(loops["gluon"], loops["fused"])
    comm = loops["fused"].comm
    # every step but the first (Gluon's, which creates the optimizer's state) was fused
    assert comm.steps == cfg.epochs * steps and comm.fused == comm.steps - 1
    if cfg.momentum:  # the momentum is there and moved
        assert any(np.abs(v).max() > 0 for v in loops["fused"].get_state()["optimizer_arrays"].values())


def test_a_state_restored_after_fused_steps_is_followed():
    """``set_state`` replaces the optimizer's momentum arrays after the update has been fused:
    the next steps read the new ones (as Gluon's updater does), not the arrays of before."""
    cfg, loops = _pair(dict(kind="softmax", num_classes=3, momentum=0.9), {})
    donor = TrainingLoop(cfg, _data("softmax", seed=1), comm=GluonSteps())
    donor.train_epoch(0)
    donor.train_epoch(1)
    state = donor.get_state()
    for loop in loops.values():
        loop.train_epoch(0)
        loop.set_state(state)
        loop.train_epoch(2)
    _same_state(loops["gluon"], loops["fused"])
    assert loops["fused"].comm.fused > 0


@pytest.mark.parametrize("optimizer", ["nag", "adam"])
def test_other_optimizers_are_left_to_gluon(optimizer):
    cfg, loops = _pair(dict(kind="binary"), {}, optimizer=optimizer, momentum=0.9 if optimizer == "nag" else 0.0)
    for epoch in range(2):
        for loop in loops.values():
            loop.train_epoch(epoch)
    _same_state(loops["gluon"], loops["fused"])
    assert loops["fused"].comm.fused == 0 and loops["fused"].comm.steps > 0


@pytest.mark.filterwarnings("ignore:Accumulating with float16")
def test_lars_a_clipped_or_a_float16_trainer_is_left_to_gluon():
    """LARS groups its updates as SGD does and has a momentum, yet its update is its own."""
    for optimizer, opt_params, dtype in (("sgd", {"clip_gradient": 0.5}, "float32"), ("sgd", {}, "float16"),
                                         ("lars", {"momentum": 0.9}, "float32")):
        got, fused = {}, []
        for how in ("fused", "gluon"):
            p = mx.gluon.Parameter("w", shape=(3,), dtype=dtype)
            p.initialize(mx.init.One())
            trainer = mx.gluon.Trainer([p], optimizer, {"learning_rate": 0.1, **opt_params}, kvstore=None)
            for _ in range(3):
                with mx.autograd.record():
                    loss = (p.data() * 3).sum()
                loss.backward()
                if how == "fused":
                    fused.append(fused_step(trainer, 4))
                else:
                    trainer.step(4)
            got[how] = p.data().asnumpy()
        assert fused == [False] * 3 and np.array_equal(got["fused"], got["gluon"]), (optimizer, opt_params, dtype)


@pytest.mark.parametrize("case", ["class weights, standardized", "hidden layers, two update groups", "weight decay"])
def test_rows_gathered_in_the_graph_train_as_rows_gathered_before_it(case):
    fields, data_fields = CASES[case]
    cfg = LoopConfig(epochs=2, batch_size=16, learning_rate=0.2, seed=3, **fields)
    loops = {g: TrainingLoop(cfg, _data(cfg.kind, **data_fields), gather=g) for g in (True, False)}
    assert loops[True].gather and not loops[False].gather
    for epoch in range(cfg.epochs):
        assert loops[True].train_epoch(epoch)["train_loss"] == loops[False].train_epoch(epoch)["train_loss"]
    _same_state(loops[True], loops[False])
