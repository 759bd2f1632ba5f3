"""Optimizer state as plain arrays and JSON (``lr_core.state``) on real Gluon trainers:
what each optimizer's state looks like, that it round-trips exactly (values, dtypes,
update counters), that a restored trainer continues bit for bit like the original, and
the per-device update counters MXNet keeps."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from lr_core.state import get_optimizer_state, set_optimizer_state

X = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
OPTIMIZERS = {   # name -> (gluon optimizer, params, state layout of each parameter)
    "sgd": ("sgd", {"learning_rate": 0.1, "momentum": 0.0}, "none"),
    "sgd-momentum": ("sgd", {"learning_rate": 0.1, "momentum": 0.9}, "array"),
    "nag": ("nag", {"learning_rate": 0.1, "momentum": 0.9}, "array"),
    "adam": ("adam", {"learning_rate": 0.05, "wd": 0.01}, "tuple2"),
}


def _trainer(name):
    opt, params, _ = OPTIMIZERS[name]
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Zero())
    rng = np.random.default_rng(1)
    for p in net.collect_params().values():
        p.set_data(mx.nd.array(rng.normal(size=p.shape), dtype="float32"))
    return net, gluon.Trainer(net.collect_params(), opt, dict(params), kvstore=None)


def _step(net, trainer, k=1):
    for i in range(k):
        x = mx.nd.array(X * (i + 1))
        with autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(len(X))


def _params(net):
    return [p.data().asnumpy() for p in net.collect_params().values()]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_layout_and_counters_after_three_steps(name):
    net, trainer = _trainer(name)
    _step(net, trainer, 3)
    arrays, meta = get_optimizer_state(trainer)
    kind = OPTIMIZERS[name][2]
    assert meta["layout"] == {"0": kind, "1": kind}
    assert meta["num_update"] == 3
    assert meta["index_update_count"] == {"0": 3, "1": 3}
    want_keys = {"none": set(), "array": {"0", "1"}, "tuple2": {"0.0", "0.1", "1.0", "1.1"}}[kind]
    assert set(arrays) == want_keys
    for a in arrays.values():
        assert isinstance(a, np.ndarray) and a.dtype == np.float32 and np.any(a != 0)
    json.dumps(meta)  # the checkpoint stores it as JSON: plain str keys and ints
    assert all(type(v) is int for v in meta["index_update_count"].values())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_restored_trainer_continues_bit_for_bit(name):
    net, trainer = _trainer(name)
    _step(net, trainer, 3)
    arrays, meta = get_optimizer_state(trainer)
    saved_params = _params(net)

    net2, trainer2 = _trainer(name)
    for p, v in zip(net2.collect_params().values(), saved_params):
        p.set_data(mx.nd.array(v))
    set_optimizer_state(trainer2, arrays, json.loads(json.dumps(meta)), mx.cpu())
    arrays2, meta2 = get_optimizer_state(trainer2)
    assert meta2 == meta
    assert set(arrays2) == set(arrays) and all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)

    _step(net, trainer, 2)
    _step(net2, trainer2, 2)
    for a, b in zip(_params(net), _params(net2)):
        assert np.array_equal(a, b)
    assert get_optimizer_state(trainer2)[1] == get_optimizer_state(trainer)[1]


def test_restoring_without_the_update_counters_is_not_the_same_adam():
    """Adam's bias correction reads the per-index update count: dropping it shows."""
    net, trainer = _trainer("adam")
    _step(net, trainer, 3)
    arrays, meta = get_optimizer_state(trainer)
    saved = _params(net)
    _step(net, trainer)
    net2, trainer2 = _trainer("adam")
    for p, v in zip(net2.collect_params().values(), saved):
        p.set_data(mx.nd.array(v))
    set_optimizer_state(trainer2, arrays, {**meta, "index_update_count": {}}, mx.cpu())
    _step(net2, trainer2)
    assert max(np.max(np.abs(a - b)) for a, b in zip(_params(net), _params(net2))) > 1e-4


@pytest.mark.parametrize("name,keys,kind", [("adam", ("0.0", "0.1", "1.0", "1.1"), "tuple2"),
                                            ("sgd-momentum", ("0", "1"), "array")])
def test_state_dtypes_survive_the_round_trip(name, keys, kind):
    net, trainer = _trainer(name)
    arrays = {k: np.full(2 if k[0] == "1" else (2, 3), 0.5, dtype=np.float64) for k in keys}
    meta = {"num_update": 4, "index_update_count": {"0": 4, "1": 4}, "layout": {"0": kind, "1": kind}}
    set_optimizer_state(trainer, arrays, meta, mx.cpu())
    got, got_meta = get_optimizer_state(trainer)
    assert got_meta == meta
    for k, v in arrays.items():
        assert got[k].dtype == np.float64 and np.array_equal(got[k], v), k


def test_none_layout_and_empty_meta():
    net, trainer = _trainer("sgd")
    set_optimizer_state(trainer, {}, {"layout": {"0": "none", "1": "none"}, "num_update": 2,
                                      "index_update_count": {"0": 2, "1": 2}}, mx.cpu())
    arrays, meta = get_optimizer_state(trainer)
    assert arrays == {} and meta["layout"] == {"0": "none", "1": "none"} and meta["num_update"] == 2
    net, trainer = _trainer("sgd")
    set_optimizer_state(trainer, {}, {}, mx.cpu())    # an empty state: a fresh optimizer
    arrays, meta = get_optimizer_state(trainer)
    assert (arrays, meta) == ({}, {"num_update": 0, "index_update_count": {}, "layout": {}})


def test_update_counters_of_several_devices_merge_to_the_largest():
    net, trainer = _trainer("sgd")
    opt = trainer._optimizer
    opt._all_index_update_counts = {0: {0: 3, 1: 1}, 1: {0: 5}, 2: {1: 4}}
    assert get_optimizer_state(trainer)[1]["index_update_count"] == {"0": 5, "1": 4}
    opt._all_index_update_counts = {0: {0: 5, 1: 0}, 1: {0: 3}}   # a later device with fewer updates
    assert get_optimizer_state(trainer)[1]["index_update_count"] == {"0": 5, "1": 0}


def test_restored_counters_go_to_every_device_and_the_current_one():
    net, trainer = _trainer("adam")
    opt = trainer._optimizer
    opt._all_index_update_counts = {0: {}, 3: {0: 1}}
    set_optimizer_state(trainer, {}, {"num_update": 7, "index_update_count": {"0": 7, "1": 6}, "layout": {}},
                        mx.cpu(2))
    assert opt.num_update == 7
    assert set(opt._all_index_update_counts) == {0, 2, 3}
    for counts in opt._all_index_update_counts.values():
        assert counts == {0: 7, 1: 6}
    assert opt._index_update_count is opt._all_index_update_counts[2]
    # separate dicts: an update on one device does not count on another
    assert opt._all_index_update_counts[0] is not opt._all_index_update_counts[3]


def test_restored_states_are_marked_synced_on_the_context():
    net, trainer = _trainer("sgd-momentum")
    arrays = {"0": np.ones((2, 3), np.float32), "1": np.ones(2, np.float32)}
    set_optimizer_state(trainer, arrays, {"layout": {"0": "array", "1": "array"}}, mx.cpu())
    updater = trainer._updaters[0]
    assert updater.states_synced == {0: True, 1: True}
    assert all(updater.states[i].context == mx.cpu() for i in (0, 1))
