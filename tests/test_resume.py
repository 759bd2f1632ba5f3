"""Resume proves that it resumed, and checkpoints are kept as the spec says.

Training is deterministic, so "resumed" and "retrained from scratch" end with the same
parameters: these tests count the epochs a resumed run executes, check that the
finished epochs' records survive unchanged, and alter a checkpoint on purpose to see
the result move exactly as predicted.
"""
import json
import os

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


def test_a_run_continued_on_another_worker_count_keeps_one_record(tmp_path):
    """Continued with other workers, the run stays one run: its wall time counts on from the
    earlier command's (metrics.jsonl's never goes back), the change is one of its resizes,
    env.json keeps the earlier command, and the report gives the first command's start.
    Before, each of these was the last command's alone."""
    from launcher.report.summary import _started

    out = tmp_path / "run"
    _counting_run(_spec("train.epochs=2"), [], output=out)
    first = json.loads((out / "summary.json").read_text())
    first_env = json.loads((out / "env.json").read_text())
    first_env["started"] = "2026-01-02T03:04:05+00:00"  # a day before: the first command's start stands out
    (out / "env.json").write_text(json.dumps(first_env))
    _counting_run(_spec("train.epochs=4", "resources.workers=2"), [], resume=out)
    summary = json.loads((out / "summary.json").read_text())
    env = json.loads((out / "env.json").read_text())
    walls = [json.loads(line)["wall_seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert summary["resizes"] == [{"epoch": 3, "from": 0, "to": 2, "why": "continued with 2 workers"}]
    assert summary["workers"] == 2 and env["workers"] == 2
    assert walls == sorted(walls) and walls[2] > first["wall_seconds"], walls
    assert summary["wall_seconds"] > walls[-1] > first["wall_seconds"]
    assert env["earlier"] == [{"started": first_env["started"], "argv": first_env["argv"], "workers": 0}]
    assert _started(env, None) == "2026-01-02 03:04:05 UTC"
    # 0 workers is in-process, not a world size of 0; the placement says whose count it is
    from launcher.report.plots import _events_html
    from launcher.report.summary import _placement_rows

    assert "<td>in-process</td>" in "".join(_events_html(summary))
    from launcher.report.summary import _run_rows

    rows = dict(_run_rows(summary, env, _spec("resources.workers=2"), None))
    assert "wall time, its 2 commands" in rows and "wall time, whole run" not in rows, rows
    assert "start-up time of the workers, the last command's" in rows, rows
    assert dict(_placement_rows(env, _spec("resources.workers=2")))["workers"] == \
        "2 Horovod workers (the last command's)"
    # continued again on the same count: no new resize, and both earlier commands kept
    _counting_run(_spec("train.epochs=5", "resources.workers=2"), [], resume=out)
    again = json.loads((out / "summary.json").read_text())
    assert again["resizes"] == summary["resizes"] and again["wall_seconds"] > summary["wall_seconds"]
    assert [e["workers"] for e in json.loads((out / "env.json").read_text())["earlier"]] == [0, 2]


def _without_workers_record(run):
    """The newest checkpoint as one written before checkpoints kept their worker count."""
    state = latest_checkpoint(run)["path"] + "/state.json"
    meta = json.loads(open(state).read())
    meta.pop("workers")
    with open(state, "w") as f:
        f.write(json.dumps(meta))


def test_a_continued_run_counts_from_the_workers_that_trained_its_checkpoint(tmp_path):
    """The count a continuation changes from is the one that trained the checkpoint: not the last
    command's (one interrupted before it trained a step asked for 2 workers and changed nothing).
    For an older checkpoint without the record, an elastic group that shrank ends on its last
    resize, not on its summary's planned count. A command that trains nothing changes nothing, and
    a run started over in place keeps none of the discarded record."""
    out = tmp_path / "run"
    _counting_run(_spec("train.epochs=2"), [], output=out)
    summary = json.loads((out / "summary.json").read_text())
    assert latest_checkpoint(out)["workers"] == 0
    (out / "summary.json").write_text(json.dumps({**summary, "workers": 2}))  # as a command stopped at once
    _counting_run(_spec("train.epochs=3"), [], resume=out)
    assert json.loads((out / "summary.json").read_text())["resizes"] == [], "0 workers went on with 0"
    _without_workers_record(out)
    summary = json.loads((out / "summary.json").read_text())
    shrunk = {"epoch": 2, "from": 4, "to": 2, "why": "rank 3 failed; the Ray cluster can place 2 of the 4 workers"}
    (out / "summary.json").write_text(json.dumps({**summary, "workers": 4, "resizes": [shrunk]}))
    _counting_run(_spec("train.epochs=4", "resources.workers=2"), [], resume=out)
    assert json.loads((out / "summary.json").read_text())["resizes"] == [shrunk], "2 workers went on with 2"
    _counting_run(_spec("train.epochs=5", "resources.workers=4"), [], resume=out)
    grown = json.loads((out / "summary.json").read_text())["resizes"]
    assert grown == [shrunk, {"epoch": 5, "from": 2, "to": 4, "why": "continued with 4 workers"}]
    ran: list = []
    _counting_run(_spec("train.epochs=5", "resources.workers=1"), ran, resume=out)  # nothing left to train
    assert ran == [] and json.loads((out / "summary.json").read_text())["resizes"] == grown
    # started over in place (no checkpoint): the run's record begins again
    import shutil

    shutil.rmtree(out / "checkpoints")
    _counting_run(_spec("train.epochs=1", "resources.workers=1"), [], output=out)
    again = json.loads((out / "summary.json").read_text())
    assert again["resizes"] == [] and "earlier" not in json.loads((out / "env.json").read_text())


class _StoppedAfter(_CountingBackend):
    """Ctrl-C once ``segments`` segments of epochs have run."""

    def __init__(self, spec, segments: int):
        super().__init__(spec, [])
        self.left = segments

    def run_epoch(self, epoch, progress=None, timeout_s=None, **segment):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super().run_epoch(epoch, progress, timeout_s, **segment)


def test_a_change_of_workers_that_trained_part_of_an_epoch_is_recorded(tmp_path):
    """A command on 2 workers that wrote a mid-epoch checkpoint and was stopped changed the run's
    count: the change is kept, and the next command on 2 workers adds none."""
    out = tmp_path / "run"
    every = "checkpoint.every_steps=5"
    _counting_run(_spec("train.epochs=1", every), [], output=out)
    part = _spec("train.epochs=2", every, "resources.workers=2")
    with pytest.raises(KeyboardInterrupt):
        run_job(part, resume=out, options=DriverOptions(backend_factory=lambda: _StoppedAfter(part, 1)))
    assert latest_checkpoint(out)["step"] == 5 and latest_checkpoint(out)["workers"] == 2
    change = [{"epoch": 2, "from": 0, "to": 2, "why": "continued with 2 workers"}]
    assert json.loads((out / "summary.json").read_text())["resizes"] == change
    _counting_run(part, [], resume=out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resizes"] == change


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
    for kw, flag in (({"resume": tmp_path / "run"}, "--resume"), ({"output": tmp_path / "run"}, "--output")):
        with pytest.raises(SpecError) as e:     # the message names the flag the user gave
            run_job(load_spec(job, ["train.epochs=1"]), **kw)
        assert str(e.value).startswith(f"{flag} {tmp_path / 'run'}: the newest checkpoint epoch-0001-step-00000010 "
                                       f"is inside epoch 2; train.epochs must be at least 2"), e.value
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(lines[:150]))
    with pytest.raises(SpecError, match=r"the data changed since epoch-0001-step-00000010 .* start a new run"):
        run_job(load_spec(job), resume=tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run")["step"] == 10, "a refused resume writes nothing"
    with pytest.raises(SpecError) as e:
        run_job(load_spec(job), output=tmp_path / "run")
    assert str(e.value).startswith(f"--output {tmp_path / 'run'}: the data changed since epoch-0001-step-00000010")
    assert latest_checkpoint(tmp_path / "run")["step"] == 10


# --------------------------------------------------------------------------- damaged checkpoints
def _lying_params(ckpt):
    with np.load(ckpt / "params.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(ckpt / "params.npz", **{f"x{i}": a for i, a in enumerate(arrays.values())})  # names of no parameter
    return "its parameters are x0, x1, the model has lrjob_layer0_bias, lrjob_layer0_weight"


def _wrong_shape(ckpt):
    with np.load(ckpt / "params.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["lrjob_layer0_weight"] = np.ascontiguousarray(arrays["lrjob_layer0_weight"].T)
    np.savez(ckpt / "params.npz", **arrays)
    return "lrjob_layer0_weight is float32 (64, 10), the model needs float32 (10, 64)"


def _no_digest(ckpt):
    # loads and fits, but nothing says which spec wrote it: its (altered) parameters must not be used
    with np.load(ckpt / "params.npz") as z:
        np.savez(ckpt / "params.npz", **{k: (z[k] * 0.5).astype(z[k].dtype) for k in z.files})
    state = json.loads((ckpt / "state.json").read_text())
    del state["spec_digest"]
    (ckpt / "state.json").write_text(json.dumps(state))
    return "it records no spec_digest, so the spec it belongs to cannot be checked"


def _wrong_optimizer(ckpt):
    with np.load(ckpt / "optimizer.npz") as z:
        np.savez(ckpt / "optimizer.npz", **{k: z[k][:3] for k in z.files})
    return "optimizer state 0 is missing or not of shape (10,)"


def _state_json(ckpt, **change):
    state = json.loads((ckpt / "state.json").read_text())
    for key, value in change.items():
        if key == "step":
            state["data_cursor"]["step"] = value
        else:
            state[key] = value
    (ckpt / "state.json").write_text(json.dumps(state))


def _huge_step(ckpt):
    from lr_core.sharding import num_batches

    spec = _spec()
    steps = num_batches(len(spec.load_data().x_train), spec.train.batch_size)
    _state_json(ckpt, step=10 ** 6)
    return f"its data_cursor.step 1000000 is not a step of an epoch of {steps} steps"


def _short_history(ckpt):
    state = json.loads((ckpt / "state.json").read_text())
    _state_json(ckpt, history=state["history"][:2])
    return "its history holds 2 epochs, its epochs_done is 3"


def _other_folder_name(ckpt):
    _state_json(ckpt, step=1, step_losses=[0.5])
    return "its state.json says epoch-0003-step-00000001, the folder is epoch-0003"


@pytest.mark.parametrize("damage", [_lying_params, _wrong_shape, _no_digest, _wrong_optimizer, _huge_step,
                                    _short_history, _other_folder_name])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, capsys, damage):
    full = run_job(_spec("train.epochs=4"), output=tmp_path / "full")
    run_job(_spec("train.epochs=3"), output=tmp_path / "part")
    newest = tmp_path / "part" / "checkpoints" / "epoch-0003"
    reason = damage(newest)
    capsys.readouterr()
    ran = []
    resumed = _counting_run(_spec("train.epochs=4"), ran, resume=tmp_path / "part")

    assert ran == [2, 3], "it falls back to epoch-0002 and runs epochs 3 and 4"
    assert capsys.readouterr().err == f"lrjob: warning: checkpoint {newest} skipped: {reason}\n"
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name
    # epoch-0003 written anew (keep: 3)
    assert sorted(os.listdir(tmp_path / "part" / "checkpoints")) == ["epoch-0002", "epoch-0003", "epoch-0004"]
    assert latest_checkpoint(tmp_path / "part")["epochs_done"] == 4


# --------------------------------------------------------------------------- idempotent --output
def _fail_at(spec, ran, epoch):
    class Dies(_CountingBackend):
        def run_epoch(self, e, *a, **k):
            if e == epoch:
                raise WorkerFailure(f"rank 0 died in epoch {e + 1}", rank=0)
            return super().run_epoch(e, *a, **k)

    return DriverOptions(backend_factory=lambda: Dies(spec, ran))


def test_the_same_job_into_its_own_output_continues_it(tmp_path):
    full = run_job(_spec("train.epochs=4"), output=tmp_path / "full")
    spec, ran = _spec("train.epochs=4"), []
    with pytest.raises(WorkerFailure):
        run_job(spec, tmp_path / "run", options=_fail_at(spec, ran, 2))
    assert ran == [0, 1]
    ran.clear()
    again = _counting_run(spec, ran, output=tmp_path / "run")
    assert ran == [2, 3], "the second run continues from epoch-0002"
    for name in full.params:
        assert np.array_equal(full.params[name], again.params[name]), name
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "env.json").read_text())["resumed_from"].endswith("epoch-0002")
    ran.clear()
    _counting_run(spec, ran, output=tmp_path / "run")   # finished: once more trains nothing
    assert ran == []


def test_the_same_command_on_a_finished_run_says_nothing_is_left_to_train(tmp_path, capsys):
    from launcher.report.progress import Reporter

    spec = _spec("train.epochs=2")
    run_job(spec, output=tmp_path / "run")
    capsys.readouterr()
    ran = []
    run_job(spec, output=tmp_path / "run", reporter=Reporter("human"),
            options=DriverOptions(backend_factory=lambda: _CountingBackend(spec, ran)))
    err = capsys.readouterr().err
    assert ran == []
    assert "  resume   from epoch-0002: all 2 epochs are trained already; nothing to train\n" in err
    assert "continuing at" not in err


def test_the_same_command_on_an_early_stopped_run_says_nothing_is_left_to_train(tmp_path, capsys):
    from launcher.report.progress import Reporter

    spec = load_spec("jobs/binary_2d.yaml", [
        "resources.workers=0", "train.epochs=30", "train.early_stopping={metric: val_loss, patience: 3, min_delta: 0.001}"])
    first = run_job(spec, output=tmp_path / "run")
    done = first.summary["stopped_early"]["epoch"]
    assert done < 30  # the case this test is about
    capsys.readouterr()
    ran = []
    run_job(spec, output=tmp_path / "run", reporter=Reporter("human"),
            options=DriverOptions(backend_factory=lambda: _CountingBackend(spec, ran)))
    err = capsys.readouterr().err
    assert ran == []
    assert (f"  resume   from epoch-{done:04d}: early stopping ended the run after epoch {done}; "
            f"nothing to train\n") in err
    assert "continuing at" not in err


def test_a_run_killed_before_its_first_checkpoint_starts_over_in_place(tmp_path):
    spec, ran = _spec("train.epochs=2", "checkpoint.every_epochs=5"), []
    with pytest.raises(WorkerFailure):
        run_job(spec, tmp_path / "run", options=_fail_at(spec, ran, 1))
    assert list_checkpoints(tmp_path / "run") == [] and (tmp_path / "run" / "metrics.jsonl").is_file()
    ran.clear()
    done = _counting_run(spec, ran, output=tmp_path / "run")
    assert ran == [0, 1]
    assert [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert done.summary["status"] == "completed"


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_another_jobs_output_is_refused_and_left_as_it_was(tmp_path):
    from lr_core.errors import SpecError

    run_job(_spec("train.epochs=2"), output=tmp_path / "run")
    before = _snapshot(tmp_path / "run")
    with pytest.raises(SpecError) as e:
        run_job(_spec("train.epochs=2", "train.learning_rate=0.5"), output=tmp_path / "run")
    assert str(e.value) == (f"--output {tmp_path / 'run'}: holds a run of another job (its job.yaml differs in "
                            f"train.learning_rate); choose a new path")
    (tmp_path / "run" / "job.yaml").unlink()          # without job.yaml the checkpoints' digest decides
    del before["job.yaml"]
    with pytest.raises(SpecError, match=r"checkpoint .*epoch-0002 was written by a different spec; start a new run"):
        run_job(_spec("train.epochs=2", "train.learning_rate=0.5"), output=tmp_path / "run")
    assert _snapshot(tmp_path / "run") == before

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SpecError) as e:
        run_job(_spec("train.epochs=2"), output=tmp_path / "mine")
    assert str(e.value) == (f"--output {tmp_path / 'mine'}: exists, is not empty and holds no lrjob run "
                            f"(no job.yaml, no checkpoints); choose a new path")
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_a_refused_output_is_left_exactly_as_it_was(tmp_path):
    """Judged before it is locked or cleaned: lrjob writes and deletes nothing in a folder it refuses."""
    from lr_core.errors import SpecError

    d = tmp_path / "d"
    (d / "checkpoints" / ".tmp-cache").mkdir(parents=True)
    (d / ".old-backup").mkdir()
    (d / ".old-backup" / "data").write_text("x")
    (d / ".tmp-notes").write_text("x")
    (d / ".lock").write_text("other tool")
    (d / "notes.txt").write_text("hi")
    before = _snapshot(d)
    with pytest.raises(SpecError, match="holds no lrjob run"):
        run_job(_spec("train.epochs=1"), output=d)
    with pytest.raises(SpecError, match="no valid checkpoint"):
        run_job(_spec("train.epochs=1"), resume=d)
    assert _snapshot(d) == before

    run_job(_spec("train.epochs=1"), output=tmp_path / "run")   # another job's run, with a killed writer's leftovers
    (tmp_path / "run" / ".tmp-model-abcd1234").mkdir()
    (tmp_path / "run" / ".summary.json.abcd1234").write_text("{")
    before = _snapshot(tmp_path / "run")
    with pytest.raises(SpecError, match="holds a run of another job"):
        run_job(_spec("train.epochs=1", "train.learning_rate=0.5"), output=tmp_path / "run")
    assert _snapshot(tmp_path / "run") == before


def test_a_run_killed_before_its_job_yaml_starts_anew_in_place(tmp_path):
    """job.yaml is written before checkpoints/; a folder of lrjob's leftovers only is a run not yet started."""
    from launcher.rundir import RunDir

    (tmp_path / "r" / "job.yaml").mkdir(parents=True)       # job.yaml cannot be written: the start stops there
    with pytest.raises(OSError):
        RunDir.create(tmp_path / "r", _spec("train.epochs=1"))
    assert os.listdir(tmp_path / "r") == ["job.yaml"], "checkpoints/ comes after job.yaml"

    out = tmp_path / "run"                                   # what a SIGKILL at that moment leaves
    (out / "checkpoints").mkdir(parents=True)
    (out / ".lock").write_text("12345\n")
    (out / ".job.yaml.ab12cd34").write_text("name: half")
    done = run_job(_spec("train.epochs=1"), output=out)
    assert done.summary["status"] == "completed"
    assert not (out / ".job.yaml.ab12cd34").exists() and not (out / ".lock").exists()


def test_fewer_epochs_than_the_run_has_done_is_refused_and_nothing_changes(tmp_path):
    """A finished 3-epoch run is never handed back as the result of train.epochs=2."""
    from lr_core.errors import SpecError

    run_job(_spec("train.epochs=3"), output=tmp_path / "run")
    before = _snapshot(tmp_path / "run")
    for kw in ({"output": tmp_path / "run"}, {"resume": tmp_path / "run"}):
        flag = "--output" if "output" in kw else "--resume"
        with pytest.raises(SpecError) as e:
            run_job(_spec("train.epochs=2"), **kw)
        assert str(e.value) == (f"{flag} {tmp_path / 'run'}: the run is already trained for 3 epochs (epoch-0003), "
                                f"more than train.epochs=2; set train.epochs to at least 3, or choose a new path")
        assert _snapshot(tmp_path / "run") == before


# --------------------------------------------------------------------------- one writer per run directory
def test_the_run_directory_is_locked_for_the_whole_run(tmp_path):
    from lr_core.errors import LrjobInputError

    spec, seen = _spec("train.epochs=2"), []

    class Meddler(_CountingBackend):
        def run_epoch(self, e, *a, **k):
            for kw in ({"output": tmp_path / "run"}, {"resume": tmp_path / "run"}):
                try:
                    run_job(spec, **kw)
                except LrjobInputError as err:
                    seen.append(str(err))
            return super().run_epoch(e, *a, **k)

    done = run_job(spec, tmp_path / "run", options=DriverOptions(backend_factory=lambda: Meddler(spec, [])))
    msg = (f"{tmp_path / 'run'}: another lrjob process (pid {os.getpid()}) is writing this run directory; "
           f"wait for it to end, or choose another --output")
    assert seen == [msg] * 4, "refused in both epochs, as a new run and as a resume"
    assert done.summary["status"] == "completed" and len(done.history) == 2
    assert not (tmp_path / "run" / ".lock").exists(), "released at the end"
    run_job(spec, resume=tmp_path / "run")             # and free again


def test_a_failed_start_leaves_no_directory_and_no_lock(tmp_path):
    from lr_core.errors import DataError

    bad = tmp_path / "d.csv"
    bad.write_text("a,label\n1,0\nx,1\n")
    job = tmp_path / "job.yaml"
    job.write_text("name: r\nmodel: {kind: binary}\ndata: {source: csv, path: d.csv, cache: c}\n"
                   "resources: {workers: 0}\n")
    with pytest.raises(DataError):
        run_job(load_spec(job), options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert not (tmp_path / "runs").exists(), "nor the parent it made"
    with pytest.raises(DataError):
        run_job(load_spec(job), output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- links planted in a run
def test_a_linked_report_is_refused_on_resume_and_the_target_kept(tmp_path):
    from lr_core.errors import LrjobInputError

    run_job(_spec("train.epochs=1"), output=tmp_path / "run")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    (tmp_path / "run" / "report.html").unlink()
    (tmp_path / "run" / "report.html").symlink_to(outside)
    with pytest.raises(LrjobInputError) as e:
        run_job(_spec("train.epochs=2"), resume=tmp_path / "run")
    assert str(e.value) == (f"{tmp_path / 'run' / 'report.html'}: is a symbolic link inside the run directory; "
                            f"lrjob follows no link there: remove it, or start a new run")
    assert outside.read_text() == "keep"
    assert [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_linked_checkpoints_folder_is_refused_on_resume_and_the_other_run_kept(tmp_path):
    from lr_core.errors import LrjobInputError

    run_job(_spec("train.epochs=3", "checkpoint.keep=3"), output=tmp_path / "other")
    run_job(_spec("train.epochs=1", "checkpoint.keep=1"), output=tmp_path / "run")
    import shutil

    shutil.rmtree(tmp_path / "run" / "checkpoints")
    (tmp_path / "run" / "checkpoints").symlink_to(tmp_path / "other" / "checkpoints")
    with pytest.raises(LrjobInputError, match=r"checkpoints: is a symbolic link inside the run directory"):
        run_job(_spec("train.epochs=5", "checkpoint.keep=1"), resume=tmp_path / "run")
    assert [p.name for p in list_checkpoints(tmp_path / "other")] == ["epoch-0001", "epoch-0002", "epoch-0003"]


# --------------------------------------------------------------------------- the identical command, again
def _lrjob(*args, env=None):
    import subprocess
    import sys

    import procs

    return procs.run([sys.executable, "-m", "launcher.cli", *map(str, args)], timeout=300, env=env)


@pytest.mark.parametrize("fault", [
    {"at": "step", "epoch": 3, "step": 5, "rank": 0},          # inside epoch 3: epoch-0002 is the newest
    {"at": "checkpoint", "epoch": 2, "stage": "written"},      # epoch-0002 written, not renamed: epoch-0001
])
def test_a_killed_run_finishes_bit_identically_when_the_command_is_run_again(tmp_path, fault):
    out = tmp_path / "run"
    cmd = ["run", JOB, "--output", out, "--quiet", *(x for s in [*BASE, "train.epochs=4"] for x in ("--set", s))]
    env = dict(os.environ, LRJOB_FAULT=json.dumps({**fault, "action": "kill", "once": str(tmp_path / "fired")}))
    killed = _lrjob(*cmd, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((tmp_path / "fired.where").read_text())["at"] == fault["at"]
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == ([] if fault["at"] == "step" else [leftovers[0]]) and (
        not leftovers or leftovers[0].startswith(".tmp-epoch-0002-")), leftovers
    assert (out / ".lock").exists(), "SIGKILL leaves the lock file, not the lock"

    again = _lrjob(*cmd, env=env)                       # the marker exists: the fault does not fire again
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == str(out)
    full = run_job(_spec("train.epochs=4"), output=tmp_path / "full")
    ckpt = latest_checkpoint(out)
    assert ckpt["epochs_done"] == 4
    for name in full.params:
        assert np.array_equal(full.params[name], ckpt["params"][name]), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert [m["val_loss"] for m in lines] == [m["val_loss"] for m in full.history]
    hidden = [p for d in (out, out / "checkpoints") for p in d.iterdir() if p.name.startswith(".")]
    assert hidden == [], "the killed run's temporary folder and the lock file are gone"
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    resumed_from = json.loads((out / "env.json").read_text())["resumed_from"]
    assert resumed_from.endswith("epoch-0002" if fault["at"] == "step" else "epoch-0001"), "continued, not redone"


def test_a_second_process_on_a_locked_run_gets_one_line_and_exit_2(tmp_path):
    from launcher.rundir import RunLock

    (tmp_path / "run").mkdir()
    lock = RunLock.acquire(tmp_path / "run")
    try:
        for args in (["run", JOB, "--output", tmp_path / "run"], ["run", "--resume", tmp_path / "run", JOB]):
            r = _lrjob(*args, "--set", "train.epochs=1", "--workers", "0")
            assert r.returncode == 2, r.stderr
            assert r.stderr == (f"lrjob: error: {tmp_path / 'run'}: another lrjob process (pid {os.getpid()}) is "
                                f"writing this run directory; wait for it to end, or choose another --output\n")
    finally:
        lock.release()
    assert os.listdir(tmp_path / "run") == []


@pytest.mark.distributed
def test_a_killed_distributed_driver_finishes_when_the_command_is_run_again(tmp_path):
    """The same with 2 Ray + Horovod workers: the driver is SIGKILLed while it writes
    epoch-0002 (its workers and its Ray are stopped with it, as a lost node would); the
    identical command continues from epoch-0001 and ends within the parity tolerance of
    the in-process run (docs/design.md#parity-rule)."""
    import subprocess
    import sys

    import procs

    job = ["jobs/binary_2d.yaml", "--set", "train.epochs=3"]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "launcher.cli", "run", *job, "--workers", "2", "--output", str(out), "--quiet"]
    env = dict(os.environ, LRJOB_FAULT=json.dumps({"at": "checkpoint", "epoch": 2, "stage": "written",
                                                   "action": "kill", "once": str(tmp_path / "fired")}))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        procs.kill_tree(proc)    # the orphaned Ray and workers of the killed driver
    assert proc.returncode == -9, err[-2000:]
    assert [p.name for p in list_checkpoints(out)] == ["epoch-0001"]

    again = procs.run(cmd, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    reference = run_job(load_spec(job[0], ["resources.workers=0", "train.epochs=3"]), output=tmp_path / "ref")
    ckpt = latest_checkpoint(out)
    assert ckpt["epochs_done"] == 3
    for name, value in reference.params.items():
        assert np.allclose(ckpt["params"][name], value, rtol=0, atol=1e-5), name
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert json.loads((out / "env.json").read_text())["resumed_from"].endswith("epoch-0001")


_HOW = {"same-spec": ([], None),
        "other-settings": (["resources.cpus_per_worker=2", "checkpoint.every_epochs=5"],
                           "resources.cpus_per_worker=1, checkpoint.every_epochs=1"),
        "workers": (["resources.workers=2"], "resources.workers=0"),
        "cache": (["data.cache={tmp}/elsewhere"], None)}  # where this command read the data: not a setting kept


@pytest.mark.parametrize("extra", [[], ["train.epochs=30", "train.early_stopping={metric: val_loss, patience: 3, "
                                                           "min_delta: 0.001}"], ["train.epochs=1"]],
                         ids=["all-epochs", "stopped-early", "one-epoch"])
@pytest.mark.parametrize("how", list(_HOW))
def test_the_same_command_on_a_finished_run_writes_nothing(tmp_path, capsys, monkeypatch, extra, how):
    """A no-op touches nothing: env.json keeps its start, summary.json its wall time (and so
    `lrjob runs` its date), model/, checkpoints, metrics, pictures and report stay as they were.
    So does the same job asked with other settings of how it runs (workers, CPUs, checkpoint
    cadence): with nothing to train, the run keeps the record of how it was trained, says so, and
    starts no Ray for workers it will not use. Early stopping leaves nothing to train at a higher
    train.epochs either."""
    from launcher.backends import cluster
    from launcher.report.history import list_runs
    from launcher.report.progress import Reporter

    class NoRay:
        def __init__(self, *a, **k):
            raise AssertionError("Ray started for a run with nothing to train")

    monkeypatch.setattr(cluster, "RaySession", NoRay)
    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=2", *extra])
    first = run_job(spec, output=tmp_path / "run")
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    listed = list_runs(tmp_path)
    capsys.readouterr()
    overrides, shown = _HOW[how]
    stopped = "train.early_stopping" in " ".join(extra)
    overrides = [o.format(tmp=tmp_path) for o in overrides] + (["train.epochs=40"] if stopped else [])
    again = run_job(spec.with_overrides(overrides), output=tmp_path / "run", reporter=Reporter("human"))
    out, err = capsys.readouterr()
    done = first.summary["epochs_done"]
    why = (f"early stopping ended the run after epoch {done}" if stopped else
           "its 1 epoch is trained already" if done == 1 else f"all {done} epochs are trained already")
    assert f"  resume   from epoch-{done:04d}: {why}; nothing to train\n" in err and "| status       completed" in out
    shown = ", ".join(filter(None, ["train.epochs=30" if stopped else None, shown]))  # in the spec's order
    kept = [line for line in err.splitlines() if line.startswith("  kept ")]
    assert kept == ([f"  kept     the run's own settings, as it was trained: {shown}"] if shown else []), err
    now = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert now == files
    assert list_runs(tmp_path) == listed
    assert again.summary == first.summary and again.history == first.history
    for name in first.params:
        assert np.array_equal(again.params[name], first.params[name]), name


def test_a_resume_stopped_before_it_wrote_anything_names_the_checkpoint_it_continues(tmp_path):
    """A Ctrl-C while the resumed run starts (data, workers, Ray): the run still has its checkpoint,
    and the message says so, not "before the first checkpoint"."""
    out = tmp_path / "run"
    _counting_run(_spec("train.epochs=2"), [], output=out)

    def starting():
        raise KeyboardInterrupt  # as Ctrl-C during the backend's start

    with pytest.raises(KeyboardInterrupt) as e:
        run_job(_spec("train.epochs=3"), resume=out, options=DriverOptions(backend_factory=starting))
    assert e.value.checkpoint == "epoch-0002" and e.value.resume == f"lrjob run --resume {out}"


def test_the_earlier_commands_keep_the_first_and_the_last(tmp_path):
    """env.json's ``earlier`` holds at most 100 commands: the first (the run's start) and the last
    99; a damaged last resize falls back to the summary's count."""
    from launcher.driver import _earlier_count, _earlier_parts

    run = tmp_path / "run"
    run.mkdir()
    (run / "env.json").write_text(json.dumps({"earlier": [{"started": str(i)} for i in range(150)],
                                              "started": "150", "argv": [], "workers": 0}))
    parts = _earlier_parts(run)
    assert len(parts) == 100 and [p["started"] for p in parts] == ["0", *map(str, range(52, 151))]
    assert _earlier_count({"resizes": [{"to": True}], "workers": 4}, {}) == 4
    from launcher.driver import _workers_phrase

    assert [f"continued {_workers_phrase(n)}" for n in (0, 1, 2)] == [
        "continued in-process", "continued with 1 worker", "continued with 2 workers"]
    assert _earlier_count({"resizes": [{"to": 2}], "workers": 4}, {"workers": 3}) == 3
