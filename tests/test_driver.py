"""The driver without a cluster: a backend that fails at epoch k on cue drives the
restart, give-up, resume-command and summary paths of ``launcher.driver`` (no Ray,
no Horovod; the training itself is the real in-process loop)."""
import io
import json

import numpy as np
import pytest

from launcher.backends import Backend, InProcessBackend
from launcher.driver import Decision, DriverOptions, FailurePolicy, run_job
from launcher.report.progress import Reporter
from launcher.rundir import RunDir
from launcher.spec import load_spec
from lr_core.errors import WorkerFailure

JOB = "jobs/digits_softmax.yaml"


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

    def run_epoch(self, epoch, progress=None, timeout_s=None):
        g = self.group
        g.ran.append(epoch)
        if g.fail_at and g.fail_at[0] == epoch:
            g.fail_at.pop(0)
            raise WorkerFailure(f"rank 1 on node-b failed during epoch {epoch + 1}: the worker process died",
                                rank=1, node="node-b")
        return super().run_epoch(epoch, progress, timeout_s)

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


def test_a_failure_before_any_checkpoint_says_to_run_again(tmp_path):
    group = _Group(_spec(), fail_at=[0])
    with pytest.raises(WorkerFailure, match="no checkpoint was written yet: run the job again"):
        _run(_spec(), group, tmp_path / "run")
    assert RunDir.open(tmp_path / "run").summary()["status"] == "failed"
    assert group.shut == 1


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
        def run_epoch(self, epoch, progress=None, timeout_s=None):
            if epoch == 2:
                raise KeyboardInterrupt
            return super().run_epoch(epoch, progress, timeout_s)

    group.factory = lambda: _Interrupting(group)
    with pytest.raises(KeyboardInterrupt):
        _run(spec, group, tmp_path / "run")
    summary = RunDir.open(tmp_path / "run").summary()
    assert summary["status"] == "interrupted" and summary["resume"] == f"lrjob run --resume {tmp_path / 'run'}"
    assert group.shut == 1


def test_an_error_of_the_job_is_not_restarted(tmp_path):
    """A diverging loss is the job's own error: no restart can help."""
    spec = load_spec(JOB, ["resources.workers=0", "train.learning_rate=1e38", "failure.max_failures=3"])
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
