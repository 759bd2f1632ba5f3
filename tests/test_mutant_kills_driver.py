"""The driver's end-of-epoch checkpoints record the data they were trained on
(``data_key``, the prepared cache's name): resuming one on other data is refused, as it
is for a mid-epoch one (tests/test_resume.py), docs/design.md "Run directory". And what the
in-process driver records and says about failures, refused folders and skipped checkpoints."""
import pytest

from launcher.driver import run_job
from launcher.rundir import latest_checkpoint
from launcher.spec import load_spec
from lr_core.errors import SpecError


def test_a_resume_of_an_end_of_epoch_checkpoint_on_other_data_is_refused(tmp_path):
    lines = [f"{i % 7 / 7},{i % 3 / 3},{i % 2}\n" for i in range(120)]
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(lines))
    job = tmp_path / "job.yaml"
    job.write_text("name: r\nmodel: {kind: binary}\ndata: {source: csv, path: d.csv, cache: c}\n"
                   "train: {epochs: 1, batch_size: 16}\nresources: {workers: 0}\n")
    run_job(load_spec(job), output=tmp_path / "run")
    ckpt = latest_checkpoint(tmp_path / "run")
    assert (ckpt["epochs_done"], ckpt["step"]) == (1, 0) and ckpt["data_key"].startswith("csv-")
    (tmp_path / "d.csv").write_text("a,b,label\n" + "".join(lines[:90]))
    with pytest.raises(SpecError, match=r"the data changed since epoch-0001 .* start a new run"):
        run_job(load_spec(job, ["train.epochs=2"]), resume=tmp_path / "run")


# ---------------------------------------------------------------------------- restarts, judged runs, skipped checkpoints
import io  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402

from launcher.backends import InProcessBackend  # noqa: E402
from launcher.driver import DriverOptions, _resume_command  # noqa: E402
from launcher.report.progress import Reporter  # noqa: E402
from lr_core.errors import WorkerFailure  # noqa: E402

SMALL = ["resources.workers=0", "data.options.n_train=64", "data.options.n_val=32", "train.batch_size=16"]


def _small(*extra):
    return load_spec("jobs/binary_2d.yaml", [*SMALL, *extra])


class _FailsAt(InProcessBackend):
    """The in-process backend; rank 1 on node n1 dies at the 0-based epochs of ``fail_at`` (each once)."""

    def __init__(self, spec, fail_at):
        super().__init__(spec.loop_config(), spec.load_data())
        self.fail_at = fail_at

    def run_epoch(self, epoch, progress=None, timeout_s=None, **segment):
        if epoch in self.fail_at:
            self.fail_at.remove(epoch)
            raise WorkerFailure(f"rank 1 died in epoch {epoch + 1}", rank=1, node="n1")
        return super().run_epoch(epoch, progress, timeout_s, **segment)


def _flaky_run(spec, out, fail_at, starts_failing):
    """Run ``spec`` with groups that fail at ``fail_at``; the first ``starts_failing`` replacements die
    while they start (a WorkerFailure of no rank)."""
    pending, started, budget = set(fail_at), [], [starts_failing]

    def factory():
        if started and budget[0]:
            budget[0] -= 1
            raise WorkerFailure("no node for rank 0")
        started.append(1)
        return _FailsAt(spec, pending)

    return run_job(spec, out, options=DriverOptions(backend_factory=factory))


@pytest.mark.parametrize("every,failed_start_epoch", [(2, 3), (5, 1)])
def test_summary_json_lists_each_failure_at_the_epoch_it_hit(tmp_path, every, failed_start_epoch):
    """A group dies in epoch 4; its replacement dies while starting. That second failure hit the epoch
    the replacement would have trained first: the one after the newest checkpoint (epoch-0002 with
    checkpoint.every_epochs=2; none yet with 5: epoch 1), docs/design.md "Failures and restarts"."""
    spec = _small("train.epochs=4", f"checkpoint.every_epochs={every}", "failure.max_failures=2")
    _flaky_run(spec, tmp_path / "run", fail_at={3}, starts_failing=1)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["failures"] == [
        {"epoch": 4, "rank": 1, "node": "n1", "error": "rank 1 died in epoch 4"},
        {"epoch": failed_start_epoch, "rank": None, "node": None, "error": "no node for rank 0"}]


def test_the_resume_command_quotes_what_a_shell_would_split(tmp_path):
    assert _resume_command(tmp_path / "run") == f"lrjob run --resume {tmp_path / 'run'}"
    assert _resume_command("s3://bucket/runs/r1") == "lrjob run --resume s3://bucket/runs/r1"
    assert _resume_command("s3://bucket/my runs/r1") == "lrjob run --resume 's3://bucket/my runs/r1'"
    assert _resume_command(tmp_path / "my runs" / "r$1") == f"lrjob run --resume '{tmp_path}/my runs/r$1'"


def test_a_folder_that_holds_no_run_is_refused_with_its_own_way_out(tmp_path):
    """--resume of a folder with files of its own: no checkpoint to resume; --output of it: choose a
    new path. Both untouched (docs/design.md "Run directory")."""
    spec = _small("train.epochs=1")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SpecError) as e:
        run_job(spec, resume=other)
    assert str(e.value) == (f"--resume {other}: no valid checkpoint in {other / 'checkpoints'}; "
                            f"start a new run")
    with pytest.raises(SpecError) as e:
        run_job(spec, other)
    assert str(e.value) == (f"--output {other}: exists, is not empty and holds no lrjob run (no job.yaml, "
                            f"no checkpoints); choose a new path")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def _nan_weight(newest):
    with np.load(newest / "params.npz") as z:
        params = {k: z[k] for k in z.files}
    params["lrjob_layer0_weight"][0, 0] = np.nan
    np.savez(newest / "params.npz", **params)
    return newest, "lrjob_layer0_weight holds NaN or infinite values"


def _past_the_last_step(newest):
    """epoch-0002 made into a checkpoint at step 4 of epoch 3, of an epoch of 4 steps (64 rows of 16)."""
    state = json.loads((newest / "state.json").read_text())
    state["data_cursor"]["step"], state["step_losses"] = 4, [0.5] * 4
    (newest / "state.json").write_text(json.dumps(state))
    moved = newest.with_name("epoch-0002-step-00000004")
    newest.rename(moved)
    return moved, "its data_cursor.step 4 is not a step of an epoch of 4 steps"


@pytest.mark.parametrize("damage", [_nan_weight, _past_the_last_step])
def test_a_damaged_newest_checkpoint_is_named_and_the_run_goes_on_from_the_one_before(tmp_path, capsys, damage):
    """A checkpoint that reads back but does not fit this job (NaN parameters, a step past the
    epoch's last) is skipped with a warning that names it and why; the run continues from the
    previous one (checkpoint_problem)."""
    spec = _small("train.epochs=2")
    run_job(spec, tmp_path / "run")
    newest, why = damage(tmp_path / "run" / "checkpoints" / "epoch-0002")
    capsys.readouterr()
    result = run_job(_small("train.epochs=3"), resume=tmp_path / "run")
    err = capsys.readouterr().err
    assert f"lrjob: warning: checkpoint {newest} skipped: {why}" in err.splitlines(), err
    assert json.loads((tmp_path / "run" / "env.json").read_text())["resumed_from"] == \
        str(tmp_path / "run" / "checkpoints" / "epoch-0001")
    assert [m["epoch"] for m in result.history] == [1, 2, 3]


# ---------------------------------------------------------------------------- what the driver judges before a run
import os  # noqa: E402

from launcher.rundir import RunLock  # noqa: E402
from lr_core.errors import LrjobInputError  # noqa: E402


def test_a_locked_run_of_another_job_is_refused_as_another_jobs_before_its_lock_is_tried(tmp_path):
    """The folder is judged read-only before it is locked (docs/design.md "Run directory"): a run of
    another job, held by its own lrjob, is refused for what it holds, not for the lock."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.yaml").write_text(_small("train.epochs=1", "train.seed=7").resolved().to_yaml())
    lock = RunLock.acquire(run)
    try:
        with pytest.raises(SpecError) as e:
            run_job(_small("train.epochs=1"), run)
    finally:
        lock.release()
    assert str(e.value) == (f"--output {run}: holds a run of another job (its job.yaml differs in train.seed); "
                            f"choose a new path")


def test_a_resume_of_a_folder_another_lrjob_is_starting_names_that_process(tmp_path):
    """A folder of lrjob's own with no run yet is refused on --resume only once locked: while another
    lrjob holds it (starting a run there), the message names that process."""
    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock.acquire(run)  # what a starting lrjob leaves: its lock and the pid file
    try:
        with pytest.raises(LrjobInputError) as e:
            run_job(_small("train.epochs=1"), resume=run)
    finally:
        lock.release()
    assert str(e.value) == (f"{run}: another lrjob process (pid {os.getpid()}) is writing this run directory; "
                            f"wait for it to end, or choose another --output")


def test_a_resume_of_a_run_killed_before_its_first_checkpoint_is_refused_naming_the_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.yaml").write_text(_small("train.epochs=1").resolved().to_yaml())
    with pytest.raises(SpecError) as e:
        run_job(_small("train.epochs=1"), resume=run)
    assert str(e.value) == (f"--resume {run}: no valid checkpoint in {run / 'checkpoints'}; run the job again: "
                            f"lrjob run {run / 'job.yaml'} --output {run} starts it over there")
    assert sorted(p.name for p in run.iterdir()) == ["job.yaml"]
    # what it says to do works: the run's own job.yaml into its own folder starts it over
    from launcher.cli import main

    assert main(["run", str(run / "job.yaml"), "--output", str(run), "--quiet"]) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------------------- the epoch loop: best epoch, early stop
from launcher.driver import Driver  # noqa: E402
from launcher.rundir import list_checkpoints  # noqa: E402
from launcher.tracking import Tracker  # noqa: E402
from test_early_stopping import BASE as CRAFTED, _crafted  # noqa: E402


class _Timed(InProcessBackend):
    """The in-process backend, recording the epoch timeout the driver gives each call."""

    def __init__(self, spec, data, timeouts):
        super().__init__(spec.loop_config(), data)
        self.timeouts = timeouts

    def run_epoch(self, epoch, progress=None, timeout_s=None, **segment):
        self.timeouts.append(timeout_s)
        return super().run_epoch(epoch, progress, timeout_s, **segment)


class _Logged(Tracker):
    """A tracker that keeps what the driver logs of each epoch."""

    def __init__(self):
        self.epochs = []

    def epoch(self, metrics):
        self.epochs.append(metrics)


def test_the_best_epoch_and_the_stopping_epoch_are_saved_and_spared_by_mid_epoch_pruning(tmp_path):
    """The crafted data of tests/test_early_stopping.py: val_loss falls to epoch 6, patience 3 stops
    after epoch 9. Checkpoints every 4 epochs and every 2 of an epoch's 4 steps, keep 1: epoch 6 is
    saved as the best (not due otherwise) and no pruning removes it, the mid-epoch ones' included;
    epoch 9, where early stopping ends, is saved too; model/ is epoch 6 (docs/design.md "Early
    stopping and the best model"). Every segment gets failure.epoch_timeout_s ("Failures and
    restarts"), the tracker every epoch ("Tracking"). The same command again trains nothing."""
    spec = load_spec("jobs/binary_2d.yaml", [
        *CRAFTED, "train.early_stopping={metric: val_loss, patience: 3}", "checkpoint.keep_best=true",
        "checkpoint.every_epochs=4", "checkpoint.every_steps=2", "failure.epoch_timeout_s=1234"])
    data, timeouts = _crafted(), []
    options = DriverOptions(data=data, backend_factory=lambda: _Timed(spec, data, timeouts))
    driver = Driver(spec, tmp_path / "run", options=options)
    driver.tracker = tracker = _Logged()
    result = driver.run()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch-0006", "epoch-0009"]
    assert result.summary["stopped_early"]["epoch"] == 9 and result.summary["exported"]["epoch"] == 6
    assert timeouts == [1234] * 18  # 9 epochs of two segments
    assert tracker.epochs == result.history and len(result.history) == 9
    err = io.StringIO()
    run_job(spec, tmp_path / "run", reporter=Reporter("human", stream=io.StringIO(), err=err), options=options)
    assert "  resume   from epoch-0009: early stopping ended the run after epoch 9; nothing to train" in \
        err.getvalue().splitlines(), err.getvalue()
    assert len(timeouts) == 18


def test_a_resume_says_where_it_continues_or_that_all_epochs_are_trained(tmp_path):
    """The resume line of the output (README "Quickstart"): the epoch it continues at, or, on a run
    whose epochs are all trained (here with a backend of its own, so that the driver runs), that
    nothing is left."""
    def _err(spec, **kw):
        err = io.StringIO()
        run_job(spec, tmp_path / "run", reporter=Reporter("human", stream=io.StringIO(), err=err), **kw)
        return err.getvalue().splitlines()

    run_job(_small("train.epochs=1"), tmp_path / "run")
    assert "  resume   from epoch-0001: continuing at epoch 2" in _err(_small("train.epochs=2"))
    spec = _small("train.epochs=2")
    backend = DriverOptions(backend_factory=lambda: InProcessBackend(spec.loop_config(), spec.load_data()))
    assert "  resume   from epoch-0002: all 2 epochs are trained already; nothing to train" in \
        _err(spec, options=backend)


def test_ctrl_c_while_the_workers_start_leaves_no_run_folder(tmp_path):
    """Interrupted before the run directory is written: the interrupt goes on to the CLI, no
    checkpoint is looked for, and the folder this run made is removed."""
    import signal

    def interrupted():
        raise KeyboardInterrupt

    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_job(_small(), tmp_path / "out" / "run", options=DriverOptions(backend_factory=interrupted))
    finally:
        signal.signal(signal.SIGINT, sigint)  # the driver's "a second Ctrl-C exits" handler
    assert not (tmp_path / "out").exists()
