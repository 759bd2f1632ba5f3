"""Resume proves that it resumed, and checkpoints are kept as the spec says.

Training is deterministic, so "resumed" and "retrained from scratch" end with the same
parameters: these tests count the epochs a resumed run executes, check that the
finished epochs' records survive unchanged, and alter a checkpoint on purpose to see
the result move exactly as predicted.
"""
import json

import numpy as np
import pytest

from launcher.backends import InProcessBackend
from launcher.rundir import latest_checkpoint, list_checkpoints
from launcher.driver import DriverOptions, run_job
from launcher.spec import load_spec
from lr_core.errors import WorkerFailure
from lr_core.loop import TrainingLoop

JOB = "jobs/digits_softmax.yaml"
# momentum: the optimizer state matters too, so a resume that loses it is visible.
BASE = ["resources.workers=0", "train.momentum=0.9", "train.learning_rate=0.05"]


def _spec(*extra):
    return load_spec(JOB, [*BASE, *extra])


class _CountingBackend(InProcessBackend):
    """The in-process backend, recording which epochs it was asked to run."""

    def __init__(self, spec, ran: list):
        super().__init__(spec.loop_config(), spec.load_data())
        self.ran = ran

    def run_epoch(self, epoch, progress=None, timeout_s=None, **segment):
        self.ran.append(epoch)
        return super().run_epoch(epoch, progress, timeout_s, **segment)


def _counting_run(spec, ran, **kw):
    return run_job(spec, options=DriverOptions(backend_factory=lambda: _CountingBackend(spec, ran)), **kw)


def test_resume_runs_only_the_remaining_epochs_and_keeps_the_earlier_records(tmp_path):
    part_ran, ran = [], []
    _counting_run(_spec("train.epochs=3"), part_ran, output=tmp_path / "run")
    first_lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    resumed = _counting_run(_spec("train.epochs=6"), ran, resume=tmp_path / "run")

    assert part_ran == [0, 1, 2]
    assert ran == [3, 4, 5], "a resumed run executes only the epochs that remain"
    # The finished epochs' records, timings included, are the first run's, not new ones.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert lines[:3] == first_lines and len(lines) == 6
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3, 4, 5, 6]
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["resumed_from"].endswith("epoch-0003")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 6


def test_resume_at_the_end_runs_nothing(tmp_path):
    ran = []
    done = run_job(_spec("train.epochs=2"), output=tmp_path / "run")
    again = _counting_run(_spec("train.epochs=2"), ran, resume=tmp_path / "run")
    assert ran == []
    for name in done.params:
        assert np.array_equal(done.params[name], again.params[name]), name


def test_an_altered_checkpoint_changes_the_result_as_predicted(tmp_path):
    full = run_job(_spec("train.epochs=5"), output=tmp_path / "full")
    run_job(_spec("train.epochs=3"), output=tmp_path / "part")
    ckpt = latest_checkpoint(tmp_path / "part")
    assert ckpt["epochs_done"] == 3
    altered = {k: (v * 0.5 + 0.01).astype(v.dtype) for k, v in ckpt["params"].items()}
    np.savez(tmp_path / "part" / "checkpoints" / "epoch-0003" / "params.npz", **altered)

    resumed = run_job(_spec("train.epochs=5"), resume=tmp_path / "part")

    # Prediction: the same loop, started from the altered parameters and the saved
    # optimizer state, run for epochs 4 and 5.
    spec = _spec("train.epochs=5")
    loop = TrainingLoop(spec.loop_config(), spec.load_data())
    loop.set_state({**ckpt, "params": altered})
    predicted = [loop.run_epoch(e) for e in (3, 4)]
    want = loop.get_params()
    for name, value in want.items():
        assert np.array_equal(resumed.params[name], value), name
        assert not np.allclose(full.params[name], value, atol=1e-4), f"{name}: the alteration must matter"
    assert [h["val_loss"] for h in resumed.history[3:]] == [h["val_loss"] for h in predicted]


def test_resume_restores_the_optimizer_state(tmp_path):
    """Zeroed momentum buffers in the checkpoint must change the continuation."""
    full = run_job(_spec("train.epochs=4"), output=tmp_path / "full")
    run_job(_spec("train.epochs=2"), output=tmp_path / "part")
    path = tmp_path / "part" / "checkpoints" / "epoch-0002" / "optimizer.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays and any(np.abs(a).max() > 0 for a in arrays.values()), "momentum buffers are saved"
    np.savez(path, **{k: np.zeros_like(a) for k, a in arrays.items()})
    resumed = run_job(_spec("train.epochs=4"), resume=tmp_path / "part")
    assert any(not np.array_equal(full.params[k], resumed.params[k]) for k in full.params)


@pytest.mark.parametrize("epochs,every,keep,want", [
    (5, 1, 2, [4, 5]),
    (5, 1, 1, [5]),
    (5, 2, 10, [2, 4, 5]),      # every 2 epochs, and always the last
    (6, 3, 3, [3, 6]),
])
def test_checkpoints_follow_every_epochs_and_keep(tmp_path, epochs, every, keep, want):
    run_job(_spec(f"train.epochs={epochs}", f"checkpoint.every_epochs={every}", f"checkpoint.keep={keep}"),
            output=tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == [f"epoch-{e:04d}" for e in want], "no temporary or pruned folder is left behind"
    assert [int(p.name[6:]) for p in list_checkpoints(tmp_path / "run")] == want


def test_a_diverging_run_leaves_the_earlier_checkpoints_as_they_were(tmp_path):
    from lr_core.errors import DivergenceError

    run_job(_spec("train.epochs=3"), output=tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    last = ckpts / "epoch-0003" / "params.npz"
    with np.load(last) as z:
        blown = {k: np.full_like(z[k], 1e38) for k in z.files}  # logits overflow to inf
    np.savez(last, **blown)
    before = {p.relative_to(ckpts): p.read_bytes() for p in ckpts.rglob("*") if p.is_file()}

    with pytest.raises(DivergenceError, match=r"at epoch 4, step 1 of \d+; lower train.learning_rate"):
        run_job(_spec("train.epochs=6"), resume=tmp_path / "run")

    after = {p.relative_to(ckpts): p.read_bytes() for p in ckpts.rglob("*") if p.is_file()}
    assert after == before, "no checkpoint written, pruned or changed by the diverging epoch"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_done"] == 3
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


# --------------------------------------------------------------------------- mid-epoch checkpoints
class _SegmentBackend(InProcessBackend):
    """Records the (epoch, start, stop) segments it runs; fails once before each segment of
    ``fail_at`` (a list shared with the replacement backends of a restart)."""

    def __init__(self, spec, ran: list, fail_at: list):
        super().__init__(spec.loop_config(), spec.load_data())
        self.ran, self.fail_at = ran, fail_at

    def run_epoch(self, epoch, progress=None, timeout_s=None, start_step=0, stop_step=None):
        from lr_core.errors import WorkerFailure

        if (epoch, start_step) in self.fail_at:
            self.fail_at.remove((epoch, start_step))
            raise WorkerFailure(f"rank 1 died in epoch {epoch + 1} at step {start_step + 1}", rank=1, node="n1")
        self.ran.append((epoch, start_step, stop_step))
        return super().run_epoch(epoch, progress, timeout_s, start_step=start_step, stop_step=stop_step)


MID = ["train.batch_size=64", "train.epochs=3"]  # 1617 training rows: 26 steps per epoch


def _segment_run(spec, ran, fail_at=(), **kw):
    fail_at = list(fail_at)
    return run_job(spec, options=DriverOptions(backend_factory=lambda: _SegmentBackend(spec, ran, fail_at)), **kw)


def test_mid_epoch_checkpoints_resume_bit_identically(tmp_path):
    full = run_job(_spec(*MID), output=tmp_path / "full")
    ran = []
    spec = _spec(*MID, "checkpoint.every_steps=10", "checkpoint.keep=20")
    with pytest.raises(WorkerFailure):  # dies before step 21 of epoch 2: its last checkpoint is at step 20
        _segment_run(spec, ran, fail_at=[(1, 20)], output=tmp_path / "part")
    assert ran == [(0, 0, 10), (0, 10, 20), (0, 20, 26), (1, 0, 10), (1, 10, 20)]
    names = [p.name for p in list_checkpoints(tmp_path / "part")]
    assert names == ["epoch-0000-step-00000010", "epoch-0000-step-00000020", "epoch-0001",
                     "epoch-0001-step-00000010", "epoch-0001-step-00000020"]
    ckpt = latest_checkpoint(tmp_path / "part")
    assert (ckpt["epochs_done"], ckpt["step"], len(ckpt["step_losses"])) == (1, 20, 20)

    ran.clear()
    resumed = _segment_run(spec, ran, resume=tmp_path / "part")
    assert ran == [(1, 20, 26), (2, 0, 10), (2, 10, 20), (2, 20, 26)], "only the remaining steps run"
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name
    for a, b in zip(full.history, resumed.history):
        assert (a["train_loss"], a["val_loss"], a["val_accuracy"]) == (b["train_loss"], b["val_loss"],
                                                                        b["val_accuracy"])


def test_a_restart_continues_from_the_mid_epoch_checkpoint(tmp_path):
    full = run_job(_spec(*MID), output=tmp_path / "full")
    ran = []
    spec = _spec(*MID, "checkpoint.every_steps=10", "failure.max_failures=1")
    done = _segment_run(spec, ran, fail_at=[(2, 10)], output=tmp_path / "run")
    assert ran[-3:] == [(2, 0, 10), (2, 10, 20), (2, 20, 26)] and ran.count((2, 0, 10)) == 1
    for name in full.params:
        assert np.array_equal(full.params[name], done.params[name]), name
    assert [h["train_loss"] for h in done.history] == [h["train_loss"] for h in full.history]


def test_a_resume_on_other_data_or_ending_inside_a_checkpointed_epoch_is_refused(tmp_path):
    from lr_core.errors import SpecError

    lines = [f"{i % 7 / 7},{i % 3 / 3},{i % 2}\n" for i in range(300)]
    rows = "".join(lines)
    (tmp_path / "d.csv").write_text("a,b,label\n" + rows)
    job = tmp_path / "job.yaml"
    job.write_text("name: r\nmodel: {kind: binary}\ndata: {source: csv, path: d.csv, cache: c}\n"
                   "train: {epochs: 2, batch_size: 16}\nresources: {workers: 0}\n"
                   "checkpoint: {every_steps: 5}\n")
    spec = load_spec(job)
    ran = []
    with pytest.raises(WorkerFailure):
        _segment_run(spec, ran, fail_at=[(1, 0)], output=tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run")["step"] == 0  # epoch-0001: the epoch end
    with pytest.raises(WorkerFailure):
        _segment_run(spec, ran, fail_at=[(1, 10)], resume=tmp_path / "run")
    ckpt = latest_checkpoint(tmp_path / "run")
    assert (ckpt["epochs_done"], ckpt["step"]) == (1, 10) and ckpt["data_key"].startswith("csv-")
    with pytest.raises(SpecError, match=r"inside epoch 2; train.epochs must be at least 2"):
        run_job(load_spec(job, ["train.epochs=1"]), resume=tmp_path / "run")
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(lines[:150]))
    with pytest.raises(SpecError, match=r"the data changed since epoch-0001-step-00000010 .* start a new run"):
        run_job(load_spec(job), resume=tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run")["step"] == 10, "a refused resume writes nothing"
