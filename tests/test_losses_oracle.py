"""lr_core's losses, gradients and SGD steps against the NumPy oracle (float64, 1e-5)."""
import numpy as np
import mxnet as mx
import pytest
from mxnet import autograd

import oracle
from lr_core.config import LoopConfig
from lr_core.data import Dataset
from lr_core.losses import make_loss
from lr_core.loop import TrainingLoop
from lr_core.models import initial_parameters
from lr_core.sharding import epoch_permutation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigmoid_bce_and_gradient(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(64, 1))
    y = rng.integers(0, 2, size=64).astype(np.float64)
    zt = mx.nd.array(z, dtype="float64")
    zt.attach_grad()
    with autograd.record():
        loss = make_loss("binary")(zt, mx.nd.array(y[:, None], dtype="float64"))
        total = loss.sum()
    total.backward()
    np.testing.assert_allclose(loss.asnumpy(), oracle.bce_from_logits(z[:, 0], y), atol=1e-5)
    np.testing.assert_allclose(zt.grad.asnumpy()[:, 0], oracle.bce_grad_logits(z[:, 0], y), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_softmax_ce_and_gradient(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(64, 10))
    y = rng.integers(0, 10, size=64)
    zt = mx.nd.array(z, dtype="float64")
    zt.attach_grad()
    with autograd.record():
        loss = make_loss("softmax")(zt, mx.nd.array(y, dtype="float64"))
        total = loss.sum()
    total.backward()
    np.testing.assert_allclose(loss.asnumpy(), oracle.softmax_ce(z, y), atol=1e-5)
    np.testing.assert_allclose(zt.grad.asnumpy(), oracle.softmax_ce_grad_logits(z, y), atol=1e-5)


def _params_list(values, n_layers):
    return [(values[f"lrjob_layer{i}_weight"].astype(np.float64), values[f"lrjob_layer{i}_bias"].astype(np.float64))
            for i in range(n_layers)]


@pytest.mark.parametrize("kind,hidden,classes", [("binary", (), 2), ("softmax", (), 5),
                                                 ("binary", (6, 4), 2), ("softmax", (7,), 4)])
def test_sgd_epoch_matches_oracle(kind, hidden, classes):
    """One epoch of lr_core's loop (short last batch included) equals the oracle's SGD."""
    rng = np.random.default_rng(7)
    n, d = 53, 6
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64) if kind == "binary" else rng.integers(0, classes, size=n)
    data = Dataset(x, y, x[:10], y[:10], source="test")
    cfg = LoopConfig(kind=kind, num_classes=classes, hidden=hidden, epochs=1, batch_size=8,
                     learning_rate=0.3, seed=3)
    loop = TrainingLoop(cfg, data)
    loop.run_epoch(0)
    got = loop.get_params()

    start = _params_list(initial_parameters(cfg, d), len(hidden) + 1)
    perm = epoch_permutation(cfg.seed, 0, n)
    want = oracle.sgd_epoch(start, x.astype(np.float64), y, kind, perm, cfg.batch_size, cfg.learning_rate)
    for i, (w, b) in enumerate(want):
        np.testing.assert_allclose(got[f"lrjob_layer{i}_weight"], w, atol=1e-5)
        np.testing.assert_allclose(got[f"lrjob_layer{i}_bias"], b, atol=1e-5)


def test_train_loss_is_mean_of_per_sample_losses_before_each_step():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=20)
    data = Dataset(x, y, x, y, source="test")
    cfg = LoopConfig(kind="softmax", num_classes=3, epochs=1, batch_size=20, learning_rate=0.1, seed=0)
    start = _params_list(initial_parameters(cfg, 3), 1)
    loop = TrainingLoop(cfg, data)
    m = loop.run_epoch(0)
    z, _ = oracle.mlp_forward(start, x.astype(np.float64))
    assert m["train_loss"] == pytest.approx(oracle.softmax_ce(z, y).mean(), abs=1e-5)
