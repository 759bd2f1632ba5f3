"""One worker's training loop (``lr_core.loop``) on tiny data, in-process: the record an
epoch reports (each validation metric recomputed from the trained network), progress
callbacks, the step fault point, the divergence message naming the first bad step, a rank
that has no rows in any global batch; and ``fit``, the optimizer's parameters, the state
and batched prediction."""
import time
import warnings

import mxnet as mx
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lr_core import faults
from lr_core.comm import SingleProcessCommunicator
from lr_core.config import LoopConfig
from lr_core.data import Dataset
from lr_core.errors import DivergenceError
from lr_core.loop import TrainingLoop, fit, optimizer_params, predict_logits
from lr_core.metrics import from_logits
from lr_core.sharding import epoch_permutation


def _data(kind="binary", n=40, n_val=23, d=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_val, d)).astype(np.float32)
    if kind == "binary":
        y = (x.sum(axis=1) + rng.normal(size=n + n_val) > 0).astype(np.int64)
    else:
        y = (x @ rng.normal(size=(d, classes)) + rng.normal(size=(n + n_val, classes))).argmax(axis=1)
    return Dataset(x[:n], y[:n], x[n:], y[n:], source="test")


def _val_truth(loop, kind):
    import mxnet as mx

    logits = predict_logits(loop.net, mx.nd.array(loop.data.x_val))
    pred, prob, losses = from_logits(kind, logits, loop.cfg.threshold, loop.data.y_val)
    return pred, prob, losses


def test_a_binary_epoch_record():
    cfg = LoopConfig(kind="binary", batch_size=8, learning_rate=0.5, threshold=0.45)
    data = _data("binary")
    loop = TrainingLoop(cfg, data)
    m = loop.run_epoch(0)
    assert set(m) == {"epoch", "train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
                      "val_auc", "tp", "fp", "fn", "tn", "epoch_seconds", "train_seconds", "samples_per_s", "steps"}
    pred, prob, losses = _val_truth(loop, "binary")
    y = data.y_val
    assert m["epoch"] == 1 and m["steps"] == 5
    assert m["val_loss"] == pytest.approx(losses.mean(), rel=1e-6)
    assert m["val_accuracy"] == pytest.approx(np.mean(pred == y))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (int(((pred == 1) & (y == 1)).sum()),
                                                    int(((pred == 1) & (y == 0)).sum()),
                                                    int(((pred == 0) & (y == 1)).sum()),
                                                    int(((pred == 0) & (y == 0)).sum()))
    assert m["val_auc"] == pytest.approx(roc_auc_score(y, prob), rel=1e-9)
    assert 0 < m["train_seconds"] <= m["epoch_seconds"]  # an order, not a time limit
    assert m["samples_per_s"] == pytest.approx(40 / m["train_seconds"])
    assert loop.epochs_done == 1


def test_a_softmax_epoch_record():
    cfg = LoopConfig(kind="softmax", num_classes=3, batch_size=8, learning_rate=0.5)
    data = _data("softmax")
    loop = TrainingLoop(cfg, data)
    m = loop.run_epoch(0)
    assert set(m) == {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "per_class_recall",
                      "confusion", "epoch_seconds", "train_seconds", "samples_per_s", "steps"}
    pred, _, losses = _val_truth(loop, "softmax")
    assert m["val_loss"] == pytest.approx(losses.mean(), rel=1e-6)
    want = np.zeros((3, 3), dtype=int)
    np.add.at(want, (data.y_val, pred), 1)
    assert m["confusion"] == want.tolist()


def test_train_loss_is_the_mean_loss_before_each_step():
    cfg = LoopConfig(kind="binary", batch_size=40, learning_rate=0.5)   # one step: the loss before it
    data = _data("binary")
    loop = TrainingLoop(cfg, data)
    import mxnet as mx

    logits = predict_logits(loop.net, mx.nd.array(data.x_train))
    _, _, before = from_logits("binary", logits, 0.5, data.y_train)
    tr = loop.train_epoch(0)
    assert tr["train_loss"] == pytest.approx(before.mean(), rel=1e-6)
    assert tr["steps"] == 1 and tr["local_rows"] == 40


@pytest.mark.parametrize("n,batch,want", [(30, 1, list(range(30))), (120, 1, list(range(0, 120, 2))),
                                          (100, 1, list(range(0, 100, 2))), (7, 2, [0, 1, 2, 3])])
def test_progress_is_called_about_50_times(n, batch, want):
    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=batch), _data("binary", n=n))
    calls = []
    loop.run_epoch(0, progress=lambda s, steps: calls.append((s, steps)))
    steps = -(-n // batch)
    assert calls == [(s, steps) for s in want]


def test_the_training_thread_never_waits_for_a_report():
    """Reports are confirmed by a thread of their own (docs/design.md#progress-and-the-device): a
    report that takes its time does not hold the training thread, which queues every step, and
    each report still names the steps before it."""
    import threading
    import time

    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=1), _data("binary", n=120))
    seen, deadline = [], time.monotonic() + 10

    def progress(done, steps):
        while loop.position[1] < steps - 1 and time.monotonic() < deadline:  # the last step queued
            time.sleep(0.001)
        seen.append((done, loop.position[1], threading.current_thread() is threading.main_thread()))

    loop.run_epoch(0, progress=progress)
    assert [d for d, _, _ in seen] == list(range(0, 120, 2))
    assert all(pos == 119 and not main for _, pos, main in seen)


def test_a_report_s_error_is_raised_by_the_epoch_and_none_comes_after():
    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=1), _data("binary", n=120))
    seen = []

    def progress(done, steps):
        seen.append(done)
        if done == 4:
            raise ValueError("the bar broke")

    with pytest.raises(ValueError, match="the bar broke"):
        loop.run_epoch(0, progress=progress)
    assert seen == [0, 2, 4]


class _Gate(mx.operator.CustomOp):
    """The identity, taking 2 ms on the device's timeline, counting how many times it ran."""

    finished = 0

    def forward(self, is_train, req, in_data, out_data, aux):
        time.sleep(0.002)
        _Gate.finished += 1
        self.assign(out_data[0], req[0], in_data[0])

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        pass


@mx.operator.register("lrjob_test_gate")
class _GateProp(mx.operator.CustomOpProp):
    def __init__(self):
        super().__init__(need_top_grad=False)

    def infer_shape(self, in_shape):
        return in_shape, [in_shape[0]], []

    def create_operator(self, ctx, shapes, dtypes):
        return _Gate()


class _SlowDevice(SingleProcessCommunicator):
    """Every update is followed on the device by ``_Gate`` on the first weight, which the next
    step's forward pass reads: the device is slower than the host, and ``_Gate.finished`` counts
    the steps it has finished. ``gaps``: on the training thread, as each step is queued, how many
    steps it is ahead of the device."""

    def __init__(self):
        super().__init__()
        mx.nd.waitall()  # a gate an earlier loop left queued counts before the reset, not after
        _Gate.finished, self.gaps, self.loop = 0, [], None

    def step(self, trainer, global_batch_size):
        self.gaps.append(self.loop.position[1] - _Gate.finished)
        super().step(trainer, global_batch_size)
        w = trainer._params[0].data()
        w[:] = mx.nd.Custom(w, op_type="lrjob_test_gate")


class _SlowThirdRank(_SlowDevice):
    rank, size, local_rank = 2, 3, 0


def _slow_loop(comm, n=120, batch=1):
    comm.loop = TrainingLoop(LoopConfig(kind="binary", batch_size=batch), _data("binary", n=n), comm=comm)
    return comm.loop


def test_a_report_comes_once_the_device_has_run_the_steps_before_it():
    loop = _slow_loop(_SlowDevice())
    early = []

    def progress(done, steps):  # step done - 1's forward pass read the weights of step done - 2
        if _Gate.finished < done - 1:
            early.append((done, _Gate.finished))
    loop.run_epoch(0, progress=progress)
    assert _Gate.finished == 120 and early == []


@pytest.mark.parametrize("comm,batch,from_file", [(_SlowDevice, 1, False), (_SlowThirdRank, 2, False),
                                                   (_SlowDevice, 1, True)])
def test_the_host_runs_at_most_run_ahead_steps_ahead_of_its_device(monkeypatch, tmp_path, comm, batch, from_file):
    """Also on a rank without rows (whose steps' loss sums are a shared zero), and with rows read
    from the file row by row, where RESIDENT_BYTES of rows (here 8 rows) bound it."""
    import lr_core.loop as loop_module
    from lr_core import prepared

    monkeypatch.setattr(loop_module, "RUN_AHEAD", 16)
    if from_file:
        monkeypatch.setattr(prepared, "_free_memory", lambda: 0)  # row by row
        monkeypatch.setattr(loop_module, "RESIDENT_BYTES", 8 * 3 * 4)  # 8 rows of 3 float32
    c = comm()
    data = _data("binary", n=240)
    if from_file:
        x = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=data.x_train.shape)
        x[:] = data.x_train
        x.flush()
        data = Dataset(np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=x.shape), data.y_train,
                       data.x_val, data.y_val, source="test")
    c.loop = loop = TrainingLoop(LoopConfig(kind="binary", batch_size=batch), data, comm=c)
    ahead = 8 if from_file else 16
    assert loop.run_ahead == ahead
    loop.train_epoch(0)
    # the wait at step s (every ahead / 2 steps) is for step s - ahead / 2's forward pass, which
    # read the weights after the gate of the step before it: at most ahead - 1 steps on the device
    assert len(c.gaps) == 240 // batch and max(c.gaps) <= ahead - 1, c.gaps


def test_reports_come_at_least_four_times_between_the_host_s_waits(monkeypatch):
    """A host waiting for its device every RUN_AHEAD / 2 steps has posted reports for that time:
    400 steps would report every 8th, but the host waits every 8 steps here: every 2nd."""
    import lr_core.loop as loop_module

    monkeypatch.setattr(loop_module, "RUN_AHEAD", 16)
    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=1), _data("binary", n=400))
    calls = []
    loop.train_epoch(0, progress=lambda done, steps: calls.append(done))
    assert calls == list(range(0, 400, 2))


def test_no_report_comes_after_an_epoch_raised(monkeypatch):
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", {"at": "step", "epoch": 1, "step": 5, "action": "raise"})
    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=1), _data("binary", n=120))
    calls = []

    def slow(done, steps):  # 3 reports (0, 2, 4) of 0.6 s: the epoch stops waiting for them after 1 s
        time.sleep(0.6)
        calls.append(done)
    with pytest.raises(RuntimeError, match="injected fault"):
        loop.run_epoch(0, progress=slow)
    seen = list(calls)                                 # the report running when it gave up has ended
    time.sleep(1.0)                                    # longer than a report: none follows
    assert calls == seen and len(seen) < 3, (seen, calls)


def test_rows_read_from_the_file_bound_what_the_host_queues(tmp_path, monkeypatch):
    """Each queued step holds the rows it read: at most RESIDENT_BYTES of them (64 MiB)."""
    from lr_core import loop as loop_module, prepared

    monkeypatch.setattr(prepared, "_free_memory", lambda: 0)  # too large to read whole: row by row
    width, n = 4096, 64                                      # 16 KiB a row
    with open(tmp_path / "x.bin", "wb") as f:
        f.truncate(n * width * 4)
    x = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=(n, width))
    data = Dataset(x, np.arange(n) % 2, np.zeros((2, width), np.float32), np.array([0, 1]), source="test")
    ahead = {b: TrainingLoop(LoopConfig(kind="binary", batch_size=b), data).run_ahead for b in (8, 1024, 8192)}
    assert ahead == {8: 512, 1024: 4, 8192: 2}               # 128 KiB, 16 MiB and 128 MiB a step
    assert TrainingLoop(LoopConfig(kind="binary", batch_size=8), _data("binary")).run_ahead == loop_module.RUN_AHEAD


def test_a_device_error_is_raised_by_the_epoch_with_reports_on():
    """MXNet raises a device error to its first reader only: the reporting thread must hand it on."""
    class Failing(SingleProcessCommunicator):
        steps = 0

        def step(self, trainer, global_batch_size):
            super().step(trainer, global_batch_size)
            Failing.steps += 1
            if Failing.steps == 10:
                w = trainer._params[0].data()
                w[:] = mx.nd.random.normal(0, -1, shape=w.shape)  # fails on the device
    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=1), _data("binary", n=120), comm=Failing())
    with pytest.raises(mx.base.MXNetError):
        loop.run_epoch(0, progress=lambda done, steps: None)


def test_a_device_error_is_raised_before_an_error_that_followed_it(monkeypatch):
    """The device fails at step 10; the training thread then raises at step 13 (a lost peer, say):
    the epoch raises the device's error, the first cause, with the later one as its context."""
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", {"at": "step", "epoch": 1, "step": 13, "action": "raise"})

    class Failing(SingleProcessCommunicator):
        def step(self, trainer, global_batch_size):
            super().step(trainer, global_batch_size)
            if trainer._optimizer.num_update == 10:
                w = trainer._params[0].data()
                w[:] = mx.nd.random.normal(0, -1, shape=w.shape)  # fails on the device
    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=1), _data("binary", n=120), comm=Failing())
    with pytest.raises(mx.base.MXNetError) as e:
        loop.run_epoch(0, progress=lambda done, steps: None)
    assert "injected fault" in str(e.value.__context__)


def test_the_step_fault_point_names_epoch_step_and_rank(monkeypatch):
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", {"at": "step", "epoch": 2, "step": 3, "action": "raise"})
    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=8), _data("binary"))
    loop.run_epoch(0)
    calls = []
    with pytest.raises(RuntimeError) as e:
        loop.run_epoch(1, progress=lambda s, steps: calls.append(s))
    assert str(e.value) == "injected fault at step {'epoch': 2, 'step': 3, 'rank': 0}"
    assert calls == [0, 1, 2]                        # before the update of step 3 (1-based)


def test_divergence_names_the_first_bad_step():
    data = _data("binary", n=12)
    x = data.x_train.copy()
    bad = 5
    x[bad] = np.inf                               # its loss is not finite
    data = Dataset(x, data.y_train, data.x_val, data.y_val, source="test")
    cfg = LoopConfig(kind="binary", batch_size=1, learning_rate=0.1, seed=3)
    at = int(np.flatnonzero(epoch_permutation(3, 1, 12) == bad)[0])
    with pytest.raises(DivergenceError) as e:
        TrainingLoop(cfg, data).train_epoch(1)
    msg = str(e.value)
    assert msg.startswith("loss became ")
    assert msg.endswith(f" at epoch 2, step {at + 1} of 12; lower train.learning_rate (now 0.1) or check the "
                        f"data scale")


class _ThirdRank(SingleProcessCommunicator):
    """Rank 2 of 3 (the other ranks' sums are zero here): with global batches of 2 rows
    it never has a row of its own."""

    rank, size, local_rank = 2, 3, 0


def test_a_rank_without_rows_steps_with_a_zero_gradient():
    cfg = LoopConfig(kind="binary", batch_size=2, learning_rate=0.5)
    loop = TrainingLoop(cfg, _data("binary", n=10), comm=_ThirdRank())
    before = loop.get_params()
    tr = loop.train_epoch(0)
    assert tr["local_rows"] == 0 and tr["steps"] == 5 and tr["train_loss"] == 0.0
    for name, value in loop.get_params().items():
        assert np.array_equal(value, before[name]), name
    assert loop.trainer._optimizer.num_update == 5        # it joined every step


def test_a_binary_model_ignores_num_classes():
    loop = TrainingLoop(LoopConfig(kind="binary", num_classes=5, batch_size=8), _data("binary"))
    m = loop.run_epoch(0)
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == 23 and "val_auc" in m


def test_recorded_shards_are_the_plan():
    from lr_core.sharding import local_plan

    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=8, seed=4), _data("binary"), record_shards=True)
    loop.run_epoch(0)
    loop.run_epoch(1)
    for e in (0, 1):
        want = local_plan(epoch_permutation(4, e, 40), 8, 0, 1)[0]
        assert loop.shard_log[e].tolist() == want.tolist()
    plain = TrainingLoop(LoopConfig(kind="binary"), _data("binary"))
    assert plain.epochs_done == 0 and plain.get_state()["epochs_done"] == 0
    plain.run_epoch(0)
    assert plain.shard_log == {} and plain.record_shards is False    # only when asked


# ---------------------------------------------------------------------------- fit, state and helpers
def _small_data(n=24, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 8, d)).astype(np.float32)
    y = (x.sum(axis=1) > 0).astype(np.int64)
    return Dataset(x[:n], y[:n], x[n:], y[n:], source="test")


@pytest.mark.parametrize("opt,momentum,want", [
    ("sgd", 0.9, {"learning_rate": 0.2, "wd": 0.01, "momentum": 0.9}),
    ("nag", 0.5, {"learning_rate": 0.2, "wd": 0.01, "momentum": 0.5}),
    ("adam", 0.9, {"learning_rate": 0.2, "wd": 0.01}),
])
def test_only_sgd_and_nag_take_momentum(opt, momentum, want):
    cfg = LoopConfig(optimizer=opt, momentum=momentum, learning_rate=0.2, weight_decay=0.01)
    assert optimizer_params(cfg) == want


def test_predict_logits_in_batches_and_on_no_rows():
    import mxnet as mx

    loop = TrainingLoop(LoopConfig(kind="softmax", num_classes=3, hidden=(4,), batch_size=8), _small_data())
    x = mx.nd.array(np.random.default_rng(1).normal(size=(10, 3)), dtype="float32")
    whole = predict_logits(loop.net, x)
    assert whole.shape == (10, 3) and whole.dtype == np.float32
    assert np.array_equal(predict_logits(loop.net, x, batch=3), whole)
    assert np.array_equal(predict_logits(loop.net, x, batch=10), whole)
    empty = predict_logits(loop.net, x[0:0])
    assert empty.shape == (0, 1) and empty.dtype == np.float32


def test_fit_trains_the_remaining_epochs_from_a_state():
    cfg = LoopConfig(kind="binary", epochs=3, batch_size=8, learning_rate=0.3)
    data = _small_data()
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
    class Counting(SingleProcessCommunicator):
        steps = 0

        def step(self, trainer, global_batch_size):
            Counting.steps += 1
            super().step(trainer, global_batch_size)

    cfg = LoopConfig(kind="binary", epochs=2, batch_size=8)
    loop, _ = fit(cfg, _small_data(), comm=Counting())
    assert Counting.steps == 2 * 3 and isinstance(loop.comm, Counting)


def test_set_state_restores_the_epoch_count():
    cfg = LoopConfig(kind="softmax", num_classes=2, epochs=2, batch_size=8, optimizer="adam", learning_rate=0.05)
    a = TrainingLoop(cfg, _small_data())
    a.run_epoch(0)
    a.run_epoch(1)
    state = a.get_state()
    b = TrainingLoop(cfg, _small_data())
    b.set_state({**state, "epochs_done": np.int64(2)})
    assert b.epochs_done == 2 and type(b.epochs_done) is int
    assert all(np.array_equal(b.get_params()[k], v) for k, v in a.get_params().items())


def test_parameters_that_overflow_in_the_last_step_are_a_divergence():
    """The one step's loss is finite (the initial parameters), but its update overflows
    float32: the validation loss is not finite, and the epoch must fail rather than be
    reported (and exported) as if it had trained."""
    data = _data("binary", n=12)
    x = data.x_train.copy()
    x[0] = -1e37         # finite, misclassified (label 0, logit +1e37): its gradient times the rate is not
    data = Dataset(x, data.y_train, data.x_val, data.y_val, source="test")
    cfg = LoopConfig(kind="binary", batch_size=12, learning_rate=1000.0, seed=3)
    loop = TrainingLoop(cfg, data)
    assert np.isfinite(loop.train_epoch(0)["train_loss"])       # the step itself saw finite numbers
    loop = TrainingLoop(cfg, data)
    with warnings.catch_warnings(), pytest.raises(DivergenceError) as e:
        warnings.simplefilter("error", RuntimeWarning)   # the error alone, no NumPy warning beside it
        loop.run_epoch(0)
    assert str(e.value).startswith("the validation loss became ") and " after epoch 1 (the parameters are no " \
        "longer finite); lower train.learning_rate (now 1000)" in str(e.value)
