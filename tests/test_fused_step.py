"""The update step (``lr_core.comm.fused_step``, docs/design.md#the-update-step) on real Gluon
trainers: plain SGD's fused update called directly trains bit for bit like Gluon's own
``Trainer.step`` (momentum, weight decay, hidden layers in two update groups, a schedule, class
weights, standardization, a remainder batch), keeps the same optimizer state and update
counters for checkpoints, follows states restored mid-run, and leaves every other optimizer to
Gluon; the rows gathered inside the loss graph train as the rows gathered before it; and real
Horovod ranks train with the fused update as with DistributedTrainer.step."""
import json
import os
import pickle
import sys
from pathlib import Path

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


def _data(kind, n=203, n_val=31, d=5, classes=3, seed=0, stats=False, uint8=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_val, d)).astype(np.float32) * 3 + 1
    w = rng.normal(size=(d, classes))
    y = (x @ w).argmax(axis=1) if kind == "softmax" else (x @ w[:, 0] > 0).astype(np.int64)
    scale = None
    if uint8:  # stored as bytes, scaled in the graph (as MNIST's pixels)
        x, scale = rng.integers(0, 256, size=x.shape).astype(np.uint8), np.float32(1 / 255)
    return Dataset(x[:n], y[:n], x[n:], y[n:], source="test", scale=scale,
                   stats=feature_stats(array_blocks(x[:n]), scale=scale) if stats else None)


CASES = {  # name -> (LoopConfig fields, data fields)
    "sgd": (dict(kind="softmax", num_classes=3), {}),
    "weight decay": (dict(kind="binary", weight_decay=0.01), {}),
    "momentum": (dict(kind="softmax", num_classes=3, momentum=0.9, weight_decay=0.001), {}),
    "hidden layers, two update groups": (dict(kind="softmax", num_classes=3, hidden=(7, 6), momentum=0.5), {}),
    "cosine schedule": (dict(kind="binary", lr_schedule={"kind": "cosine", "warmup_epochs": 1, "min_lr": 0.01}), {}),
    "class weights, standardized": (dict(kind="softmax", num_classes=3, class_weight="balanced"), {"stats": True}),
    "uint8 rows, scaled": (dict(kind="softmax", num_classes=3, momentum=0.9), {"uint8": True}),
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


@pytest.mark.parametrize("case", ["class weights, standardized", "hidden layers, two update groups", "weight decay",
                                  "uint8 rows, scaled"])
def test_rows_gathered_in_the_graph_train_as_rows_gathered_before_it(case):
    fields, data_fields = CASES[case]
    cfg = LoopConfig(epochs=2, batch_size=16, learning_rate=0.2, seed=3, **fields)
    loops = {g: TrainingLoop(cfg, _data(cfg.kind, **data_fields), gather=g) for g in (True, False)}
    assert loops[True].gather and not loops[False].gather
    for epoch in range(cfg.epochs):
        assert loops[True].train_epoch(epoch)["train_loss"] == loops[False].train_epoch(epoch)["train_loss"]
    _same_state(loops[True], loops[False])


def _dense_pair():
    """Two equal nets and trainers (SGD with momentum) and a step function that trains one of
    them through ``fused_step`` or Gluon's ``Trainer.step``."""
    rng = np.random.default_rng(5)
    x = mx.nd.array(rng.normal(size=(8, 3)), dtype="float32")
    nets, trainers = {}, {}
    for how in ("fused", "gluon"):
        net = mx.gluon.nn.Dense(2, in_units=3)
        net.initialize(mx.init.Constant(0.5))
        nets[how], trainers[how] = net, mx.gluon.Trainer(net.collect_params(), "sgd",
                                                         {"learning_rate": 0.1, "momentum": 0.9}, kvstore=None)

    def step(how, backward=True, x_scale=1.0):
        if backward:
            with mx.autograd.record():
                loss = (nets[how](x * x_scale) ** 2).sum()
            loss.backward()
        return fused_step(trainers[how], 8) if how == "fused" else trainers[how].step(8)

    return nets, trainers, step


def _equal_nets(nets):
    for (name, a), b in zip(nets["fused"].collect_params().items(), nets["gluon"].collect_params().values()):
        assert np.array_equal(a.data().asnumpy(), b.data().asnumpy()), name


AFTER_A_CHANGE = {  # the steps fused after each change: the first is always Gluon's
    "freeze the weight": [False, True, True], "re-initialize": [False, True, True],
    "states to sync": [False, True, True], "load states with clipping": [False, False, False],
    "loss scaling": [False, False, False], "the updater's optimizer replaced": [False, False, False]}


@pytest.mark.parametrize("change", list(AFTER_A_CHANGE))
def test_a_trainer_changed_between_steps_is_followed(change, tmp_path):
    """What the fused update was planned from changes after some fused steps: the next step is
    Gluon's, and later ones follow the trainer as it is now (on a CPU, states to sync give the
    same numbers either way: only the step taken shows; with loss scaling, the first step's
    gradient overflows and Gluon skips its update)."""
    nets, trainers, step = _dense_pair()
    fused = [step("fused") for _ in range(3)]
    for _ in range(3):
        step("gluon")
    assert fused == [False, True, True]
    if change == "load states with clipping":
        trainers["gluon"]._optimizer.clip_gradient = 0.01
        trainers["gluon"].save_states(str(tmp_path / "states"))
        trainers["gluon"]._optimizer.clip_gradient = None
    for how in ("fused", "gluon"):
        if change == "freeze the weight":
            nets[how].weight.grad_req = "null"
        elif change == "re-initialize":
            nets[how].initialize(mx.init.Constant(0.25), force_reinit=True)
        elif change == "states to sync":  # set from a pickle: Gluon's next update moves them to the device
            updater = trainers[how]._updaters[0]
            updater.set_states(updater.get_states())
        elif change == "loss scaling":  # as amp.init_trainer does
            from mxnet.contrib.amp.loss_scaler import LossScaler

            trainers[how]._amp_loss_scaler, trainers[how]._amp_original_scale = LossScaler(), trainers[how]._scale
        elif change == "the updater's optimizer replaced":  # Gluon updates with the updater's
            updater = trainers[how]._updaters[0]
            updater.set_states(pickle.dumps((updater.states, mx.optimizer.SGD(learning_rate=0.001, momentum=0.5))))
        else:
            trainers[how].load_states(str(tmp_path / "states"))
    first = float("inf") if change == "loss scaling" else 1.0
    after = [step("fused", x_scale=first if i == 0 else 1.0) for i in range(3)]
    for i in range(3):
        step("gluon", x_scale=first if i == 0 else 1.0)
    _equal_nets(nets)
    assert after == AFTER_A_CHANGE[change], after


def test_a_trainer_whose_clipping_is_cleared_is_fused_from_then_on():
    nets, trainers, step = _dense_pair()
    for how in ("fused", "gluon"):
        trainers[how]._optimizer.clip_gradient = 0.5
    fused = [step("fused") for _ in range(3)]
    for _ in range(3):
        step("gluon")
    for how in ("fused", "gluon"):
        trainers[how]._optimizer.clip_gradient = None
    fused += [step("fused") for _ in range(3)]
    for _ in range(3):
        step("gluon")
    _equal_nets(nets)
    assert fused == [False, False, False, False, True, True]


def test_a_step_without_a_new_backward_pass_is_refused_as_gluon_refuses_it():
    nets, trainers, step = _dense_pair()
    for how in ("fused", "gluon"):
        for _ in range(3):
            step(how)
    for how in ("fused", "gluon"):
        with pytest.raises(UserWarning, match="has not been updated by backward"):
            step(how, backward=False)
    _equal_nets(nets)


def test_a_trainer_with_nothing_to_train_steps_as_gluon():
    p = mx.gluon.Parameter("w", shape=(3,), grad_req="null")
    p.initialize(mx.init.One())
    trainer = mx.gluon.Trainer([p], "sgd", {"learning_rate": 0.1}, kvstore=None)
    assert [fused_step(trainer, 4) for _ in range(3)] == [False] * 3
    assert p.data().asnumpy().tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("rows, batch, comm", [(203, 16, SingleProcessCommunicator), (50, 7, None)])
def test_the_graph_kept_plan_trains_as_a_plan_made_every_step(rows, batch, comm):
    """static_shape keeps the loss graph's memory plan from step to step and makes it again when a
    step's shape differs: a short last batch (203 rows in batches of 16), and rank 2 of 3 whose
    2-row slices alternate with an empty last step of 1 row times zero (50 rows in batches of 7)."""
    comm = comm or ThirdOfThree
    cfg = LoopConfig(kind="softmax", num_classes=3, hidden=(4,), epochs=2, batch_size=batch, learning_rate=0.2,
                     seed=3, momentum=0.5)
    loops = {kept: TrainingLoop(cfg, _data("softmax", n=rows), comm=comm()) for kept in (True, False)}
    loops[False].graph.hybridize(static_alloc=True)  # before its first call: a plan made per call
    assert dict(loops[True].graph._flags)["static_shape"] and not dict(loops[False].graph._flags)["static_shape"]
    for epoch in range(cfg.epochs):
        assert loops[True].train_epoch(epoch)["train_loss"] == loops[False].train_epoch(epoch)["train_loss"]
    _same_state(loops[True], loops[False])


class ThirdOfThree(SingleProcessCommunicator):
    """Rank 2 of 3 on its own (its sums are its own)."""

    rank, size = 2, 3


def test_a_rank_without_rows_steps_alike_with_the_rows_gathered_in_or_before_the_graph():
    """9 rows in global batches of 4: rank 2 of 3 has a row in each full batch and none in the
    last one, where it steps with an exact zero gradient."""
    cfg = LoopConfig(kind="softmax", num_classes=3, epochs=2, batch_size=4, learning_rate=0.2, seed=3,
                     class_weight="balanced")
    loops = {g: TrainingLoop(cfg, _data("softmax", n=9, stats=True), comm=ThirdOfThree(), gather=g)
             for g in (True, False)}
    start = loops[True].get_params()
    for epoch in range(cfg.epochs):
        records = [loops[g].train_epoch(epoch) for g in (True, False)]
        assert records[0]["train_loss"] == records[1]["train_loss"]
        assert records[0]["steps"] == 3 and records[0]["local_rows"] == 2
    _same_state(loops[True], loops[False])
    assert any(not np.array_equal(v, loops[True].get_params()[k]) for k, v in start.items())


_RANKS = r"""
import json, sys
import mxnet as mx
import numpy as np
sys.path.insert(0, "tests")
from test_fused_step import CASES, _data
import launcher.backends.hvd_comm as hvd_comm
from launcher.backends.hvd_comm import HorovodCommunicator
from lr_core.config import LoopConfig

fused_steps = []
def counting(trainer, batch_size, fused_step=hvd_comm.fused_step):
    fused_steps.append(fused_step(trainer, batch_size))
    return fused_steps[-1]
hvd_comm.fused_step = counting  # HorovodCommunicator.step's own call, counted
from lr_core.loop import TrainingLoop

class DistributedTrainerSteps(HorovodCommunicator):
    def step(self, trainer, global_batch_size):  # what the communicator did before the fused update
        trainer.step(global_batch_size / self.size)

out = {}
for case in ("momentum", "hidden layers, two update groups", "class weights, standardized"):
    fields, data_fields = CASES[case]
    cfg = LoopConfig(epochs=2, batch_size=16, learning_rate=0.2, seed=3, **fields)
    # one loop's Horovod operations (broadcast, allreduces) done before the other's, of the same names
    fused = TrainingLoop(cfg, _data(cfg.kind, **data_fields), comm=HorovodCommunicator())
    mx.nd.waitall()
    gluon = TrainingLoop(cfg, _data(cfg.kind, **data_fields), comm=DistributedTrainerSteps())
    mx.nd.waitall()
    start = fused.get_params()
    fused_steps.clear()
    losses = []
    for e in range(cfg.epochs):
        losses.append(fused.train_epoch(e)["train_loss"])
        mx.nd.waitall()
        losses[-1] = (losses[-1], gluon.train_epoch(e)["train_loss"])
        mx.nd.waitall()
    a, b = fused.get_state(), gluon.get_state()
    out[case] = {"losses_equal": all(x == y for x, y in losses),
                 "params_equal": all(np.array_equal(v, b["params"][k]) for k, v in a["params"].items()),
                 "state_equal": a["optimizer_meta"] == b["optimizer_meta"] and all(
                     np.array_equal(v, b["optimizer_arrays"][k]) for k, v in a["optimizer_arrays"].items()),
                 "fused": len(fused_steps) == 2 * 13 and sum(fused_steps) == 2 * 13 - 1,
                 "moved": any(not np.array_equal(v, start[k]) for k, v in a["params"].items())}
print("RESULT" + json.dumps({"rank": fused.comm.rank, "cases": out}))
"""


@pytest.mark.distributed
def test_two_horovod_ranks_train_with_the_fused_update_as_with_distributed_trainer_step():
    """Real Horovod ranks (horovodrun, Gloo): the communicator's fused update after the grouped
    allreduce gives DistributedTrainer.step's parameters, optimizer state and losses bit for bit."""
    import procs

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "HOROVOD_GLOO_TIMEOUT_SECONDS": "60"}
    r = procs.run([str(Path(sys.executable).parent / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2",
                   sys.executable, "-c", _RANKS], timeout=180, cwd=root, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads(line.split("RESULT", 1)[1]) for line in r.stdout.splitlines() if "RESULT" in line]
    assert sorted(x["rank"] for x in ranks) == [0, 1], r.stdout
    for x in ranks:
        for case, got in x["cases"].items():
            assert got == {"losses_equal": True, "params_equal": True, "state_equal": True, "fused": True,
                           "moved": True}, (x["rank"], case, got)
