"""The driver of one run (docs/design.md#flow): it owns the epoch loop, checkpoints,
restarts and the run directory; a backend owns the workers.

    from launcher.spec import load_spec
    from launcher.driver import run_job
    result = run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0"]), "runs/demo")

``Driver`` holds the spec, the run directory, the backend factory and the reporter;
``run()`` is the epoch loop, with an ``ExitStack`` that owns the Ray session, the signal
handlers, the backend's shutdown and the final summary. What happens after a worker
failure is ``FailurePolicy.decide``'s call (the shape of Ray Train's ``FailurePolicy``).
"""
from __future__ import annotations

import datetime
import enum
import getpass
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lr_core import faults
from lr_core.data import Dataset
from lr_core.errors import DataError, LrjobError, SpecError, WorkerFailure, counted
from lr_core.sharding import num_batches, segments

from .backends import Backend
from .elastic import Resize, placeable, world_size
from .report.advice import (TRAIN_SAMPLE, baseline_loss, class_counts, data_warnings, fit_warnings,
                            history_warnings, placement_warnings, schedule_warnings)
from .report.progress import Reporter, prepare_feedback
from .rundir import (RunDir, RunLock, check_no_links, check_writable, checkpoint_problem, clean_leftovers,
                     latest_checkpoint, make_run_dir, remove_if_empty, run_state)
from .spec import SAFE_RESUME_CHANGES, JobSpec
from .stopping import stop_reason, undefined_message, watches
from .storage import (STAGING, RemoteRun, StorageError, is_remote, open_remote, staged_uri, without_login,
                      without_logins, write_staged_uri)
from .tracking import make_tracker

__all__ = ["run_job", "run_rank", "Driver", "DriverOptions", "RunHooks", "FailurePolicy", "Decision", "RunResult"]


@dataclass(frozen=True)
class RunHooks:
    """What tests may ask of a run beyond its results (off in production)."""

    record_shards: bool = False        # every rank logs the rows it trained on
    collect_rank_params: bool = False  # every rank's final parameters, not only rank 0's


@dataclass(frozen=True)
class DriverOptions:
    """How a run is started, besides its spec."""

    address: str | None = None                          # a Ray cluster; None: RAY_ADDRESS or a local Ray
    runs_dir: str | os.PathLike = "runs"                # where a new run directory goes without an output
    backend_factory: Callable[[], Backend] | None = None  # e.g. this rank under horovodrun (backends/hvdrun.py)
    data: Dataset | None = None                         # the job's data when already loaded (run_rank)
    hooks: RunHooks = RunHooks()
    oversubscribe: bool = False                         # an embedded Ray may start more workers than CPUs
    argv: tuple[str, ...] | None = None                 # the command env.json records; None: sys.argv


@dataclass
class RunResult:
    """What ``run_job`` returns: the run directory, one metrics dict per epoch, rank 0's final
    parameters, the run's summary (what summary.json holds) and the placement;
    ``rank_params`` and ``shard_logs`` only with ``RunHooks``."""

    path: Path
    history: list[dict]
    params: dict[str, np.ndarray]
    summary: dict
    placement: list[dict] = field(default_factory=list)
    rank_params: list[dict] | None = None
    shard_logs: list[dict] | None = None


class Decision(enum.Enum):
    """``FailurePolicy.decide``'s answer to a worker failure: restart the worker group, or raise."""

    RESTART = "restart"
    RAISE = "raise"


@dataclass
class FailurePolicy:
    """Restart the worker group after a worker failure, at most ``max_failures`` times
    in a run (docs/design.md#failures-and-restarts)."""

    max_failures: int
    failures: int = 0

    def decide(self, error: WorkerFailure) -> Decision:
        """Count ``error`` as one more failure; returns RESTART while the count is at most
        ``max_failures``, else RAISE."""
        self.failures += 1
        return Decision.RESTART if self.failures <= self.max_failures else Decision.RAISE


def run_job(spec: JobSpec, output: str | os.PathLike | None = None, *, resume: str | os.PathLike | None = None,
            reporter: Reporter | None = None, options: DriverOptions | None = None) -> RunResult:
    """Run one job end to end and write its run directory (``output``, or a new folder
    under ``options.runs_dir``; with ``resume``, that run's directory). An ``output`` that
    holds a run of this job continues it from its newest good checkpoint (a rerun of a
    killed command finishes it); one of another job is refused. ``output`` or ``resume`` may be
    a storage URI (``s3://...``, docs/design.md#storage): the run is then written to a local
    staging directory and uploaded (``RunResult.path`` is that directory, removed once all is
    uploaded). Returns the parameters, the history and the summary."""
    return Driver(spec, output, resume=resume, reporter=reporter, options=options).run()


class Driver:
    """One run: bad input (spec, data, output path, resume) fails in the constructor,
    before anything is written; ``run()`` trains and writes the run directory."""

    def __init__(self, spec: JobSpec, output: str | os.PathLike | None = None, *,
                 resume: str | os.PathLike | None = None, reporter: Reporter | None = None,
                 options: DriverOptions | None = None):
        self._t_start = time.time()  # wall_seconds count from here, data loading included
        faults.check()
        # job.yaml stores data.standardize resolved: a resume reads what this run did
        self.spec = spec = spec.resolved()
        self.options = options or DriverOptions()
        self.reporter = reporter or Reporter("silent")
        self.checkpoint: dict | None = None
        self._lock: RunLock | None = None
        self._created: list[Path] = []  # the folders this driver made, removed again if it never writes
        self.run_dir: RunDir | None = None
        # A storage URI (docs/design.md#storage): a local staging run directory, filled with the
        # remote run's job.yaml and complete checkpoints, stands in for it from here on.
        self.remote: RemoteRun | None = None
        self._staging_made: list[Path] = []
        self._uploaded_all = False
        self._adopted = False
        if is_remote(self.options.runs_dir):
            raise SpecError(f"--runs-dir {without_login(self.options.runs_dir)}: must be a local folder (it also "
                            f"holds the staging copies of runs on storage); for storage name the run: "
                            f"--output s3://bucket/run")
        if is_remote(resume) or (not resume and is_remote(output)):
            staging = self._stage_remote(spec, resume or output, "--resume" if resume else "--output")
            resume, output = (staging, None) if resume else (None, staging)
        elif resume and staged_uri(resume):
            # a staging copy kept after a failed upload: the run goes on there and is uploaded to its
            # URI again (docs/design.md#storage)
            self.remote = open_remote(staged_uri(resume), "--resume")
            self._adopted = True  # the user's copy: removed only once all of it is uploaded
            self.remote.adopt(Path(resume))
        if resume:
            self.path = Path(resume)
            if not self.path.is_dir():
                raise SpecError(f"--resume {self.path}: no such run directory")
        else:
            output = Path(output) if output else None
            if output is not None:
                check_writable(output)
            else:
                check_writable(Path(self.options.runs_dir), "--runs-dir")
            self.path, self._created = make_run_dir(output, spec.name, self.options.runs_dir)
        try:
            self._open_run_dir(spec, resume)
            if self.remote is not None:  # the staging copy names its URI: --resume STAGING uploads it there
                write_staged_uri(self.path, self.remote.uri)
        except BaseException:
            self._release()
            raise

    def _stage_remote(self, spec: JobSpec, uri: str, flag: str) -> Path:
        """Check the run's storage URI (write access, what it holds) and download its run into a new
        local staging directory under ``<runs_dir>/.staging/``; returns that directory. A URI that
        holds no lrjob run is refused, as a local folder would be."""
        remote = open_remote(uri, flag)
        kind = remote.state()
        if kind == "other":
            raise SpecError(f"{flag} {remote.shown}: exists, is not empty and holds no lrjob run (no job.yaml, "
                            f"no checkpoints); choose a new path")
        if flag == "--resume" and kind == "new":
            raise SpecError(f"--resume {remote.shown}: no valid checkpoint in {remote.shown}/checkpoints; "
                            f"start a new run")
        root = Path(self.options.runs_dir) / STAGING
        check_writable(root, "--runs-dir")
        staging, self._staging_made = make_run_dir(None, spec.name, root)
        try:
            remote.stage(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            remove_if_empty(self._staging_made)
            raise
        self.remote = remote
        return staging

    @property
    def location(self) -> str | Path:
        """Where the run is, as the user names it: the storage URI (without a login), else the folder."""
        return without_login(self.remote.uri) if self.remote else self.path

    def _shown(self, path: Path) -> str | Path:
        """``path`` inside the run as the user knows it: under the storage URI for a staged run."""
        if self.remote is None:
            return path
        return f"{self.remote.shown.rstrip('/')}/{Path(path).relative_to(self.path).as_posix()}"

    def _sync(self, final: bool = False) -> None:
        """Upload what is new in the staging directory to the run's storage URI (docs/design.md#storage)."""
        if self.remote is not None:
            self.remote.sync(self.path, final)

    def _open_run_dir(self, spec: JobSpec, resume) -> None:
        """Lock the run directory, then judge what it holds (docs/design.md#run-directory): a new run,
        a run of this job to continue, or something to refuse. Bad input fails here, before anything
        is written."""
        where = self.remote.shown if self.remote else self.path
        flag = f"--resume {where}" if resume else f"--output {where}"
        # Judged read-only first: a folder that holds no run, or another job's, is refused before
        # anything in it is locked, walked or cleaned (docs/design.md#run-directory).
        made = bool(self._created) and self._created[-1] == self.path
        kind = "new" if made else self._judge(spec, flag, resume, locked=False)
        self._lock = RunLock.acquire(self.path)
        if not made:
            kind = self._judge(spec, flag, resume, locked=True)  # again under the lock: nobody changes it now
        check_no_links(self.path)
        clean_leftovers(self.path)  # under the lock: no live process owns them
        self._continuing = kind == "run"
        # bad data fails here, before anything is written
        self.data = self.options.data if self.options.data is not None else spec.prepared_data(
            *prepare_feedback(self.reporter))
        # The prepared folder's name is the content address of the data: a checkpoint
        # records it, and a resume on other data is refused.
        self._data_key = Path(self.data.home).name if self.data.home else None
        self._digest = spec.digest(ignore=SAFE_RESUME_CHANGES)
        if self._continuing:
            self.checkpoint = self._good_checkpoint(flag, [])
            if self.checkpoint is None and resume:  # a run stopped before its first checkpoint
                again = ("run the job again with this URI as --output to start it over there"
                         if self.remote is not None else
                         f"run the job again: lrjob run {shlex.quote(str(self.path / 'job.yaml'))} --output "
                         f"{shlex.quote(str(self.path))} starts it over there")
                raise SpecError(f"{flag}: no valid checkpoint in {self._shown(self.path / 'checkpoints')}; {again}")
        if self.checkpoint:
            _check_resume_data(self.path, self.checkpoint, self._data_key, spec, flag)
        # What a statistician would say about the data (docs/design.md#warnings); the fit's
        # warnings join them when training ends.
        self._counts = class_counts(self.data.y_train, spec.model.outputs_classes)
        self.warnings: list[dict] = data_warnings(self._counts, list(self.data.extra.get("columns") or []),
                                                  self.data.stats)
        self.warnings += schedule_warnings(int(spec.train.epochs), spec.train.lr_schedule)
        if self.options.backend_factory is None:  # the driver's own backend: in-process when workers is 0
            self.warnings += placement_warnings(spec.workers, spec.resources.gpus_per_worker)
        self._fit: dict = {}
        self.backend_factory = self.options.backend_factory or self._default_backend
        # Only a Ray worker group of the driver's own changes its size (docs/design.md#failures-and-restarts).
        self._elastic = self.options.backend_factory is None and spec.workers > 0
        self.world = spec.workers  # the workers of the current group
        self.resizes: list[Resize] = []
        self.policy = FailurePolicy(spec.failure.max_failures)
        # Early stopping and the best epoch: the driver's decisions, from the history alone
        # (launcher/stopping.py, docs/design.md#early-stopping-and-the-best-model).
        self._early, self._best = watches(spec)
        self._stopped: dict | None = None   # {"epoch", "reason"} once early stopping ends the run
        self._exported: dict | None = None  # {"epoch", "selected_by"}: the epoch model/ holds
        # Every worker failure the run met, restarted or not: summary.json's ``failures``; a run
        # continued in its directory keeps those (and the resizes) its earlier drivers recorded.
        self.failures: list[dict] = []
        # (a run started over in place, without a checkpoint, keeps none of its discarded record)
        self._earlier = _earlier_events(self.path) if self.checkpoint else {"failures": [], "resizes": []}
        # The next step of the epoch in progress (a mid-epoch checkpoint resumes there).
        self._step = int(self.checkpoint.get("step", 0)) if self.checkpoint else 0
        self.history: list[dict] = list(self.checkpoint["history"]) if self.checkpoint else []
        # A run continued from its checkpoint is one run: its wall time counts on from the earlier
        # commands', and a change of worker count is one of its resizes (docs/design.md#run-directory).
        # The count it changes from is the one that trained the checkpoint; the change is recorded
        # once this command has trained something that stays (one that trains nothing changed nothing).
        self._wall0, self._parts, self._continued = 0.0, [], None
        if self.checkpoint:
            self._wall0 = _earlier_wall(self._earlier, self.history)
            self._parts = _earlier_parts(self.path)
            before = _earlier_count(self._earlier, self.checkpoint)
            if before is not None and before != spec.workers:
                self._continued = Resize(len(self.history) + 1, before, spec.workers,
                                         f"continued {_workers_phrase(spec.workers)}")
        self.backend: Backend | None = None
        self._backend_down = False
        self.status: dict = {"status": "starting"}
        self._restore_signals: Callable[[], None] = lambda: None
        self._result: RunResult | None = None
        # MLflow when the spec's tracking section asks for it (docs/design.md#tracking)
        self.tracker = make_tracker(spec)
        if self.reporter.mode != "silent":  # the warning goes through the Reporter (a closed pipe silences it)
            self.tracker.warn = self.reporter.warning

    # ------------------------------------------------------------------ the run
    def run(self) -> RunResult:
        """Start or join Ray (N workers), train every epoch and write the run directory; returns the
        ``RunResult``. ``summary.json`` records how the run ended, also when it fails or is interrupted."""
        finished = self._finished_already()
        if finished is not None:
            return finished
        with ExitStack() as stack:
            stack.callback(self._release)                     # the very last: the lock
            stack.callback(self._finish)                      # then: summary, plots
            stack.callback(lambda: self._restore_signals())
            try:
                if self.spec.workers > 0 and self.options.backend_factory is None:
                    from .backends.cluster import RaySession

                    stack.enter_context(RaySession(self.options.address, self.spec.workers,
                                                   self.spec.resources.cpus_per_worker,
                                                   oversubscribe=self.options.oversubscribe,
                                                   gpus_per_worker=self.spec.resources.gpus_per_worker))
                # after ray.init, which installs its own SIGTERM handler in the driver
                self._restore_signals = _sigterm_as_interrupt()
                stack.callback(self._shutdown_backend)
                stack.callback(_cleanup_fault_point, self)     # first (tests only)
                return self._train()
            except KeyboardInterrupt as e:
                _second_interrupt_exits()
                self.status = {"status": "interrupted"}
                # (stopped before this command wrote its run directory: the checkpoint it continues)
                last = self.run_dir.latest_checkpoint() if self.run_dir is not None else self.checkpoint
                if last:
                    self.status["resume"] = _resume_command(self.location)
                    e.checkpoint, e.resume = Path(last["path"]).name, self.status["resume"]  # for the CLI's last line
                elif self.run_dir is not None:  # the folder stays: the command to start again names it
                    e.run_dir = str(self.location)
                raise
            except LrjobError as e:
                resume = None
                if self.run_dir is not None and isinstance(e, WorkerFailure):
                    if self.run_dir.latest_checkpoint():
                        resume = _resume_command(self.location)
                    hint = f"resume with: {resume}" if resume else "no checkpoint was written yet: run the job again"
                    e = WorkerFailure(f"{e}; {hint}", e.rank, e.node, len(self.history))
                self.status = {"status": "failed", "error": str(e), **({"resume": resume} if resume else {})}
                raise e from None
            except Exception as e:
                self.status = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
                raise

    def _finished_already(self) -> RunResult | None:
        """The same command again on a run that is complete (docs/design.md#run-directory): its
        newest checkpoint leaves no epoch to train, ``summary.json`` says ``completed`` after as many
        epochs, ``model/`` is there and ``job.yaml`` is this spec. Then nothing is written, not even
        ``env.json``'s start or the report: the lock is released and the stored summary returned.
        (Under horovodrun the other ranks take part in the backend's start: they decide alike
        only with the driver's own backends, so a backend given to the driver always runs.)"""
        c = self.checkpoint
        if c is None or c.get("step") or self.remote is not None or self.options.backend_factory is not None:
            return None
        all_done = c["epochs_done"] >= int(self.spec.train.epochs)
        if not (all_done or (self._early is not None and stop_reason(self.history, *self._early) is not None)):
            return None
        run = RunDir(self.path)
        summary, stored = run.summary() or {}, run.spec()
        if (summary.get("status") != "completed" or summary.get("epochs_done") != c["epochs_done"]
                or not (run.model_dir / "meta.json").is_file() or stored is None):
            return None
        # Fields that say how a run trains, not what: with nothing left to train, the run keeps
        # the record of how it was trained (another worker count would be recorded falsely). A run
        # that early stopping ended has nothing to train at any train.epochs either.
        changed = stored.diff(self.spec)
        if any(field not in HOW_IT_RUNS and (all_done or field != "train.epochs") for field in changed):
            return None
        why = (f"{_all_epochs(c['epochs_done'])} trained already" if all_done
               else f"early stopping ended the run after epoch {c['epochs_done']}")
        self.reporter.message(f"  resume   from {Path(c['path']).name}: {why}; nothing to train")
        kept = [f"{field}={_shown(_dotted(stored, field))}" for field in changed if field != "data.cache"]
        if kept:  # (data.cache only says where this command read the data from)
            self.reporter.message(f"  kept     the run's own settings, as it was trained: {', '.join(kept)}")
        self._release()
        self.reporter.summary(summary, self.path, self.history)
        return RunResult(self.path, self.history, c["params"], summary, [])

    def _train(self) -> RunResult:
        self.backend = self.backend_factory()
        if self.checkpoint:
            self.backend.set_state(self.checkpoint)
        self.run_dir = run = RunDir.create(self.path, self.spec)  # job.yaml before checkpoints/
        run.write_json("env.json", self._env())
        if self._continuing:  # the history of the checkpoint, or none when starting over
            run.rewrite_metrics(self.history)
        self.reporter.header(self.spec, self.data, self.backend, self.location)
        if self.checkpoint:
            c = self.checkpoint
            where = f"epoch {c['epochs_done'] + 1}, step {c['step'] + 1}" if c.get("step") else \
                f"epoch {c['epochs_done'] + 1}"
            # The same command again on a finished run (README "Quickstart"): there is no epoch
            # to continue at, and "continuing at epoch 11" of 10 read as more training.
            stopped = (not c.get("step") and self._early is not None
                       and stop_reason(self.history, *self._early) is not None)
            if not c.get("step") and c["epochs_done"] >= int(self.spec.train.epochs):
                self.reporter.message(f"  resume   from {Path(c['path']).name}: {_all_epochs(c['epochs_done'])} "
                                      f"trained already; nothing to train")
            elif stopped:
                self.reporter.message(f"  resume   from {Path(c['path']).name}: early stopping ended the run "
                                      f"after epoch {c['epochs_done']}; nothing to train")
            else:
                self.reporter.message(f"  resume   from {Path(c['path']).name}: continuing at {where}")
        for w in self.warnings:
            self.reporter.warning(f"lrjob: warning: {w['message']}")
        self.tracker.start(self.spec, self.path, self.history)
        self.status = {"status": "running"}
        self._write_summary()
        self._sync()  # write access was checked before; job.yaml makes the URI a run
        state = self._epochs()
        if self._early is not None and self.history and self._early[0].best_epoch(self.history) is None:
            self._warn({"code": "early_stopping_undefined", "message": undefined_message(
                self._early[0].metric, len(self.history), "train.early_stopping never applied")})
        hooks = self.options.hooks
        rank_params = self.backend.all_params() if hooks.collect_rank_params else None
        shard_logs = self.backend.shard_logs() if hooks.record_shards else None
        params = self._exported_params(state)
        for w in run.export_model(self.spec, self.data, params, self._exported):  # model.onnx failed: a warning
            self.reporter.warning(f"lrjob: warning: {w['message']}")
            self.warnings = self.warnings + [w]
        self._review_fit(params)
        self.status = {"status": "completed"}
        # summary: filled with summary.json's content when the run is finished (_finish)
        self._result = RunResult(self.path, self.history, state["params"], dict(self.status),
                                 self.backend.placement, rank_params, shard_logs)
        return self._result

    def _epochs(self) -> dict:
        """The epoch loop with checkpoints and restarts; returns the final state."""
        spec, run = self.spec, self.run_dir
        epochs, every = spec.train.epochs, spec.checkpoint.every_epochs
        digest = spec.digest(ignore=SAFE_RESUME_CHANGES)
        steps = num_batches(len(self.data.x_train), spec.train.batch_size)
        state = None
        while len(self.history) < epochs:
            epoch = len(self.history)
            if self._stop_here():
                break
            bar = self.reporter.epoch_bar(epoch, epochs, len(self.data.x_train))
            try:
                try:
                    for start, stop in segments(self._step, steps, spec.checkpoint.every_steps):
                        per_rank = self.backend.run_epoch(epoch, progress=bar.update if bar else None,
                                                          timeout_s=self.epoch_timeout(), start_step=start,
                                                          stop_step=stop)
                        if stop < steps:  # a mid-epoch checkpoint
                            run.best_epoch = self._best.best_epoch(self.history) if self._best else None
                            run.write_checkpoint({"workers": self.world, **self.backend.get_state()}, digest,
                                                 self.history, spec.checkpoint.keep, self._data_key)
                            self._trained_here()
                            self._sync()
                        self._step = stop % steps
                    # a new best epoch, and the epoch early stopping ends with, are saved too
                    ahead = self.history + [per_rank[0]]
                    due = ((epoch + 1) % every == 0 or epoch + 1 == epochs
                           or (self._best is not None and self._best.best_epoch(ahead) == epoch + 1)
                           or (self._early is not None and stop_reason(ahead, *self._early) is not None))
                    state = self.backend.get_state() if due else None
                finally:
                    if bar:
                        bar.close()
            except WorkerFailure as e:
                self._restart(e)
                continue
            m = dict(per_rank[0])
            m["wall_seconds"] = self._wall()
            self.history.append(m)
            self._trained_here()
            run.append_metrics(m)
            if state is not None:
                # persisted before it is reported: a printed epoch is a saved epoch; the best
                # epoch's checkpoint is spared by the pruning (checkpoint.keep_best)
                run.best_epoch = self._best.best_epoch(self.history) if self._best else None
                run.write_checkpoint({"workers": self.world, **state}, digest, self.history, spec.checkpoint.keep,
                                     self._data_key)
            self._sync()  # uploaded before it is reported, too
            self.reporter.epoch(m, epochs)
            self.tracker.epoch(m)
            if len(self.history) < epochs:
                self._grow(state)
        if state is None:  # resumed at the end already, or the last epoch was not due
            state = self.backend.get_state()
        return state

    def _stop_here(self) -> bool:
        """Whether early stopping ends the run after the epochs of the history (the driver's
        decision, made from metrics under the parity rule, then told to every rank); records
        the reason and the stopping epoch."""
        if self._early is None:
            return False
        reason = stop_reason(self.history, *self._early)
        self.backend.announce_stop(reason is not None)
        if reason is None:
            return False
        self._stopped = {"epoch": len(self.history), "reason": reason}
        self.reporter.message(f"lrjob: {reason}; stopped after epoch {len(self.history)} of "
                              f"{self.spec.train.epochs}")
        return True

    def _exported_params(self, state: dict) -> dict:
        """The parameters ``model/`` gets: the best epoch's checkpoint with ``checkpoint.keep_best``,
        else the last epoch's (``state``); ``self._exported`` names the epoch."""
        last = len(self.history)
        if self._best is None:
            self._exported = {"epoch": last, "selected_by": "last epoch"}
            return state["params"]
        best = self._best.best_epoch(self.history)
        if best is None and self.history:
            self._warn({"code": "best_epoch_undefined", "message": undefined_message(
                self._best.metric, last, f"no best epoch, the model is the last epoch's ({last})")})
            self._exported = {"epoch": last, "selected_by": "last epoch"}
            return state["params"]
        ckpt = self.run_dir.epoch_checkpoint(best) if best else None
        if ckpt is None:
            w = {"code": "best_checkpoint_missing",
                 "message": f"the best epoch's checkpoint (epoch {best}, by {self._best.metric}) cannot be read; "
                            f"the model is the last epoch's ({last})"}
            self.reporter.warning(f"lrjob: warning: {w['message']}")
            self.warnings.append(w)
            self._exported = {"epoch": last, "selected_by": "last epoch"}
            return state["params"]
        self._exported = {"epoch": best, "selected_by": f"best {self._best.metric}",
                          self._best.metric: self.history[best - 1][self._best.metric]}
        self.reporter.message(f"lrjob: model/ holds epoch {best}, the best by {self._best.metric} "
                              f"({self.history[best - 1][self._best.metric]:.6g}){self._closer(best)}")
        return ckpt["params"]

    def _closer(self, best: int) -> str:
        """With a ``min_delta``, a later epoch may have a better value that did not count as an
        improvement (docs/design.md#early-stopping-and-the-best-model): said, not hidden."""
        w = self._best
        if not w.min_delta:
            return ""
        later = [(i + 1, h.get(w.metric)) for i, h in enumerate(self.history[best:], start=best)]
        ahead = [(e, v) for e, v in later if v is not None and math.isfinite(v)
                 and (v < self.history[best - 1][w.metric] if w.mode == "min" else v > self.history[best - 1][w.metric])]
        if not ahead:
            return ""
        e, v = min(ahead, key=lambda p: p[1]) if w.mode == "min" else max(ahead, key=lambda p: p[1])
        return (f"; epoch {e} reached {v:.6g}, better by less than min_delta {w.min_delta:g}, "
                f"which is not an improvement")

    def _warn(self, w: dict) -> None:
        """Print a warning ``{code, message}`` and keep it for summary.json."""
        self.reporter.warning(f"lrjob: warning: {w['message']}")
        self.warnings.append(w)

    def _review_fit(self, params: dict) -> None:
        """After training: the loss and overfitting warnings (printed, and kept for
        summary.json), the training accuracy they use, and a linear model's weights in the
        features' own units."""
        spec, data = self.spec, self.data
        train_acc = _train_accuracy(self.run_dir.model_dir, data)
        # the exported epoch's validation metrics: the model the training accuracy is measured on
        at = (self._exported or {}).get("epoch") or len(self.history)
        final = self.history[at - 1] if self.history else {}
        baseline = None if spec.train.class_weight is not None else baseline_loss(self._counts)
        found = history_warnings(self.history, baseline, spec.train.learning_rate)
        found += fit_warnings(train_acc, final.get("val_accuracy"), data.val_name, len(data.x_val))
        for w in found:
            self.reporter.warning(f"lrjob: warning: {w['message']}")
        self.warnings = self.warnings + found
        self._fit = {"train_accuracy": train_acc}
        if not spec.model.hidden:
            self._fit["coefficients"] = _coefficients(params, data)

    def epoch_timeout(self) -> float:
        """``failure.epoch_timeout_s``, or automatically 10x the slowest finished epoch,
        at least 300 s."""
        return self.spec.failure.epoch_timeout_s or max(300.0, 10 * max(
            (h.get("epoch_seconds", 0.0) for h in self.history), default=0.0))

    def _restart(self, error: WorkerFailure) -> None:
        """Replace the worker group and restore the newest checkpoint, or give up. The new group
        has as many workers as the cluster can place, down to ``failure.min_workers``
        (docs/design.md#failures-and-restarts)."""
        epoch = len(self.history) + 1  # the epoch in progress when ``error`` happened
        while True:
            self.failures.append({"epoch": epoch, "rank": error.rank, "node": error.node, "error": str(error)})
            last = self._good_checkpoint()
            done = f"last completed epoch {len(self.history)}, newest checkpoint: " \
                   f"{Path(last['path']).name if last else 'none'}"
            if self.policy.decide(error) is Decision.RAISE:
                raise WorkerFailure(f"{error}; {done}", error.rank, error.node, len(self.history)) from None
            self.reporter.message(f"lrjob: {error}")
            self._shutdown_backend()
            self.backend = None
            workers, fit = self._world_size_after(error, done)
            self.reporter.message(f"lrjob: restart {self.policy.failures}/{self.policy.max_failures}: new workers "
                                  f"resume from {'epoch ' + str(last['epochs_done']) if last else 'the start'}")
            epoch = (last["epochs_done"] if last else 0) + 1
            try:
                self._start_group(workers, last)
            except WorkerFailure as again:
                error = again
                continue
            if workers != self.world:
                cause = f"rank {error.rank} failed" if error.rank is not None else "a worker group failed"
                why = (f"{cause}; the Ray cluster can place {fit} of the {self.spec.workers} workers"
                       if workers < self.world else f"the Ray cluster can place {counted(workers, 'worker')} again")
                self._resized(Resize(epoch, self.world, workers, why))
            self.history[:] = list(last["history"]) if last else []
            self._step = int(last.get("step", 0)) if last else 0
            self.run_dir.rewrite_metrics(self.history)
            return

    def _start_group(self, workers: int, state: dict | None) -> None:
        """A new worker group of ``workers`` (with ``DriverOptions.backend_factory``: its own), restored
        from ``state`` when given."""
        self.backend = self.backend_factory(workers) if self._elastic else self.backend_factory()
        self._backend_down = False
        if state:
            self.backend.set_state(state)

    def _placeable(self) -> int | None:
        """How many of this job's workers the Ray cluster's live nodes can place; None when Ray
        cannot say (the start of the group will tell)."""
        from .backends.cluster import node_resources

        r = self.spec.resources
        try:
            nodes = node_resources()
        except Exception:  # noqa: BLE001 - e.g. the GCS unreachable for a moment
            return None
        return placeable(nodes, r.cpus_per_worker, r.gpus_per_worker)

    def _free_for(self, extra: int) -> bool:
        """Whether ``extra`` more workers fit in what the cluster has free now, beside the current
        group (``can_place``): the nodes' totals also count what other jobs hold, and a group
        that waits for those in vain would end as a failure."""
        from .backends.cluster import can_place

        r = self.spec.resources
        try:
            return can_place(extra, r.cpus_per_worker, r.gpus_per_worker)
        except Exception:  # noqa: BLE001 - best effort: stay on the group that works
            return False

    def _world_size_after(self, error: WorkerFailure, done: str) -> tuple[int, int | None]:
        """The size of the group that replaces a failed one, and how many workers fit (None when
        not known: a backend of ``DriverOptions``, or Ray did not say). Fewer than
        ``failure.min_workers`` fitting ends the run, a ``WorkerFailure`` that says so."""
        fit = self._placeable() if self._elastic else None
        if fit is None:
            return self.spec.workers, None
        spec = self.spec
        workers = world_size(spec.workers, spec.min_workers, fit)
        if workers is None:
            r = spec.resources
            each = f"{r.cpus_per_worker:g} CPU" + (f" and {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else "")
            need = (f"fewer than failure.min_workers ({spec.min_workers})" if spec.min_workers < spec.workers
                    else "and failure.min_workers is not set (set it to continue on fewer)")
            raise WorkerFailure(f"{error}; the Ray cluster can now place {fit} of the {spec.workers} workers "
                                f"({each} each), {need}; {done}", error.rank, error.node, len(self.history)) from None
        return workers, fit

    def _grow(self, state: dict | None) -> None:
        """At an epoch boundary of a run that lost workers: back to more of them (up to
        ``resources.workers``) when the cluster's nodes hold them and the extra ones are free
        now, from ``state`` (the epoch's checkpoint, else rank 0's state now)."""
        if not self._elastic or self.world >= self.spec.workers:
            return
        fit = self._placeable()
        workers = min(fit or 0, self.spec.workers)
        if workers <= self.world or not self._free_for(workers - self.world):
            return
        old = self.world
        try:
            state = state if state is not None else self.backend.get_state()
            self._shutdown_backend()
            self.backend = None
            self._start_group(workers, state)
        except WorkerFailure as e:  # e.g. the room went again: a failure like any other
            self._restart(e)
            return
        self._resized(Resize(len(self.history) + 1, old, workers, f"the Ray cluster can place {fit} workers again"))

    def _resized(self, change: Resize) -> None:
        """Record and report one change of world size (summary.json's ``resizes``)."""
        self.resizes.append(change)
        self.world = change.new
        self.reporter.message(change.line())

    def _judge(self, spec: JobSpec, flag: str, resume, locked: bool) -> str:
        """``run_state`` of the existing folder, refusing one that holds no run (or, on
        ``--resume``, no run at all) and a run of another job; nothing is written. A resume of a
        folder of lrjob's own that holds no run yet is refused once locked (another lrjob may be
        starting it: its lock names it)."""
        kind = run_state(self.path)
        if resume and (kind == "other" or (kind == "new" and locked)):
            raise SpecError(f"{flag}: no valid checkpoint in {self._shown(self.path / 'checkpoints')}; "
                            f"start a new run")
        if kind == "other":
            raise SpecError(f"{flag}: exists, is not empty and holds no lrjob run (no job.yaml, no checkpoints); "
                            f"choose a new path")
        if kind == "run":
            _check_same_job(self.path, spec, flag)
        return kind

    def _good_checkpoint(self, flag: str = "", skipped: list | None = None) -> dict | None:
        """The newest checkpoint of the run that reads back whole, records this spec's digest and
        fits the model (``checkpoint_problem``); one of another spec is refused. With ``skipped``:
        each one passed over is named on stderr and listed there as (path, reason)."""
        ckpt = latest_checkpoint(self.path, _checkpoint_judge(self.spec, self.data, self._digest), skipped)
        if ckpt is not None and ckpt["spec_digest"] != self._digest:
            raise SpecError(f"{flag}: checkpoint {self._shown(ckpt['path'])} was written by a different spec; "
                            f"start a new run")
        for path, reason in skipped or []:
            print(f"lrjob: warning: checkpoint {self._shown(path)} skipped: {reason}", file=sys.stderr)
        return ckpt

    # ------------------------------------------------------------------ clean-up
    def _release(self) -> None:
        """Drop the run directory's lock; a directory this driver created and never wrote is removed."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self.run_dir is None:
            remove_if_empty(self._created)
        if self.remote is not None and (self._uploaded_all or (self.run_dir is None and not self._adopted)):
            # all of it uploaded, or a copy this driver downloaded and never wrote: the staging copy
            # goes. A kept copy given to --resume holds epochs the storage may lack: it stays.
            shutil.rmtree(self.path, ignore_errors=True)
            remove_if_empty(self._staging_made[:-1])

    def _shutdown_backend(self) -> None:
        if self.backend is not None and not self._backend_down:
            self._backend_down = True
            self.backend.shutdown()

    def _finish(self) -> None:
        if self.run_dir is None:
            return
        full = self._write_summary()
        if self._result is not None:
            self._result.summary = full
        if self.status.get("status") == "completed":
            _plots(self.run_dir, self.spec, self.data, self.history)
            if self.remote is None:
                self.reporter.summary(full, self.path, self.history)
        self.tracker.finish(full, self.path)  # after the plots: they are logged too
        try:
            if self.remote is not None:
                self._finish_upload()  # last: the plots, report and mlflow.json go too
                if self.status.get("status") == "completed":  # a run is shown completed once it is uploaded
                    self.reporter.summary(full, self.location, self.history)
        finally:
            if self.status.get("status") != "completed" and self.reporter.mode == "json":
                # for scripts, every run's stream holds its summary.json: status interrupted or failed
                # too (a failed final upload rewrote it)
                self.reporter.summary(self.run_dir.summary() or full, self.location, self.history)

    def _finish_upload(self) -> None:
        """The last sync: everything, the model and the report included. When it fails, a completed
        run fails (exit 1) and the staging directory, named in the message, is kept; after another
        ending, the failure is one warning line (the run's own error stays the error)."""
        try:
            self._sync(final=True)
            self._uploaded_all = not self.remote.broken  # broken: an upload failed during the run
        except StorageError as e:
            if self.status.get("status") == "completed":
                self.status = {"status": "failed", "error": str(e)}
                self._result = None
                self._write_summary()
                raise
            print(f"lrjob: warning: {e}", file=sys.stderr)

    def _write_summary(self) -> dict:
        history = self.history
        final = history[-1] if history else {}
        backend = self.backend
        summary = {
            "name": self.spec.name, **self.status, "epochs_done": len(history), "epochs": self.spec.train.epochs,
            "workers": self.spec.workers, "wall_seconds": self._wall(),
            "samples_per_s": (float(np.median([h["samples_per_s"] for h in history])) if history else 0.0),
            "train_seconds": sum(h.get("train_seconds", 0.0) for h in history),
            "startup_seconds": getattr(backend, "startup_seconds", None),
            "final": {k: v for k, v in final.items() if k not in ("confusion",)},
            "best_val_accuracy": max((h["val_accuracy"] for h in history), default=None),
            "run_dir": str(self.location),
            "warnings": list(self.warnings), "failures": self._earlier["failures"] + self.failures,
            "resizes": self._earlier["resizes"] + [r.as_dict() for r in self.resizes], **self._fit,
        }
        if self._stopped is not None:
            summary["stopped_early"] = dict(self._stopped)
        if self._exported is not None:
            summary["exported"] = dict(self._exported)
        if self.spec.train.class_weight is not None:  # train_loss and val_loss are not comparable
            summary["train_loss_weighted"] = True
        self.run_dir.write_json("summary.json", summary)
        return summary

    def _trained_here(self) -> None:
        """This command has trained something that stays (an epoch, or a mid-epoch checkpoint): a
        continuation on another worker count is now one of the run's resizes."""
        if self._continued is not None:
            self.resizes.insert(0, self._continued)
            self._continued = None

    def _wall(self) -> float:
        """Seconds of wall time the run has had: this command's, after the earlier commands' of a
        run it continues."""
        return self._wall0 + time.time() - self._t_start

    def _env(self) -> dict:
        backend = self.backend
        return {
            # the commands before this one that trained the run it continues, first to last
            **({"earlier": self._parts} if self._parts else {}),
            # the run's start, for report.html (launcher/report/summary.py)
            "started": datetime.datetime.fromtimestamp(self._t_start, datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "versions": _versions(), "host": socket.gethostname(), "user": getpass.getuser(),
            # a URI's login is never written; a sweep's trial records the sweep's command
            "argv": [without_logins(a) for a in (sys.argv if self.options.argv is None else self.options.argv)],
            "workers": self.spec.workers, "where": backend.where,
            "placement": backend.placement, "seeds": {"train.seed": self.spec.train.seed},
            "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS",
                                                       "HOROVOD_CYCLE_TIME")},
            "startup_seconds": backend.startup_seconds,
            "resumed_from": str(self._shown(Path(self.checkpoint["path"]))) if self.checkpoint else None,
            # the prepared folder the workers mapped (docs/design.md#prepared-data)
            "data": {"prepared": self.data.home, "train_rows": int(len(self.data.x_train)),
                     "val_rows": int(len(self.data.x_val)), "dtype": str(self.data.x_train.dtype)},
        }

    def _default_backend(self, workers: int | None = None) -> Backend:
        from .backends import make_backend

        return make_backend(self.spec, self.data, record_shards=self.options.hooks.record_shards, workers=workers)


def run_rank(spec: JobSpec, output: str | os.PathLike | None = None, *, resume: str | os.PathLike | None = None,
             reporter: Reporter | None = None) -> int:
    """``lrjob worker``: this process is one rank of a ``horovodrun`` job
    (backends/hvdrun.py). Rank 0 also plays the driver and writes the run directory;
    the other ranks run the same collectives in the same order and write nothing."""
    if is_remote(output) or is_remote(resume):
        raise SpecError(f"{'--resume' if is_remote(resume) else '--output'} {without_login(resume or output)}: a "
                        f"storage URI is not supported under horovodrun (every rank reads the run directory); use a "
                        f"folder every rank sees, or lrjob run")
    from .backends.hvd_comm import HorovodCommunicator
    from .backends.hvdrun import ThisRankBackend

    if spec.failure.max_failures:
        raise SpecError("failure.max_failures: under horovodrun the launcher restarts the job "
                        "(e.g. the MPIJob's backoffLimit); set it to 0 and resume with --resume")
    comm = HorovodCommunicator()
    # Rank 0 prepares (or checks) the data first; the others then map the same files.
    data = spec.prepared_data(*prepare_feedback(reporter)) if comm.rank == 0 else None
    comm.barrier()
    if data is None:  # rank 0 has just checked every shard
        data = spec.prepared_data(checksums=False)
    _same_data_on_every_rank(comm, data)
    cfg = spec.loop_config()
    gpus = spec.resources.gpus_per_worker
    if comm.rank == 0:
        run_job(spec, output, resume=resume, reporter=reporter,
                options=DriverOptions(backend_factory=lambda: ThisRankBackend(cfg, data, comm, gpus), data=data))
        return 0
    # Other ranks: the same collectives in the same order as rank 0, no files.
    backend = ThisRankBackend(cfg, data, comm, gpus)
    start = step = 0
    source = resume or output  # rank 0 continues a run of this job found in --output, too
    if source and Path(source).is_dir():
        digest = spec.digest(ignore=SAFE_RESUME_CHANGES)
        ckpt = latest_checkpoint(Path(source), _checkpoint_judge(spec, data, digest))  # rank 0's choice
        if ckpt:
            backend.set_state(ckpt)
            start, step = ckpt["epochs_done"], int(ckpt.get("step", 0))
    steps = num_batches(len(data.x_train), spec.train.batch_size)
    for epoch in range(start, spec.train.epochs):
        # rank 0's driver decides on early stopping before each epoch (Driver._stop_here)
        if spec.train.early_stopping is not None and backend.announce_stop(False):
            break
        for a, b in segments(step, steps, spec.checkpoint.every_steps):  # rank 0's segments
            backend.run_epoch(epoch, start_step=a, stop_step=b)
        step = 0
    return 0


def _same_data_on_every_rank(comm, data: Dataset) -> None:
    """Every rank's prepared copy must hold rank 0's rows (a node without the shared
    folder prepares its own): compare the shards' checksums through one allreduce."""
    import hashlib

    digests = (data.extra.get("origin") or (None, None, []))[2]
    mine = np.frombuffer(hashlib.sha256("".join(digests).encode()).digest(), dtype=np.uint8).astype(np.float64)
    table = np.zeros((comm.size, mine.size))
    table[comm.rank] = mine
    table = comm.allreduce_sum(table, name="prepared.digests")
    differ = [r for r in range(comm.size) if not np.array_equal(table[r], table[0])]
    if differ:
        raise DataError(f"rank {differ[0]}: its prepared data differs from rank 0's ({data.home}); every node "
                        f"must read the same source: put data.cache on storage every node sees")


def _earlier_events(path: Path, most: int = 1000) -> dict:
    """The ``failures`` and ``resizes`` that the run's summary.json holds (at most ``most`` of
    each; none from a summary that is missing or damaged), and its ``wall_seconds`` and
    ``workers`` (None when missing)."""
    old = RunDir.open(path).summary()
    old = old if isinstance(old, dict) else {}
    events = {key: [e for e in old[key] if isinstance(e, dict)][-most:] if isinstance(old.get(key), list) else []
              for key in ("failures", "resizes")}
    return {**events, "wall_seconds": old.get("wall_seconds"), "workers": old.get("workers")}


def _finite_seconds(v) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return float(v) if ok else None


def _earlier_count(earlier: dict, checkpoint: dict) -> int | None:
    """The worker count that trained the checkpoint a command continues from: the checkpoint's
    own record; for a checkpoint written before it kept one, the last change ``resizes`` records
    (an elastic group that shrank), else the earlier summary's ``workers``; None when none says."""
    def count(v):
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    if count(checkpoint.get("workers")) is not None:
        return checkpoint["workers"]
    last = earlier["resizes"][-1] if earlier.get("resizes") else None
    if last is not None and count(last.get("to")) is not None:
        return last["to"]
    return count(earlier.get("workers"))


def _earlier_wall(earlier: dict, history: list[dict]) -> float:
    """The wall time of the commands before this one, for a run continued from its checkpoint: the
    earlier summary's ``wall_seconds``, or the checkpoint's last epoch's when that is later (a
    driver killed outright never wrote its final summary)."""
    seen = [_finite_seconds(earlier.get("wall_seconds"))]
    seen += [_finite_seconds(history[-1].get("wall_seconds"))] if history else []
    return max([v for v in seen if v is not None], default=0.0)


def _earlier_parts(path: Path, most: int = 100) -> list[dict]:
    """``env.json``'s record of the commands before this one (its own ``earlier``, then its start,
    command and worker count), the first and the last ``most - 1``; none from an env.json missing or
    damaged."""
    env = RunDir.open(path).env()
    if not isinstance(env, dict):
        return []
    parts = [e for e in env.get("earlier", []) if isinstance(e, dict)] if isinstance(env.get("earlier"), list) else []
    parts.append({k: env.get(k) for k in ("started", "argv", "workers")})
    return parts if len(parts) <= most else parts[:1] + parts[1 - most:]  # the first stays: the run's start


def _workers_phrase(n: int) -> str:
    return "in-process" if n == 0 else f"with {counted(n, 'worker')}"


def _cleanup_fault_point(driver: Driver) -> None:
    if faults.ARMED:  # tests only: a second Ctrl-C arriving during clean-up (faults.py)
        faults.hit("cleanup", status=driver.status.get("status"))


def _versions() -> dict:
    from . import __version__

    out = {"lrjob": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("mxnet", "horovod", "ray"):
        out[mod] = _package_version(mod)
    return out


def _package_version(mod: str) -> str | None:
    """The version of the installed package that provides module ``mod``, without importing
    it: importing MXNet cost the driver, which trains nothing, about 2 s and 80 MiB (it pulls
    in SciPy, scikit-learn and pandas). A module already imported gives its ``__version__``;
    else its distribution's metadata (``mxnet``, or the one that installs it, such as
    ``mxnet-cu112``); None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    loaded = sys.modules.get(mod)
    if getattr(loaded, "__version__", None):
        return loaded.__version__
    try:
        return version(mod)
    except PackageNotFoundError:
        pass
    for dist in packages_distributions().get(mod, ()):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


# How a run trains, not what it trains: a complete run asked for again with only these changed is
# left as it is (Driver._finished_already).
# They are the changes a resume allows, but for the run's length, name and tracking, which are
# part of the record.
HOW_IT_RUNS = frozenset(SAFE_RESUME_CHANGES - {"train.epochs", "name", "tracking", "tracking.mlflow"})


def _all_epochs(n: int) -> str:
    """"all 3 epochs are", "its 1 epoch is"."""
    return f"all {n} epochs are" if n != 1 else "its 1 epoch is"


def _dotted(spec: JobSpec, field: str):
    section, _, key = field.partition(".")
    return spec.to_dict().get(section, {}).get(key)


def _shown(value) -> str:
    """A spec value as its YAML says it: null, 1 (not 1.0), 0.5, a word."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _resume_command(path: Path | str) -> str:
    """The command that continues the run at ``path`` (a folder or a storage URI), quoted for a
    POSIX shell: the user pastes it as printed."""
    return f"lrjob run --resume {shlex.quote(str(path))}"


def _sigterm_as_interrupt() -> Callable[[], None]:
    """SIGTERM (e.g. from Kubernetes or `kill`) stops the run like Ctrl-C does.
    Returns the function that puts the previous SIGTERM and SIGINT handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, handler)
    old_int = signal.getsignal(signal.SIGINT)

    def restore():
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    return restore


def _second_interrupt_exits() -> None:
    """While cleaning up after Ctrl-C, a second Ctrl-C exits at once."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *a: os._exit(130))


def _train_accuracy(model_dir: Path, data: Dataset) -> float | None:
    """The exported model's accuracy on up to ``TRAIN_SAMPLE`` evenly spaced training rows."""
    from lr_core.export import ExportedModel
    from lr_core.prepared import read_rows

    n = len(data.x_train)
    if not n:
        return None
    # at most TRAIN_SAMPLE rows and 16 MiB of them, read without mapping a large set's pages
    row_bytes = max(1, data.x_train.strides[0] if data.x_train.ndim else 1)
    k = max(1, min(n, TRAIN_SAMPLE, (16 << 20) // row_bytes))
    rows = np.unique(np.linspace(0, n - 1, k).astype(np.int64))
    pred, _ = ExportedModel(model_dir).predict(read_rows(data.x_train, rows), scale=data.scale)
    return float(np.mean(pred == np.asarray(data.y_train[rows])))


MAX_COEFFICIENTS = 10_000  # larger weight matrices (images) stay in the export only


def _coefficients(params: dict, data: Dataset) -> dict | None:
    """A linear model's weights and biases on the features as given (a standardized
    model's mapped back: ``lr_core.export.original_units``), with the column names."""
    from lr_core.export import original_units

    w, b = params["lrjob_layer0_weight"], params["lrjob_layer0_bias"]
    if w.size > MAX_COEFFICIENTS:
        return None
    w, b = original_units(w, b, data.stats)
    columns = list(data.extra.get("columns") or []) or [f"x[{i}]" for i in range(w.shape[1])]
    return {"units": "original", "columns": columns, "weight": w.tolist(), "bias": b.tolist()}


def _plots(run: RunDir, spec: JobSpec, data, history: list[dict]) -> None:
    try:
        from .report.plots import write_plots
    except ImportError:
        return
    try:
        write_plots(run.path, spec, data, history)
    except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
        print(f"lrjob: warning: plots not written ({type(e).__name__}: {e})", file=sys.stderr)


def _check_resume_data(path: Path, ckpt: dict, data_key: str | None, spec: JobSpec, flag: str) -> None:
    """Refuse a resume whose data is not the checkpoint's, or that would end before it: a run
    trained past ``train.epochs`` is refused, never returned as it is (the same command must give
    the same model; docs/design.md#run-directory)."""
    if ckpt["epochs_done"] > spec.train.epochs:
        raise SpecError(f"{flag}: the run is already trained for {ckpt['epochs_done']} epochs "
                        f"({Path(ckpt['path']).name}), more than train.epochs={spec.train.epochs}; "
                        f"set train.epochs to at least {ckpt['epochs_done']}, or choose a new path")
    if ckpt.get("data_key") and data_key and ckpt["data_key"] != data_key:
        raise SpecError(f"{flag}: the data changed since {Path(ckpt['path']).name} (prepared as "
                        f"{ckpt['data_key']}, now {data_key}); resuming would mix two datasets: start a new run")
    if ckpt.get("step") and spec.train.epochs <= ckpt["epochs_done"]:
        raise SpecError(f"{flag}: the newest checkpoint {Path(ckpt['path']).name} is inside epoch "
                        f"{ckpt['epochs_done'] + 1}; train.epochs must be at least {ckpt['epochs_done'] + 1}")


def _check_same_job(path: Path, spec: JobSpec, flag: str) -> None:
    """Refuse to continue the run at ``path`` with ``spec`` when it is another job's (its
    ``job.yaml`` differs beyond the safe changes); read-only."""
    old = RunDir.open(path).spec()
    if old is None:
        return  # without job.yaml the checkpoints' digest decides
    changed = [f for f in old.diff(spec) if f not in SAFE_RESUME_CHANGES]
    if changed and flag.startswith("--resume"):
        raise SpecError(f"{flag}: the spec differs from the run's job.yaml in {', '.join(changed)}; "
                        f"only {', '.join(sorted(SAFE_RESUME_CHANGES))} may change on resume")
    if changed:
        raise SpecError(f"{flag}: holds a run of another job (its job.yaml differs in {', '.join(changed)}); "
                        f"choose a new path")


def _checkpoint_judge(spec: JobSpec, data: Dataset, digest: str) -> Callable[[dict], str | None]:
    """``checkpoint_problem`` for this job's model: the parameters it must find, by name and shape."""
    from lr_core.models import initial_parameters

    params = initial_parameters(spec.loop_config(), data.num_features)
    steps = num_batches(len(data.x_train), spec.train.batch_size)
    data_key = Path(data.home).name if data.home else None  # as the driver names it (_data_key)
    return lambda ckpt: checkpoint_problem(ckpt, digest, params, steps, data_key)
