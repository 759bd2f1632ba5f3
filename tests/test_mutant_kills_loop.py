"""``lr_core.loop`` in-process, where `make mutants` found the fast tests silent: an epoch
trained in segments (mid-epoch checkpoints, docs/design.md "Checkpoints") and resumed
from a state, the seconds and rows an epoch reports (on a counting clock, never the wall
clock), the progress heartbeat, and the features' stored dtype."""
import types

import mxnet as mx
import numpy as np
import pytest

from lr_core import loop as loop_module
from lr_core.comm import SingleProcessCommunicator
from lr_core.config import LoopConfig
from lr_core.data import Dataset
from lr_core.errors import DivergenceError
from lr_core.loop import TrainingLoop, _device_array
from lr_core.sharding import epoch_permutation

CFG = LoopConfig(kind="binary", batch_size=8, learning_rate=0.5, momentum=0.9)


def _data(n=40, n_val=23, d=3, seed=0, dtype=np.float32, order="C"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n_val, d)).astype(np.float32)
    y = (x.sum(axis=1) + rng.normal(size=n + n_val) > 0).astype(np.int64)
    return Dataset(np.asarray(x[:n], dtype=dtype, order=order), y[:n], x[n:], y[n:], source="test")


class _Clock:
    """``time.perf_counter`` for lr_core.loop alone: each reading ``tick`` later than the last."""

    def __init__(self, tick=1.0, start=0.0):
        self.now, self.tick = start - tick, tick

    def perf_counter(self):
        self.now += self.tick
        return self.now


@pytest.fixture
def clock(monkeypatch):
    def install(tick=1.0, start=0.0):
        c = _Clock(tick, start)
        monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
        return c
    return install


def _same_params(a, b):
    pa, pb = a.get_params(), b.get_params()
    return pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


# ---------------------------------------------------------------------------- segments
def test_an_epoch_in_two_segments_is_the_whole_epoch():
    whole = TrainingLoop(CFG, _data())
    w = whole.train_epoch(0)
    seg = TrainingLoop(CFG, _data())
    assert seg.train_epoch(0, stop_step=2) == {"partial": True, "epoch": 1, "step": 2, "steps": 5}
    assert seg.step == 2 and seg.epochs_done == 0
    state = seg.get_state()
    assert state["step"] == 2 and len(state["step_losses"]) == 2
    r = seg.train_epoch(0, start_step=2)
    assert r["train_loss"] == w["train_loss"] and r["steps"] == 5 and r["local_rows"] == 40
    assert r["timed_rows"] == 40                       # both segments ran in this process
    assert seg.step == 0 and seg.epochs_done == 1 and seg.get_state()["step"] == 0
    assert seg.get_state()["step_losses"] == []
    assert _same_params(seg, whole)


def test_a_stop_step_past_the_end_ends_the_epoch():
    loop = TrainingLoop(CFG, _data())
    r = loop.train_epoch(0, stop_step=99)
    assert "partial" not in r and r["steps"] == 5 and loop.epochs_done == 1


def test_a_state_taken_mid_epoch_resumes_the_rest_of_it():
    whole = TrainingLoop(CFG, _data())
    w = whole.train_epoch(0)
    first = TrainingLoop(CFG, _data())
    first.train_epoch(0, stop_step=2)
    resumed = TrainingLoop(CFG, _data())
    resumed.set_state(first.get_state())
    assert resumed.step == 2 and resumed.get_state()["step_losses"] == first.get_state()["step_losses"]
    r = resumed.train_epoch(0, start_step=2)
    assert r["train_loss"] == w["train_loss"]          # the restored steps' losses count
    assert r["timed_rows"] == 40 - 16                  # only steps 3 to 5 ran here
    assert _same_params(resumed, whole)


def test_a_state_without_a_cursor_starts_at_step_zero():
    """A state with no ``step`` or ``step_losses`` (taken between epochs by an older writer)."""
    a = TrainingLoop(CFG, _data())
    a.train_epoch(0)
    state = {k: v for k, v in a.get_state().items() if k not in ("step", "step_losses")}
    b = TrainingLoop(CFG, _data())
    b.set_state(state)
    assert b.step == 0 and b.get_state()["step"] == 0 and b.get_state()["step_losses"] == []
    assert b.train_epoch(1)["train_loss"] == a.train_epoch(1)["train_loss"]


def test_an_abandoned_segment_does_not_leak_into_the_epoch_trained_again_from_step_zero():
    loop = TrainingLoop(CFG, _data())
    loop.train_epoch(0, stop_step=2)                   # abandoned: the epoch is trained again
    ref = TrainingLoop(CFG, _data())
    ref.set_state(loop.get_state() | {"step": 0, "step_losses": []})
    r, want = loop.train_epoch(0), ref.train_epoch(0)
    assert r["train_loss"] == want["train_loss"] and r["timed_rows"] == 40
    assert _same_params(loop, ref)


def test_a_segment_must_start_where_the_loop_is():
    loop = TrainingLoop(CFG, _data())
    with pytest.raises(ValueError) as e:
        loop.train_epoch(2, start_step=3)
    assert str(e.value) == "epoch 3: segment starts at step 3, the loop is at 0"
    assert TrainingLoop(CFG, _data()).get_state()["step"] == 0


def test_run_epoch_returns_a_partial_segment_without_evaluating():
    loop = TrainingLoop(CFG, _data())
    assert loop.run_epoch(0, stop_step=3) == {"partial": True, "epoch": 1, "step": 3, "steps": 5}
    m = loop.run_epoch(0, start_step=3)
    assert m["epoch"] == 1 and "val_loss" in m


# ---------------------------------------------------------------------------- seconds and rows
def test_the_seconds_of_a_segmented_epoch_add_up(clock):
    clock(tick=1.0)
    loop = TrainingLoop(CFG, _data())
    loop.run_epoch(0, stop_step=2)                     # one reading at the start, one at the end
    m = loop.run_epoch(0, start_step=2)
    assert m["train_seconds"] == 2.0                   # the two segments
    assert m["epoch_seconds"] == 3.0                   # and the evaluation's one tick
    assert m["samples_per_s"] == 40 / 2.0


def test_a_resumed_segment_counts_only_its_own_seconds(clock):
    first = TrainingLoop(CFG, _data())
    first.train_epoch(0, stop_step=2)
    resumed = TrainingLoop(CFG, _data())
    resumed.set_state(first.get_state())
    clock(tick=1.0)
    m = resumed.run_epoch(0, start_step=2)
    assert m["train_seconds"] == 1.0 and m["samples_per_s"] == 24 / 1.0


def test_a_new_epoch_starts_its_seconds_at_zero(clock):
    clock(tick=1.0)
    loop = TrainingLoop(CFG, _data())
    loop.run_epoch(0)
    assert loop.run_epoch(1)["train_seconds"] == 1.0


def test_no_measurable_time_gives_zero_samples_per_second(clock):
    clock(tick=0.0)
    m = TrainingLoop(CFG, _data()).run_epoch(0)
    assert m["train_seconds"] == 0.0 and m["samples_per_s"] == 0.0


# ---------------------------------------------------------------------------- progress heartbeat
def _progress_steps(loop, **segment):
    calls = []
    loop.train_epoch(0, progress=lambda s, steps: calls.append(s), **segment)
    return calls


def test_progress_reports_at_least_every_second(clock):
    # 100 steps: a report every 2nd step, and at any step a second after the last report
    data = _data(n=100)
    clock(tick=0.25)                                   # a second is 4 readings: every 2nd step only
    assert _progress_steps(TrainingLoop(LoopConfig(batch_size=1), data)) == list(range(0, 100, 2))
    clock(tick=1.0)                                    # each reading a second later: every step
    assert _progress_steps(TrainingLoop(LoopConfig(batch_size=1), data)) == list(range(100))


def test_a_segment_starting_between_reports_reports_its_first_step(clock):
    loop = TrainingLoop(LoopConfig(batch_size=1), _data(n=100))
    loop.train_epoch(0, stop_step=1)
    clock(tick=0.25, start=0.0)                        # a clock that starts at 0 (perf_counter may)
    assert _progress_steps(loop, start_step=1)[:2] == [1, 2]


# ---------------------------------------------------------------------------- stored features
@pytest.mark.parametrize("dtype,order,stored", [(np.float32, "C", np.float32), (np.float32, "F", np.float32),
                                                (np.float64, "C", np.float32), (np.uint8, "C", np.uint8)])
def test_features_are_held_in_their_stored_dtype_and_train_alike(dtype, order, stored):
    ref_data = _data()
    data = _data(dtype=dtype, order=order)
    if dtype is np.uint8:
        x = (np.abs(ref_data.x_train) * 40).astype(np.uint8)
        data = Dataset(np.asarray(x, order=order), ref_data.y_train, ref_data.x_val, ref_data.y_val, source="test",
                       scale=1 / 40)
        ref_data = Dataset(x.astype(np.float32) * np.float32(1 / 40), ref_data.y_train, ref_data.x_val,
                           ref_data.y_val, source="test")
    loop, ref = TrainingLoop(CFG, data), TrainingLoop(CFG, ref_data)
    assert loop.x.dtype == stored and loop.x.shape == data.x_train.shape
    assert loop.run_epoch(0)["train_loss"] == pytest.approx(ref.run_epoch(0)["train_loss"], rel=1e-6)
    for k, v in ref.get_params().items():
        np.testing.assert_allclose(loop.get_params()[k], v, rtol=1e-5, atol=1e-6)


def test_no_rows_make_an_empty_array_of_their_dtype():
    for dtype in (np.float32, np.uint8):
        a = _device_array(np.zeros((0, 3), dtype=dtype), mx.cpu())
        assert a.shape == (0, 3) and a.dtype == dtype


def test_the_position_is_the_step_being_run_then_the_end():
    """(epoch, step) of this rank, both 0-based: what a Horovod worker reports for blaming a hang."""
    seen = []

    class Watching(SingleProcessCommunicator):  # each step's update, on the training thread
        def step(self, trainer, global_batch_size):
            seen.append(loop.position)
            super().step(trainer, global_batch_size)
    loop = TrainingLoop(CFG, _data(), comm=Watching())
    assert loop.position == (-1, 0)
    loop.train_epoch(1, stop_step=3)
    assert seen == [(1, 0), (1, 1), (1, 2)] and loop.position == (1, 3)
    loop.train_epoch(1, start_step=3)
    assert loop.position == (1, 5)


class _ThirdRank(SingleProcessCommunicator):
    """Rank 2 of 3 (the other ranks' sums are zero here): with global batches of 2 rows it
    never has a row of its own."""

    rank, size, local_rank = 2, 3, 0


@pytest.mark.parametrize("class_weight,standardize", [("balanced", False), ("balanced", True), (None, True)])
def test_a_rank_without_rows_joins_with_a_zero_gradient_on_weighted_standardized_rows(class_weight, standardize):
    data = _data(n=10)
    if standardize:
        data = Dataset(data.x_train, data.y_train, data.x_val, data.y_val, source="test",
                       stats={"mean": [0.5, -0.25, 1.0], "std": [2.0, 0.5, 1.0], "constant": []})
    cfg = LoopConfig(kind="binary", batch_size=2, learning_rate=0.5, class_weight=class_weight)
    loop = TrainingLoop(cfg, data, comm=_ThirdRank())
    before = loop.get_params()
    tr = loop.train_epoch(0)
    assert tr["local_rows"] == 0 and tr["steps"] == 5 and tr["train_loss"] == 0.0
    assert all(np.array_equal(v, before[k]) for k, v in loop.get_params().items())
    assert loop.trainer._optimizer.num_update == 5


def test_divergence_inside_a_resumed_segment_names_its_step():
    data = _data(n=12)
    x = data.x_train.copy()
    cfg = LoopConfig(kind="binary", batch_size=1, learning_rate=0.1, seed=3)
    at = 9                                            # 0-based step of the bad row
    x[int(epoch_permutation(3, 0, 12)[at])] = np.inf
    loop = TrainingLoop(cfg, Dataset(x, data.y_train, data.x_val, data.y_val, source="test"))
    loop.train_epoch(0, stop_step=6)
    with pytest.raises(DivergenceError) as e:
        loop.train_epoch(0, start_step=6)
    msg = str(e.value)
    assert not np.isfinite(float(msg.split()[2]))      # the bad step's own loss
    assert msg.endswith(f" at epoch 1, step {at + 1} of 12; lower train.learning_rate (now 0.1) or check the "
                        f"data scale")


def test_in_memory_float32_features_are_a_view_not_a_copy():
    """design.md: N workers on a node hold the dataset once: the loop's NDArray is the rows' own memory."""
    data = _data()
    alias = data.x_train.view()                       # MXNet marks the array it shares read-only
    loop = TrainingLoop(CFG, data)
    alias[0, 0] = 42.0
    assert loop.x[0, 0].asscalar() == 42.0
