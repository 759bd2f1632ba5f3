"""Small contracts of ``lr_core`` that the oracle tests do not pin down: the training
configuration, the error classes, ``fit`` and the loop's state and prediction helpers.
All in-process on tiny data."""
import pickle

import numpy as np
import pytest

from lr_core import errors
from lr_core.config import LoopConfig
from lr_core.data import Dataset
from lr_core.loop import TrainingLoop, fit, optimizer_params, predict_logits


def _data(n=24, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 8, d)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    return Dataset(x[:n], y[:n], x[n:], y[n:], source="test")


# ---------------------------------------------------------------------------- LoopConfig
def test_config_to_dict_is_plain():
    cfg = LoopConfig(kind="softmax", num_classes=3, hidden=[4.0, 2], epochs=2)
    assert cfg.hidden == (4, 2) and all(type(h) is int for h in cfg.hidden)
    d = cfg.to_dict()
    assert d["hidden"] == [4, 2] and type(d["hidden"]) is list
    assert d == {"kind": "softmax", "num_classes": 3, "hidden": [4, 2], "epochs": 2, "batch_size": 64,
                 "learning_rate": 0.1, "optimizer": "sgd", "weight_decay": 0.0, "momentum": 0.0, "init": "xavier",
                 "init_sigma": 0.01, "seed": 12345, "threshold": 0.5, "eval_batch_size": 4096}
    assert LoopConfig(**{**d, "hidden": tuple(d["hidden"])}) == cfg


def test_config_outputs_and_kind():
    assert LoopConfig(kind="binary", num_classes=7).num_outputs == 1
    assert LoopConfig(kind="softmax", num_classes=np.int64(5)).num_outputs == 5
    assert type(LoopConfig(kind="softmax", num_classes=np.int64(5)).num_outputs) is int
    with pytest.raises(ValueError) as e:
        LoopConfig(kind="poisson")
    assert str(e.value) == "kind must be one of ('binary', 'softmax'), got 'poisson'"


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("cls,code", [(errors.LrjobError, 1), (errors.LrjobInputError, 2), (errors.SpecError, 2),
                                      (errors.DataError, 2), (errors.LrjobRuntimeError, 1),
                                      (errors.TrainingError, 1), (errors.DivergenceError, 1),
                                      (errors.ClusterError, 1), (errors.WorkerFailure, 1)])
def test_errors_are_one_line_exceptions_that_pickle(cls, code):
    e = cls("train.epochs must be >= 1, got 0")
    assert str(e) == e.message == "train.epochs must be >= 1, got 0"
    assert e.args == ("train.epochs must be >= 1, got 0",)
    assert e.exit_code == code
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.args == e.args


def test_worker_failure_names_rank_node_and_epoch():
    e = errors.WorkerFailure("rank 1 died", rank=1, node="10.0.0.2", last_epoch=3)
    assert (e.rank, e.node, e.last_epoch, str(e)) == (1, "10.0.0.2", 3, "rank 1 died")
    back = pickle.loads(pickle.dumps(e))
    assert (back.rank, back.node, back.last_epoch, str(back)) == (1, "10.0.0.2", 3, "rank 1 died")
    bare = errors.WorkerFailure("lost")
    assert (bare.rank, bare.node, bare.last_epoch) == (None, None, None)


# ---------------------------------------------------------------------------- loop helpers
@pytest.mark.parametrize("opt,momentum,want", [
    ("sgd", 0.9, {"learning_rate": 0.2, "wd": 0.01, "momentum": 0.9}),
    ("nag", 0.5, {"learning_rate": 0.2, "wd": 0.01, "momentum": 0.5}),
    ("adam", 0.9, {"learning_rate": 0.2, "wd": 0.01}),
])
def test_optimizer_params(opt, momentum, want):
    cfg = LoopConfig(optimizer=opt, momentum=momentum, learning_rate=0.2, weight_decay=0.01)
    assert optimizer_params(cfg) == want


def test_predict_logits_in_batches_and_on_no_rows():
    import mxnet as mx

    loop = TrainingLoop(LoopConfig(kind="softmax", num_classes=3, hidden=(4,), batch_size=8), _data())
    x = mx.nd.array(np.random.default_rng(1).normal(size=(10, 3)), dtype="float32")
    whole = predict_logits(loop.net, x)
    assert whole.shape == (10, 3) and whole.dtype == np.float32
    assert np.array_equal(predict_logits(loop.net, x, batch=3), whole)
    assert np.array_equal(predict_logits(loop.net, x, batch=10), whole)
    empty = predict_logits(loop.net, x[0:0])
    assert empty.shape == (0, 1) and empty.dtype == np.float32


def test_fit_trains_the_remaining_epochs_from_a_state():
    cfg = LoopConfig(kind="binary", epochs=3, batch_size=8, learning_rate=0.3)
    data = _data()
    seen = []
    loop, history = fit(cfg, data, on_epoch=seen.append)
    assert [m["epoch"] for m in history] == [1, 2, 3] and seen == history
    assert loop.epochs_done == 3

    part = TrainingLoop(cfg, data)
    part.run_epoch(0)
    state = part.get_state()
    assert state["epochs_done"] == 1
    rest, rest_history = fit(cfg, data, start_epoch=1, state=state)
    assert [m["epoch"] for m in rest_history] == [2, 3]
    assert rest.epochs_done == 3
    for name, value in loop.get_params().items():
        assert np.array_equal(rest.get_params()[name], value), name
    assert rest_history[-1]["val_loss"] == history[-1]["val_loss"]


def test_fit_steps_through_the_communicator_it_is_given():
    from lr_core.comm import SingleProcessCommunicator

    class Counting(SingleProcessCommunicator):
        steps = 0

        def step(self, trainer, global_batch_size):
            Counting.steps += 1
            super().step(trainer, global_batch_size)

    cfg = LoopConfig(kind="binary", epochs=2, batch_size=8)
    loop, _ = fit(cfg, _data(), comm=Counting())
    assert Counting.steps == 2 * 3 and isinstance(loop.comm, Counting)


def test_set_state_restores_the_epoch_count():
    cfg = LoopConfig(kind="softmax", num_classes=2, epochs=2, batch_size=8, optimizer="adam", learning_rate=0.05)
    a = TrainingLoop(cfg, _data())
    a.run_epoch(0)
    a.run_epoch(1)
    state = a.get_state()
    b = TrainingLoop(cfg, _data())
    b.set_state({**state, "epochs_done": np.int64(2)})
    assert b.epochs_done == 2 and type(b.epochs_done) is int
    assert all(np.array_equal(b.get_params()[k], v) for k, v in a.get_params().items())


# ---------------------------------------------------------------------------- models, losses, comm
@pytest.mark.parametrize("init", ["xavier", "normal", "zeros"])
def test_initial_parameters_follow_the_init(init):
    from lr_core.models import initial_parameters

    cfg = LoopConfig(kind="softmax", num_classes=3, hidden=(400,), init=init, init_sigma=0.05, seed=9)
    p = initial_parameters(cfg, 300)
    assert sorted(p) == ["lrjob_layer0_bias", "lrjob_layer0_weight", "lrjob_layer1_bias", "lrjob_layer1_weight"]
    assert p["lrjob_layer0_weight"].shape == (400, 300) and p["lrjob_layer1_weight"].shape == (3, 400)
    for v in p.values():
        assert v.dtype == np.float32
    assert not p["lrjob_layer0_bias"].any() and p["lrjob_layer1_bias"].shape == (3,)
    w = p["lrjob_layer0_weight"].astype(np.float64)
    if init == "zeros":
        assert not w.any()
    elif init == "normal":
        assert abs(w.mean()) < 0.002 and abs(w.std() - 0.05) < 0.002
    else:
        scale = np.sqrt(3.0 / 350.0)   # uniform(-s, s), s = sqrt(3 / mean(fan_in, fan_out))
        assert w.max() <= scale and w.min() >= -scale and abs(w.std() - scale / np.sqrt(3)) < 0.002
    again = initial_parameters(cfg, 300)
    assert all(np.array_equal(again[k], v) for k, v in p.items())


def test_unknown_init_and_loss_kind_are_named():
    from lr_core.losses import make_loss
    from lr_core.models import initial_parameters

    with pytest.raises(ValueError) as e:
        initial_parameters(LoopConfig(init="he"), 3)
    assert str(e.value) == "init must be xavier, normal or zeros, got 'he'"
    with pytest.raises(ValueError) as e:
        make_loss("poisson")
    assert str(e.value) == "kind must be binary or softmax, got 'poisson'"


def test_single_process_allreduce_returns_a_new_array():
    from lr_core.comm import SingleProcessCommunicator

    a = np.arange(3.0)
    out = SingleProcessCommunicator().allreduce_sum(a, "x")
    assert out is not a and np.array_equal(out, a)
    out[0] = 7.0
    assert a[0] == 0.0
