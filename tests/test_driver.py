"""The driver without a cluster: a backend that fails at epoch k on cue drives the
restart, give-up, resume-command and summary paths of ``launcher.driver`` (no Ray,
no Horovod; the training itself is the real in-process loop). The second part runs a
smaller binary job the same way, with a backend that logs every call, for the resume,
checkpoint cadence and progress paths: about a second per test."""
import io
import json

import numpy as np
import pytest

from launcher.backends import Backend, InProcessBackend
from launcher.driver import Decision, DriverOptions, FailurePolicy, run_job
from launcher.report.progress import Reporter
from launcher.rundir import RunDir, latest_checkpoint
from launcher.spec import SAFE_RESUME_CHANGES, load_spec
from lr_core.errors import SpecError, WorkerFailure

JOB = "jobs/digits_softmax.yaml"
# On binary_2d, a ReLU layer of 8 and the highest rate the spec allows: the loss overflows
# to inf in the first epoch (a DivergenceError).
DIVERGES = ["model.hidden=[8]", "train.learning_rate=1000"]


def _spec(*extra):
    return load_spec(JOB, ["resources.workers=0", "train.epochs=4", "train.momentum=0.5", *extra])


class _Group:
    """Every worker group the driver starts, and what each was asked to do."""

    def __init__(self, spec, fail_at=()):
        self.spec, self.data = spec, spec.load_data()
        self.fail_at = list(fail_at)      # epochs (0-based) that fail, one group each, in order
        self.started, self.ran, self.shut, self.restored = 0, [], 0, []

    def factory(self):
        self.started += 1
        return _FailingBackend(self)


class _FailingBackend(InProcessBackend):
    def __init__(self, group: _Group):
        super().__init__(group.spec.loop_config(), group.data)
        self.group = group

    def run_epoch(self, epoch, progress=None, timeout_s=None, **segment):
        g = self.group
        g.ran.append(epoch)
        if g.fail_at and g.fail_at[0] == epoch:
            g.fail_at.pop(0)
            raise WorkerFailure(f"rank 1 on node-b failed during epoch {epoch + 1}: the worker process died",
                                rank=1, node="node-b")
        return super().run_epoch(epoch, progress, timeout_s, **segment)

    def set_state(self, state):
        self.group.restored.append(state["epochs_done"])
        super().set_state(state)

    def shutdown(self):
        self.group.shut += 1
        super().shutdown()


def _run(spec, group, out, **kw):
    stream = io.StringIO()
    reporter = Reporter("json", stream=stream, err=io.StringIO())
    try:
        return run_job(spec, out, reporter=reporter, options=DriverOptions(backend_factory=group.factory), **kw)
    finally:
        _run.events = [json.loads(line) for line in stream.getvalue().splitlines()]


def _messages():
    return [e["text"] for e in _run.events if e["event"] == "message"]


def test_the_fake_backend_keeps_the_backend_contract():
    group = _Group(_spec())
    backend = group.factory()
    assert isinstance(backend, Backend)


def test_failure_policy_restarts_up_to_max_failures_then_raises():
    policy = FailurePolicy(max_failures=2)
    error = WorkerFailure("x", rank=0)
    assert [policy.decide(error) for _ in range(3)] == [Decision.RESTART, Decision.RESTART, Decision.RAISE]
    assert FailurePolicy(0).decide(error) is Decision.RAISE


def test_a_failure_restarts_the_group_from_the_newest_checkpoint(tmp_path):
    reference = run_job(_spec(), tmp_path / "ref")
    group = _Group(_spec("failure.max_failures=1"), fail_at=[2])
    result = _run(_spec("failure.max_failures=1"), group, tmp_path / "run")

    assert group.started == 2 and group.shut == 2, "the failed group is stopped, the new one at the end"
    assert group.restored == [2], "the new group starts from the checkpoint after epoch 2"
    assert group.ran == [0, 1, 2, 2, 3]
    assert any("restart 1/1: new workers resume from epoch 2" in m for m in _messages()), _messages()
    assert [e["epoch"] for e in _run.events if e["event"] == "epoch"] == [1, 2, 3, 4]
    run = RunDir.open(tmp_path / "run")
    assert run.summary()["status"] == "completed" and [h["epoch"] for h in run.history()] == [1, 2, 3, 4]
    for name, value in reference.params.items():
        assert np.array_equal(result.params[name], value), name


def test_past_max_failures_the_run_fails_with_the_resume_command(tmp_path):
    spec = _spec("failure.max_failures=1")
    group = _Group(spec, fail_at=[2, 2])
    with pytest.raises(WorkerFailure) as info:
        _run(spec, group, tmp_path / "run")
    text = str(info.value)
    assert "rank 1 on node-b" in text and "last completed epoch 2" in text and "newest checkpoint: epoch-0002" in text
    assert f"resume with: lrjob run --resume {tmp_path / 'run'}" in text
    assert info.value.rank == 1
    assert group.started == 2 and group.shut == 2
    summary = RunDir.open(tmp_path / "run").summary()
    assert summary["status"] == "failed" and summary["epochs_done"] == 2 and "resume with" in summary["error"]

    resumed_group = _Group(spec)
    resumed = _run(spec, resumed_group, None, resume=tmp_path / "run")
    assert resumed_group.ran == [2, 3] and resumed_group.restored == [2]
    assert RunDir.open(tmp_path / "run").summary()["status"] == "completed"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]


def test_a_group_that_fails_to_start_counts_as_a_failure(tmp_path):
    spec = _spec("failure.max_failures=2")
    group = _Group(spec, fail_at=[1])
    group_start_fails = [0]

    def factory():
        if group.started == 1 and not group_start_fails[0]:  # the first replacement dies at start-up
            group_start_fails[0] = 1
            group.started += 1
            raise WorkerFailure("rank 0 on node-c failed during start-up: gone", rank=0, node="node-c")
        return _Group.factory(group)

    group.factory = factory
    _run(spec, group, tmp_path / "run")
    assert any("restart 2/2" in m for m in _messages()), _messages()
    assert RunDir.open(tmp_path / "run").summary()["status"] == "completed"


def test_ctrl_c_marks_the_run_interrupted_and_stops_the_group(tmp_path):
    spec = _spec()
    group = _Group(spec)

    class _Interrupting(_FailingBackend):
        def run_epoch(self, epoch, progress=None, timeout_s=None, **segment):
            if epoch == 2:
                raise KeyboardInterrupt
            return super().run_epoch(epoch, progress, timeout_s, **segment)

    group.factory = lambda: _Interrupting(group)
    with pytest.raises(KeyboardInterrupt):
        _run(spec, group, tmp_path / "run")
    summary = RunDir.open(tmp_path / "run").summary()
    assert summary["status"] == "interrupted" and summary["resume"] == f"lrjob run --resume {tmp_path / 'run'}"
    assert group.shut == 1


def test_an_error_of_the_job_is_not_restarted(tmp_path):
    """A diverging loss is the job's own error: no restart can help."""
    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0", *DIVERGES, "failure.max_failures=3"])
    group = _Group(spec)
    from lr_core.errors import DivergenceError

    with pytest.raises(DivergenceError):
        _run(spec, group, tmp_path / "run")
    assert group.started == 1 and group.shut == 1
    assert RunDir.open(tmp_path / "run").summary()["status"] == "failed"


def test_epoch_timeout_is_the_spec_value_or_ten_times_the_slowest_epoch(tmp_path):
    from launcher.driver import Driver

    d = Driver(_spec("failure.epoch_timeout_s=7"), tmp_path / "a")
    assert d.epoch_timeout() == 7
    d = Driver(_spec(), tmp_path / "b")
    assert d.epoch_timeout() == 300.0
    d.history = [{"epoch_seconds": 12.0}, {"epoch_seconds": 45.0}]
    assert d.epoch_timeout() == 450.0


def test_the_result_carries_the_summary_that_summary_json_holds(tmp_path):
    result = run_job(_spec("train.epochs=2"), tmp_path / "run")
    assert result.summary == RunDir.open(tmp_path / "run").summary()
    assert result.summary["status"] == "completed" and result.summary["epochs_done"] == 2


# ---------------------------------------------------------------------------- resume and checkpoints, binary job
BINARY_JOB = "jobs/binary_2d.yaml"
SMALL_BINARY = ["resources.workers=0", "data.options.n_train=64", "data.options.n_val=32", "train.batch_size=16",
                "train.momentum=0.9"]


def _binary_spec(*extra):
    return load_spec(BINARY_JOB, [*SMALL_BINARY, *extra])


class _Flaky(InProcessBackend):
    """The in-process backend; raises WorkerFailure at the epochs in ``fail_at`` (each once)."""

    def __init__(self, spec, log, fail_at):
        super().__init__(spec.loop_config(), spec.load_data())
        self.log, self.fail_at = log, fail_at
        log.append(("new",))

    def set_state(self, state):
        self.log.append(("restore", state["epochs_done"]))
        super().set_state(state)

    def run_epoch(self, epoch, progress=None, timeout_s=None, **segment):
        if epoch in self.fail_at:
            self.fail_at.remove(epoch)
            self.log.append(("fail", epoch))
            raise WorkerFailure(f"rank 1 died in epoch {epoch + 1}", rank=1, node="n1")
        self.log.append(("epoch", epoch))
        return super().run_epoch(epoch, progress, timeout_s, **segment)

    def shutdown(self):
        self.log.append(("shutdown",))
        super().shutdown()


def _run_flaky(spec, log, fail_at=(), factory_fails=0, reporter=None, **kw):
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
    reference = run_job(_binary_spec("train.epochs=4"), output=tmp_path / "ref")
    log, out = [], io.StringIO()
    result = _run_flaky(_binary_spec("train.epochs=4", "failure.max_failures=1", "checkpoint.every_epochs=2"), log,
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
    result = _run_flaky(_binary_spec("train.epochs=3", "failure.max_failures=2", "checkpoint.every_epochs=2"), log,
                  fail_at={1}, reporter=Reporter("json", stream=out), output=tmp_path / "run")
    assert log == [("new",), ("epoch", 0), ("fail", 1), ("shutdown",), ("new",), ("epoch", 0), ("epoch", 1),
                   ("epoch", 2), ("shutdown",)]
    assert [m["epoch"] for m in result.history] == [1, 2, 3]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    assert "lrjob: restart 1/2: new workers resume from the start" in \
        [e["text"] for e in _events(out) if e["event"] == "message"]


def test_a_replacement_that_fails_to_start_counts_as_a_failure(tmp_path):
    log = []
    result = _run_flaky(_binary_spec("train.epochs=3", "failure.max_failures=2"), log, fail_at={1}, factory_fails=1,
                  output=tmp_path / "run")
    assert log == [("new",), ("epoch", 0), ("fail", 1), ("shutdown",), ("factory failed",),
                   ("new",), ("restore", 1), ("epoch", 1), ("epoch", 2), ("shutdown",)]
    assert [m["epoch"] for m in result.history] == [1, 2, 3]


def test_past_the_restart_budget_the_run_fails_with_a_resume_command(tmp_path):
    log = []
    with pytest.raises(WorkerFailure) as e:
        _run_flaky(_binary_spec("train.epochs=4", "failure.max_failures=1"), log, fail_at={2}, factory_fails=1,
             output=tmp_path / "run")
    assert log.count(("shutdown",)) == 1                    # the failed group, once
    assert str(e.value) == (f"no node for rank 0; last completed epoch 2, newest checkpoint: epoch-0002; "
                            f"resume with: lrjob run --resume {tmp_path / 'run'}")
    assert (e.value.rank, e.value.node, e.value.last_epoch) == (None, None, 2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == str(e.value)
    assert summary["resume"] == f"lrjob run --resume {tmp_path / 'run'}"  # for scripts: the same command

    # the command it names finishes the run
    done = run_job(_binary_spec("train.epochs=4", "failure.max_failures=1"), resume=tmp_path / "run")
    assert [m["epoch"] for m in done.history] == [1, 2, 3, 4]


def test_a_failure_before_any_checkpoint_says_to_run_again(tmp_path):
    log = []
    with pytest.raises(WorkerFailure) as e:
        _run_flaky(_binary_spec("train.epochs=2", "failure.max_failures=0"), log, fail_at={0}, output=tmp_path / "run")
    assert str(e.value) == ("rank 1 died in epoch 1; last completed epoch 0, newest checkpoint: none; "
                            "no checkpoint was written yet: run the job again")
    assert (e.value.rank, e.value.node, e.value.last_epoch) == (1, "n1", 0)
    assert log.count(("shutdown",)) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "resume" not in summary


class _Interrupted(InProcessBackend):
    def run_epoch(self, epoch, progress=None, timeout_s=None, **segment):
        if epoch == 2:
            raise KeyboardInterrupt
        return super().run_epoch(epoch, progress, timeout_s, **segment)


@pytest.mark.parametrize("every,resumable", [(1, True), (5, False)])
def test_an_interrupted_run_names_its_resume_command_once_a_checkpoint_exists(tmp_path, every, resumable):
    spec = _binary_spec("train.epochs=5", f"checkpoint.every_epochs={every}")
    with pytest.raises(KeyboardInterrupt):
        run_job(spec, tmp_path / "run", options=DriverOptions(
            backend_factory=lambda: _Interrupted(spec.loop_config(), spec.load_data())))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary.get("resume") == (f"lrjob run --resume {tmp_path / 'run'}" if resumable else None)


def test_json_messages_carry_no_column_padding(tmp_path):
    """The human header aligns its words in columns ("  resume   from"); a message event does not."""
    import io

    from launcher.report.progress import Reporter

    spec = _binary_spec("train.epochs=1")
    run_job(spec, tmp_path / "run")
    out = io.StringIO()
    run_job(spec, tmp_path / "run", reporter=Reporter("json", stream=out, err=io.StringIO()))
    said = [json.loads(line)["text"] for line in out.getvalue().splitlines() if '"message"' in line]
    assert said == ["resume from epoch-0001: its 1 epoch is trained already; nothing to train"], said


def test_a_json_stream_of_an_interrupted_run_holds_its_summary(tmp_path):
    """--json: a run that does not complete still gives its summary.json as a summary event
    (status interrupted, the resume command), as a completed one does."""
    import io

    from launcher.report.progress import Reporter

    spec = _binary_spec("train.epochs=5")
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run_job(spec, tmp_path / "run", reporter=Reporter("json", stream=out, err=io.StringIO()),
                options=DriverOptions(backend_factory=lambda: _Interrupted(spec.loop_config(), spec.load_data())))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "summary"]
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert events[-1] == {"event": "summary", **stored} and stored["status"] == "interrupted"
    assert stored["resume"] == f"lrjob run --resume {tmp_path / 'run'}"


@pytest.mark.parametrize("epochs,every,keep,want", [(5, 2, 10, [2, 4, 5]), (4, 3, 10, [3, 4]), (4, 1, 2, [3, 4]),
                                                    (3, 5, 1, [3])])
def test_checkpoint_cadence_and_pruning(tmp_path, epochs, every, keep, want):
    run_job(_binary_spec(f"train.epochs={epochs}", f"checkpoint.every_epochs={every}", f"checkpoint.keep={keep}"),
            tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [f"epoch-{e:04d}" for e in want]
    ck = latest_checkpoint(tmp_path / "run")
    assert ck["epochs_done"] == epochs and len(ck["history"]) == epochs
    # the digest ignores what may change on resume
    assert ck["spec_digest"] == _binary_spec(f"train.epochs={epochs + 3}", "checkpoint.keep=7").digest(
        ignore=SAFE_RESUME_CHANGES)


def test_resume_continues_where_the_checkpoint_is(tmp_path):
    full = run_job(_binary_spec("train.epochs=4"), tmp_path / "full")
    log = []
    run_job(_binary_spec("train.epochs=2"), tmp_path / "run")
    resumed = _run_flaky(_binary_spec("train.epochs=4"), log, resume=tmp_path / "run")
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
    run_job(_binary_spec("train.epochs=1"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "env.json").read_text())["resumed_from"] is None


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    with pytest.raises(SpecError) as e:
        run_job(_binary_spec("train.epochs=2"), resume=tmp_path / "nothing")
    assert str(e.value) == f"--resume {tmp_path / 'nothing'}: no such run directory"

    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError) as e:
        run_job(_binary_spec("train.epochs=2"), resume=tmp_path / "empty")
    assert str(e.value) == (f"--resume {tmp_path / 'empty'}: no valid checkpoint in "
                            f"{tmp_path / 'empty' / 'checkpoints'}; start a new run")

    run_job(_binary_spec("train.epochs=1"), tmp_path / "run")
    with pytest.raises(SpecError) as e:
        run_job(_binary_spec("train.epochs=2", "train.learning_rate=0.5", "train.seed=3"), resume=tmp_path / "run")
    assert str(e.value).startswith(f"--resume {tmp_path / 'run'}: the spec differs from the run's job.yaml in ")
    assert "train.learning_rate" in str(e.value) and "train.seed" in str(e.value)
    assert "train.epochs" not in str(e.value).split(";")[0]

    (tmp_path / "run" / "job.yaml").unlink()   # without job.yaml the checkpoint's digest decides
    with pytest.raises(SpecError) as e:
        run_job(_binary_spec("train.epochs=2", "train.learning_rate=0.5"), resume=tmp_path / "run")
    ck = tmp_path / "run" / "checkpoints" / "epoch-0001"
    assert str(e.value) == (f"--resume {tmp_path / 'run'}: checkpoint {ck} was written by a different spec; "
                            f"start a new run")
    done = run_job(_binary_spec("train.epochs=2", "checkpoint.keep=5"), resume=tmp_path / "run")  # safe changes only
    assert [m["epoch"] for m in done.history] == [1, 2]


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_result(tmp_path):
    done = run_job(_binary_spec("train.epochs=2"), tmp_path / "run")
    log = []
    again = _run_flaky(_binary_spec("train.epochs=2"), log, resume=tmp_path / "run")
    assert log == [("new",), ("restore", 2), ("shutdown",)]
    for name, value in done.params.items():
        assert np.array_equal(again.params[name], value), name
    assert again.summary["status"] == "completed"


def test_epochs_are_reported_as_they_finish(tmp_path):
    import time

    out = io.StringIO()
    t0 = time.time()
    result = run_job(_binary_spec("train.epochs=3"), tmp_path / "run", reporter=Reporter("human", stream=out,
                                                                                 err=io.StringIO()))
    elapsed = time.time() - t0
    rows = [line.split()[0] for line in out.getvalue().splitlines()[1:] if line.split()]
    assert [r for r in rows if r.endswith("/3")] == ["1/3", "2/3", "3/3"]
    walls = [m["wall_seconds"] for m in result.history]
    assert 0 < walls[0] < walls[1] < walls[2] <= elapsed
    assert [json.loads(line)["wall_seconds"] for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == walls


def test_an_unsafe_change_is_named_with_what_may_change(tmp_path):
    run_job(_binary_spec("train.epochs=1"), tmp_path / "run")
    with pytest.raises(SpecError) as e:
        run_job(_binary_spec("train.epochs=2", "train.learning_rate=0.5", "train.seed=3"), resume=tmp_path / "run")
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
    run_job(_binary_spec("train.epochs=2"), tmp_path / "run", reporter=reporter)
    shown = reporter.err.getvalue()
    assert "epoch 1/2:" in shown and "epoch 2/2:" in shown and "/64.0" in shown
    assert reporter.updates == [(e, s, 4) for e in (0, 1) for s in range(4)]


def test_a_continued_run_keeps_the_failures_its_earlier_drivers_met(tmp_path):
    spec = _spec()
    with pytest.raises(WorkerFailure):
        _run(spec, _Group(spec, fail_at=[2]), tmp_path / "run")
    first = RunDir.open(tmp_path / "run").summary()
    assert [(f["epoch"], f["rank"], f["node"]) for f in first["failures"]] == [(3, 1, "node-b")]
    assert first["resizes"] == []
    _run(spec, _Group(spec), None, resume=tmp_path / "run")
    summary = RunDir.open(tmp_path / "run").summary()
    assert summary["status"] == "completed" and summary["failures"] == first["failures"]


def _in_a_fresh_interpreter(code: str):
    """The JSON that ``code`` prints last, run by a new Python in the checkout: this test
    process has imported MXNet, scikit-learn and pandas already."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_env_json_versions_are_read_without_importing_mxnet_into_the_driver():
    """The driver of a distributed run trains nothing: recording MXNet's version in env.json
    must not import MXNet there (it cost about 2 s and 80 MiB, with SciPy, scikit-learn and
    pandas)."""
    import horovod
    import mxnet
    import ray

    versions, imported = _in_a_fresh_interpreter(
        "import sys, json; from launcher.driver import _versions; "
        "print(json.dumps([_versions(), 'mxnet' in sys.modules]))")
    assert (versions["mxnet"], versions["horovod"], versions["ray"]) == (mxnet.__version__, horovod.__version__,
                                                                         ray.__version__)
    assert not imported, "recording the versions imported MXNet"


def test_a_worker_imports_mxnet_without_scikit_learn_and_pandas():
    """launcher.backends.worker.import_mxnet: MXNet imported with scikit-learn hidden (it would
    bring pandas too, about 70 MiB per worker), and scikit-learn importable again afterwards."""
    before, base_is_object, again, after = _in_a_fresh_interpreter(
        "import sys, json; from launcher.backends.worker import import_mxnet; mx = import_mxnet(); "
        "before = [m in sys.modules for m in ('mxnet', 'sklearn', 'pandas')]; "
        "base_is_object = mx.model.BASE_ESTIMATOR is object; again = import_mxnet() is mx; "
        "import sklearn.base; print(json.dumps([before, base_is_object, again, 'sklearn' in sys.modules]))")
    assert before == [True, False, False], "MXNet's import brought scikit-learn or pandas along"
    assert base_is_object and again and after


def test_a_package_version_comes_from_the_module_its_distribution_or_nothing(monkeypatch):
    """launcher.driver._package_version, in this process: a loaded module's __version__; else the
    distribution of the module's own name; else the distribution that installs the module (PyYAML
    installs yaml, as mxnet-cu112 installs mxnet); None for a module nothing installs."""
    import sys
    import types
    from importlib.metadata import version

    from launcher.driver import _package_version

    fake = types.ModuleType("fake_pkg_for_test")
    fake.__version__ = "9.9"
    monkeypatch.setitem(sys.modules, "fake_pkg_for_test", fake)
    assert _package_version("fake_pkg_for_test") == "9.9"
    monkeypatch.delitem(sys.modules, "numpy")  # not loaded: its distribution, numpy
    assert _package_version("numpy") == version("numpy")
    monkeypatch.delitem(sys.modules, "yaml")  # installed by PyYAML
    assert _package_version("yaml") == version("PyYAML")
    assert _package_version("no_such_package_anywhere") is None


def test_env_json_versions_name_each_package(monkeypatch):
    """_versions: lrjob's own, Python's, and each package's version under its name; a module
    that two distributions claim takes the first that is installed."""
    import importlib.metadata
    import platform
    import sys

    import horovod
    import mxnet
    import ray

    import launcher
    from launcher.driver import _package_version, _versions

    assert _versions() == {"lrjob": launcher.__version__, "python": platform.python_version(),
                           "numpy": np.__version__, "mxnet": mxnet.__version__,
                           "horovod": horovod.__version__, "ray": ray.__version__}
    monkeypatch.delitem(sys.modules, "yaml")
    monkeypatch.setattr(importlib.metadata, "packages_distributions",
                        lambda: {"yaml": ["no-such-distribution", "PyYAML"]})
    assert _package_version("yaml") == importlib.metadata.version("PyYAML")
