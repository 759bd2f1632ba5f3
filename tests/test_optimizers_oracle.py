"""lr_core's training loop against the float64 NumPy oracle over several epochs.

Three epochs, each in the order of ``epoch_permutation(seed, epoch, n)``, with a short
last batch (53 rows in batches of 8: the last has 5); the optimizers as a job configures
them (``train.optimizer``, ``train.momentum``, ``train.weight_decay`` through
``optimizer_params``); binary and softmax, with and without a hidden layer. Checked: the
parameters after the last epoch, the reported ``train_loss`` of every epoch (the mean over
all n rows of the loss each row had before its step) and the validation metrics.
"""
from functools import lru_cache

import numpy as np
import pytest

import oracle
from lr_core.config import LoopConfig
from lr_core.data import Dataset
from lr_core.loop import TrainingLoop
from lr_core.models import initial_parameters
from lr_core.sharding import epoch_permutation

N_TRAIN, N_VAL, FEATURES, BATCH, EPOCHS, SEED = 53, 17, 6, 8, 3, 5
PARAM_ATOL = 1e-5   # float32 training against float64
LOSS_ATOL = 1e-5

MODELS = {                      # kind, hidden, classes
    "binary": ("binary", (), 2),
    "softmax": ("softmax", (), 4),
    "binary-hidden": ("binary", (5,), 2),
    "softmax-hidden": ("softmax", (6,), 3),
}
OPTIMIZERS = {                  # train.optimizer, learning_rate, momentum
    "sgd": ("sgd", 0.3, 0.0),
    "sgd-momentum": ("sgd", 0.1, 0.9),
    "nag": ("nag", 0.1, 0.9),
    "adam": ("adam", 0.02, 0.0),
}
WEIGHT_DECAYS = (0.0, 0.05)

CASES = [pytest.param(m, o, wd, id=f"{m}-{o}-wd{wd:g}")
         for m in MODELS for o in OPTIMIZERS for wd in WEIGHT_DECAYS]

assert N_TRAIN % BATCH, "the last batch must be short"


@lru_cache(maxsize=None)
def _data(model: str) -> Dataset:
    kind, _, classes = MODELS[model]
    rng = np.random.default_rng(11 + list(MODELS).index(model))
    n = N_TRAIN + N_VAL
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    if kind == "binary":
        y = (x @ rng.normal(size=FEATURES) + rng.normal(size=n) > 0).astype(np.int64)
    else:
        y = (x @ rng.normal(size=(FEATURES, classes)) + rng.normal(size=(n, classes))).argmax(axis=1)
    return Dataset(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:], source="test")


def _config(model: str, opt: str, wd: float) -> LoopConfig:
    kind, hidden, classes = MODELS[model]
    name, lr, momentum = OPTIMIZERS[opt]
    return LoopConfig(kind=kind, num_classes=classes, hidden=hidden, epochs=EPOCHS, batch_size=BATCH,
                      learning_rate=lr, optimizer=name, momentum=momentum, weight_decay=wd, seed=SEED)


@lru_cache(maxsize=None)
def _lrjob_run(model: str, opt: str, wd: float):
    """lr_core's parameters after EPOCHS epochs and its per-epoch metrics."""
    loop = TrainingLoop(_config(model, opt, wd), _data(model))
    history = [loop.run_epoch(e) for e in range(EPOCHS)]
    return loop.get_params(), history


def _oracle_run(cfg: LoopConfig, data: Dataset, epochs: int = EPOCHS, *, momentum=None, wd=None, divisor=None,
                schedule=None):
    """The oracle's run of ``cfg`` (optionally with a different momentum, weight decay or
    gradient divisor, to show how far a wrong rule lands; with a learning-rate ``schedule``)."""
    values = initial_parameters(cfg, data.num_features)
    start = [(values[f"lrjob_layer{i}_weight"].astype(np.float64), values[f"lrjob_layer{i}_bias"].astype(np.float64))
             for i in range(len(cfg.hidden) + 1)]
    opt = oracle.make_optimizer(cfg.optimizer, cfg.learning_rate,
                                cfg.momentum if momentum is None else momentum,
                                cfg.weight_decay if wd is None else wd)
    perms = [epoch_permutation(cfg.seed, e, len(data.x_train)) for e in range(epochs)]
    return oracle.train(start, data.x_train.astype(np.float64), data.y_train, cfg.kind, perms, cfg.batch_size, opt,
                        data.x_val.astype(np.float64), data.y_val, divisor=divisor, schedule=schedule)


def _max_param_diff(got: dict, want: list) -> float:
    return max(max(np.max(np.abs(got[f"lrjob_layer{i}_weight"] - w)), np.max(np.abs(got[f"lrjob_layer{i}_bias"] - b)))
               for i, (w, b) in enumerate(want))


@pytest.mark.parametrize("model,opt,wd", CASES)
def test_parameters_after_three_epochs_match_oracle(model, opt, wd):
    got, _ = _lrjob_run(model, opt, wd)
    want, _ = _oracle_run(_config(model, opt, wd), _data(model))
    for i, (w, b) in enumerate(want):
        np.testing.assert_allclose(got[f"lrjob_layer{i}_weight"], w, rtol=0, atol=PARAM_ATOL,
                                   err_msg=f"layer {i} weight")
        np.testing.assert_allclose(got[f"lrjob_layer{i}_bias"], b, rtol=0, atol=PARAM_ATOL,
                                   err_msg=f"layer {i} bias")


@pytest.mark.parametrize("model,opt,wd", CASES)
def test_reported_losses_match_oracle(model, opt, wd):
    """train_loss = (sum over batches of the batch's summed losses) / n, each row's loss
    taken before its step; not the mean of the per-batch means, which the short last
    batch makes a different number. val_loss and val_accuracy with the epoch's final
    parameters."""
    _, history = _lrjob_run(model, opt, wd)
    _, want = _oracle_run(_config(model, opt, wd), _data(model))
    assert len(history) == len(want) == EPOCHS
    for e, (h, o) in enumerate(zip(history, want)):
        # the check can tell the two definitions apart in this epoch
        assert abs(o["mean_of_batch_means"] - o["train_loss"]) > 10 * LOSS_ATOL, e
        assert h["train_loss"] == pytest.approx(o["train_loss"], abs=LOSS_ATOL), f"epoch {e + 1} train_loss"
        assert h["val_loss"] == pytest.approx(o["val_loss"], abs=LOSS_ATOL), f"epoch {e + 1} val_loss"
        assert h["val_accuracy"] == pytest.approx(o["val_accuracy"], abs=1e-12), f"epoch {e + 1} val_accuracy"


@pytest.mark.parametrize("opt", ["sgd-momentum", "nag", "adam"])
@pytest.mark.parametrize("model", ["softmax", "binary-hidden"])
def test_neighbouring_rules_land_far_outside_the_tolerance(model, opt):
    """The comparison above can fail: dropping the momentum, dropping the weight decay or
    dividing the short last batch by the nominal batch size moves the parameters by far
    more than PARAM_ATOL."""
    wd = 0.05
    cfg = _config(model, opt, wd)
    got, _ = _lrjob_run(model, opt, wd)
    variants = {"no weight decay": {"wd": 0.0}, "nominal divisor": {"divisor": BATCH}}
    if cfg.momentum:
        variants["no momentum"] = {"momentum": 0.0}
    for name, change in variants.items():
        wrong, _ = _oracle_run(cfg, _data(model), **change)
        assert _max_param_diff(got, wrong) > 100 * PARAM_ATOL, name


@pytest.mark.parametrize("opt", ["nag", "adam"])
def test_resume_from_state_continues_the_same_run(opt):
    """Two epochs, ``get_state``, a fresh loop, ``set_state``, the third epoch: the
    oracle's three uninterrupted epochs (momentum buffers, Adam's moments and its update
    count all carried over). Restoring the parameters alone lands far off."""
    model, wd = "softmax-hidden", 0.05
    cfg, data = _config(model, opt, wd), _data(model)
    first = TrainingLoop(cfg, data)
    for e in range(2):
        first.run_epoch(e)
    state = first.get_state()
    want, want_hist = _oracle_run(cfg, data)

    resumed = TrainingLoop(cfg, data)
    resumed.set_state(state)
    m = resumed.run_epoch(2)
    assert _max_param_diff(resumed.get_params(), want) <= PARAM_ATOL
    assert m["train_loss"] == pytest.approx(want_hist[2]["train_loss"], abs=LOSS_ATOL)

    params_only = TrainingLoop(cfg, data)
    params_only.set_params(state["params"])
    params_only.run_epoch(2)
    assert _max_param_diff(params_only.get_params(), want) > 100 * PARAM_ATOL
