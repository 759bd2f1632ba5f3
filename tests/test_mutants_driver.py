"""The driver's resume, checkpoint and restart logic (``launcher.driver``) on a small job
in-process: a worker failure is simulated by an in-process backend that raises
``WorkerFailure`` (what the Ray backend raises when a rank dies), so restarts from the
newest checkpoint, the restart budget and the resume checks run in about a second each."""
import io
import json

import numpy as np
import pytest

from launcher.backends import InProcessBackend
from launcher.driver import DriverOptions, run_job
from launcher.report.progress import Reporter
from launcher.rundir import latest_checkpoint
from launcher.spec import SAFE_RESUME_CHANGES, load_spec
from lr_core.errors import SpecError, WorkerFailure

JOB = "jobs/binary_2d.yaml"
SMALL = ["resources.workers=0", "data.options.n_train=64", "data.options.n_val=32", "train.batch_size=16",
         "train.momentum=0.9"]


def _spec(*extra):
    return load_spec(JOB, [*SMALL, *extra])


class _Flaky(InProcessBackend):
    """The in-process backend; raises WorkerFailure at the epochs in ``fail_at`` (each once)."""

    def __init__(self, spec, log, fail_at):
        super().__init__(spec.loop_config(), spec.load_data())
        self.log, self.fail_at = log, fail_at
        log.append(("new",))

    def set_state(self, state):
        self.log.append(("restore", state["epochs_done"]))
        super().set_state(state)

    def run_epoch(self, epoch, progress=None, timeout_s=None):
        if epoch in self.fail_at:
            self.fail_at.remove(epoch)
            self.log.append(("fail", epoch))
            raise WorkerFailure(f"rank 1 died in epoch {epoch + 1}", rank=1, node="n1")
        self.log.append(("epoch", epoch))
        return super().run_epoch(epoch, progress, timeout_s)

    def shutdown(self):
        self.log.append(("shutdown",))
        super().shutdown()


def _run(spec, log, fail_at=(), factory_fails=0, reporter=None, **kw):
    pending = set(fail_at)
    budget = [factory_fails]

    def factory():
        if len(log) and budget[0] > 0:     # the first group starts; a replacement may fail to
            budget[0] -= 1
            log.append(("factory failed",))
            raise WorkerFailure("no node for rank 0")
        return _Flaky(spec, log, pending)

    return run_job(spec, options=DriverOptions(backend_factory=factory), reporter=reporter, **kw)


def _events(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_failed_worker_group_restarts_from_the_newest_checkpoint(tmp_path):
    reference = run_job(_spec("train.epochs=4"), output=tmp_path / "ref")
    log, out = [], io.StringIO()
    result = _run(_spec("train.epochs=4", "failure.max_failures=1", "checkpoint.every_epochs=2"), log,
                  fail_at={2}, reporter=Reporter("json", stream=out), output=tmp_path / "run")
    assert log == [("new",), ("epoch", 0), ("epoch", 1), ("fail", 2), ("shutdown",),
                   ("new",), ("restore", 2), ("epoch", 2), ("epoch", 3), ("shutdown",)]
    for name, value in reference.params.items():
        assert np.array_equal(result.params[name], value), name
    assert [m["epoch"] for m in result.history] == [1, 2, 3, 4]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    messages = [e["text"] for e in _events(out) if e["event"] == "message"]
    assert messages == ["lrjob: rank 1 died in epoch 3",
                        "lrjob: restart 1/1: new workers resume from epoch 2"]


def test_a_failure_before_the_first_checkpoint_restarts_from_the_start(tmp_path):
    log, out = [], io.StringIO()
    result = _run(_spec("train.epochs=3", "failure.max_failures=2", "checkpoint.every_epochs=2"), log,
                  fail_at={1}, reporter=Reporter("json", stream=out), output=tmp_path / "run")
    assert log == [("new",), ("epoch", 0), ("fail", 1), ("shutdown",), ("new",), ("epoch", 0), ("epoch", 1),
                   ("epoch", 2), ("shutdown",)]
    assert [m["epoch"] for m in result.history] == [1, 2, 3]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    assert "lrjob: restart 1/2: new workers resume from the start" in \
        [e["text"] for e in _events(out) if e["event"] == "message"]


def test_a_replacement_that_fails_to_start_counts_as_a_failure(tmp_path):
    log = []
    result = _run(_spec("train.epochs=3", "failure.max_failures=2"), log, fail_at={1}, factory_fails=1,
                  output=tmp_path / "run")
    assert log == [("new",), ("epoch", 0), ("fail", 1), ("shutdown",), ("factory failed",),
                   ("new",), ("restore", 1), ("epoch", 1), ("epoch", 2), ("shutdown",)]
    assert [m["epoch"] for m in result.history] == [1, 2, 3]


def test_past_the_restart_budget_the_run_fails_with_a_resume_command(tmp_path):
    log = []
    with pytest.raises(WorkerFailure) as e:
        _run(_spec("train.epochs=4", "failure.max_failures=1"), log, fail_at={2}, factory_fails=1,
             output=tmp_path / "run")
    assert log.count(("shutdown",)) == 1                    # the failed group, once
    assert str(e.value) == (f"no node for rank 0; last completed epoch 2, newest checkpoint: epoch-0002; "
                            f"resume with: lrjob run --resume {tmp_path / 'run'}")
    assert (e.value.rank, e.value.node, e.value.last_epoch) == (None, None, 2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == str(e.value)

    # the command it names finishes the run
    done = run_job(_spec("train.epochs=4", "failure.max_failures=1"), resume=tmp_path / "run")
    assert [m["epoch"] for m in done.history] == [1, 2, 3, 4]


def test_a_failure_before_any_checkpoint_says_to_run_again(tmp_path):
    log = []
    with pytest.raises(WorkerFailure) as e:
        _run(_spec("train.epochs=2", "failure.max_failures=0"), log, fail_at={0}, output=tmp_path / "run")
    assert str(e.value) == ("rank 1 died in epoch 1; last completed epoch 0, newest checkpoint: none; "
                            "no checkpoint was written yet: run the job again")
    assert (e.value.rank, e.value.node, e.value.last_epoch) == (1, "n1", 0)


class _Interrupted(InProcessBackend):
    def run_epoch(self, epoch, progress=None, timeout_s=None):
        if epoch == 2:
            raise KeyboardInterrupt
        return super().run_epoch(epoch, progress, timeout_s)


@pytest.mark.parametrize("every,resumable", [(1, True), (5, False)])
def test_an_interrupted_run_names_its_resume_command_once_a_checkpoint_exists(tmp_path, every, resumable):
    spec = _spec("train.epochs=5", f"checkpoint.every_epochs={every}")
    with pytest.raises(KeyboardInterrupt):
        run_job(spec, tmp_path / "run", options=DriverOptions(
            backend_factory=lambda: _Interrupted(spec.loop_config(), spec.load_data())))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary.get("resume") == (f"lrjob run --resume {tmp_path / 'run'}" if resumable else None)


@pytest.mark.parametrize("epochs,every,keep,want", [(5, 2, 10, [2, 4, 5]), (4, 3, 10, [3, 4]), (4, 1, 2, [3, 4]),
                                                    (3, 5, 1, [3])])
def test_checkpoint_cadence_and_pruning(tmp_path, epochs, every, keep, want):
    run_job(_spec(f"train.epochs={epochs}", f"checkpoint.every_epochs={every}", f"checkpoint.keep={keep}"),
            tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [f"epoch-{e:04d}" for e in want]
    ck = latest_checkpoint(tmp_path / "run")
    assert ck["epochs_done"] == epochs and len(ck["history"]) == epochs
    # the digest ignores what may change on resume
    assert ck["spec_digest"] == _spec(f"train.epochs={epochs + 3}", "checkpoint.keep=7").digest(
        ignore=SAFE_RESUME_CHANGES)


def test_resume_continues_where_the_checkpoint_is(tmp_path):
    full = run_job(_spec("train.epochs=4"), tmp_path / "full")
    log = []
    run_job(_spec("train.epochs=2"), tmp_path / "run")
    resumed = _run(_spec("train.epochs=4"), log, resume=tmp_path / "run")
    assert log == [("new",), ("restore", 2), ("epoch", 2), ("epoch", 3), ("shutdown",)]
    for name, value in full.params.items():
        assert np.array_equal(resumed.params[name], value), name
    assert resumed.path == tmp_path / "run"
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["resumed_from"] == str(tmp_path / "run" / "checkpoints" / "epoch-0002")
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3, 4]
    assert [json.loads(line)["val_loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] \
        == [m["val_loss"] for m in full.history]


def test_a_new_run_records_no_resume(tmp_path):
    run_job(_spec("train.epochs=1"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "env.json").read_text())["resumed_from"] is None


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    with pytest.raises(SpecError) as e:
        run_job(_spec("train.epochs=2"), resume=tmp_path / "nothing")
    assert str(e.value) == f"--resume {tmp_path / 'nothing'}: no such run directory"

    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError) as e:
        run_job(_spec("train.epochs=2"), resume=tmp_path / "empty")
    assert str(e.value) == (f"--resume {tmp_path / 'empty'}: no valid checkpoint in "
                            f"{tmp_path / 'empty' / 'checkpoints'}; start a new run")

    run_job(_spec("train.epochs=1"), tmp_path / "run")
    with pytest.raises(SpecError) as e:
        run_job(_spec("train.epochs=2", "train.learning_rate=0.5", "train.seed=3"), resume=tmp_path / "run")
    assert str(e.value).startswith(f"--resume {tmp_path / 'run'}: the spec differs from the run's job.yaml in ")
    assert "train.learning_rate" in str(e.value) and "train.seed" in str(e.value)
    assert "train.epochs" not in str(e.value).split(";")[0]

    (tmp_path / "run" / "job.yaml").unlink()   # without job.yaml the checkpoint's digest decides
    with pytest.raises(SpecError) as e:
        run_job(_spec("train.epochs=2", "train.learning_rate=0.5"), resume=tmp_path / "run")
    ck = tmp_path / "run" / "checkpoints" / "epoch-0001"
    assert str(e.value) == (f"--resume {tmp_path / 'run'}: checkpoint {ck} was written by a different spec; "
                            f"start a new run")
    done = run_job(_spec("train.epochs=2", "checkpoint.keep=5"), resume=tmp_path / "run")  # safe changes only
    assert [m["epoch"] for m in done.history] == [1, 2]


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_result(tmp_path):
    done = run_job(_spec("train.epochs=2"), tmp_path / "run")
    log = []
    again = _run(_spec("train.epochs=2"), log, resume=tmp_path / "run")
    assert log == [("new",), ("restore", 2), ("shutdown",)]
    for name, value in done.params.items():
        assert np.array_equal(again.params[name], value), name
    assert again.summary["status"] == "completed"


def test_epochs_are_reported_as_they_finish(tmp_path):
    import time

    out = io.StringIO()
    t0 = time.time()
    result = run_job(_spec("train.epochs=3"), tmp_path / "run", reporter=Reporter("human", stream=out,
                                                                                 err=io.StringIO()))
    elapsed = time.time() - t0
    rows = [line.split()[0] for line in out.getvalue().splitlines()[1:] if line.split()]
    assert [r for r in rows if r.endswith("/3")] == ["1/3", "2/3", "3/3"]
    walls = [m["wall_seconds"] for m in result.history]
    assert 0 < walls[0] < walls[1] < walls[2] <= elapsed
    assert [json.loads(line)["wall_seconds"] for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == walls


def test_an_unsafe_change_is_named_with_what_may_change(tmp_path):
    run_job(_spec("train.epochs=1"), tmp_path / "run")
    with pytest.raises(SpecError) as e:
        run_job(_spec("train.epochs=2", "train.learning_rate=0.5", "train.seed=3"), resume=tmp_path / "run")
    changed = str(e.value).split(" job.yaml in ", 1)[1].split(";")[0]
    assert set(changed.split(", ")) == {"train.learning_rate", "train.seed"}
    assert str(e.value).endswith(f"; only {', '.join(sorted(SAFE_RESUME_CHANGES))} may change on resume")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _RecordingReporter(Reporter):
    """A human reporter on a terminal that also records its progress bars' updates."""

    def __init__(self):
        super().__init__("human", stream=io.StringIO(), err=_Terminal())
        self.updates = []

    def epoch_bar(self, epoch, epochs, rows):
        bar = super().epoch_bar(epoch, epochs, rows)
        update = bar.update

        def recorded(step, steps):
            self.updates.append((epoch, step, steps))
            update(step, steps)

        bar.update = recorded
        return bar


def test_each_epoch_has_a_progress_bar_on_a_terminal(tmp_path):
    reporter = _RecordingReporter()
    run_job(_spec("train.epochs=2"), tmp_path / "run", reporter=reporter)
    shown = reporter.err.getvalue()
    assert "epoch 1/2:" in shown and "epoch 2/2:" in shown and "/64.0" in shown
    assert reporter.updates == [(e, s, 4) for e in (0, 1) for s in range(4)]
