"""``run_job(spec)``: the driver of one run. It owns the epoch loop and the run
directory; the backend owns the workers.

    from launcher.spec import load_spec
    from launcher.runner import run_job
    result = run_job(load_spec("jobs/binary_synthetic.yaml"), workers=0)
"""
from __future__ import annotations

import getpass
import os
import signal
import threading
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lr_core import faults
from lr_core.data import Dataset, load_dataset
from lr_core.errors import LrjobError, SpecError, WorkerFailure

from .progress import Reporter
from .rundir import RunDir, check_writable, latest_checkpoint, new_run_path
from .spec import SAFE_RESUME_CHANGES, JobSpec, spec_from_dict

__all__ = ["run_job", "RunResult", "load_job_data"]


@dataclass
class RunResult:
    path: Path
    history: list[dict]
    params: dict[str, np.ndarray]
    summary: dict
    placement: list[dict] = field(default_factory=list)
    rank_params: list[dict] | None = None
    shard_logs: list[dict] | None = None


def load_job_data(spec: JobSpec) -> Dataset:
    return load_dataset(spec["data.source"], **spec.data_kwargs())


def _versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("mxnet", "horovod", "ray"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent is fine in the reference run
            out[mod] = None
    return out


def _make_backend(spec: JobSpec, data: Dataset, workers: int, record_shards: bool):
    cfg = spec.loop_config()
    if workers == 0:
        from .backends import InProcessBackend

        return InProcessBackend(cfg, data, record_shards=record_shards)
    from .backends import RayHorovodBackend

    r = spec["resources"]
    return RayHorovodBackend(cfg, data, workers, r["cpus_per_worker"], r["gpus_per_worker"],
                             record_shards=record_shards)


def run_job(spec: JobSpec, *, output: str | os.PathLike | None = None, address: str | None = None,
            resume: str | os.PathLike | None = None, reporter: Reporter | None = None,
            runs_dir: str | os.PathLike = "runs", record_shards: bool = False,
            collect_rank_params: bool = False, backend_factory=None) -> RunResult:
    """Run one job end to end and write its run directory.

    ``backend_factory`` replaces the default backends (used by ``lrjob worker``, where
    this process is rank 0 of a ``horovodrun`` job).

    Bad input (spec, data, output path, resources) fails before anything is written.
    A worker failure restarts the worker group from the newest checkpoint up to
    ``failure.max_failures`` times; past that the run ends ``failed`` with the command
    that resumes it.
    """
    reporter = reporter or Reporter("silent")
    t_start = time.time()
    workers = spec.workers
    checkpoint = None
    if resume:
        path = Path(resume)
        checkpoint = _resume_checkpoint(path, spec)
    else:
        path = Path(output) if output else new_run_path(spec.name, runs_dir)
        check_writable(path)
    data = load_job_data(spec)  # bad data fails here, before anything is written

    from .cluster import RaySession

    if backend_factory is None:
        def backend_factory():
            return _make_backend(spec, data, workers, record_shards)
        session = RaySession(address, workers, spec["resources.cpus_per_worker"]) if workers > 0 else None
    else:
        session = None
    run = None
    live = _Live(None, list(checkpoint["history"]) if checkpoint else [])
    summary: dict = {"status": "starting"}
    restore_signals = lambda: None  # noqa: E731
    try:
        if session:
            session.__enter__()
        # after ray.init, which installs its own SIGTERM handler in the driver
        restore_signals = _sigterm_as_interrupt()
        live.backend = backend_factory()
        if checkpoint:
            live.backend.set_state(checkpoint)
        run = RunDir(path)
        run.write_text("job.yaml", spec.to_yaml())
        _write_env(run, spec, live.backend, workers, checkpoint)
        if checkpoint:
            run.rewrite_metrics(live.history)
        reporter.header(spec, data, live.backend, path)
        summary = {"status": "running"}
        _write_summary(run, spec, summary, live.history, t_start, workers, live.backend)
        state = _epochs(spec, data, live, run, reporter, backend_factory, t_start)
        backend = live.backend
        rank_params = backend.all_params() if collect_rank_params else None
        shard_logs = backend.shard_logs() if record_shards else None
        _export(run, spec, data, state["params"])
        summary = {"status": "completed"}
        return RunResult(path, live.history, state["params"], summary, backend.placement, rank_params, shard_logs)
    except KeyboardInterrupt:
        _second_interrupt_exits()
        summary = {"status": "interrupted"}
        if run is not None and latest_checkpoint(path):
            summary["resume"] = _resume_command(path)
        raise
    except LrjobError as e:
        if run is not None and isinstance(e, WorkerFailure):
            hint = (f"resume with: {_resume_command(path)}" if latest_checkpoint(path)
                    else "no checkpoint was written yet: run the job again")
            e = WorkerFailure(f"{e}; {hint}", e.rank, e.node, len(live.history))
        summary = {"status": "failed", "error": str(e)}
        raise e from None
    except Exception as e:
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        raise
    finally:
        if faults.ARMED:  # tests only: a second Ctrl-C arriving during clean-up (faults.py)
            faults.hit("cleanup", status=summary.get("status"))
        try:
            if live.backend is not None:
                live.backend.shutdown()
            if session:
                session.__exit__(None, None, None)
        finally:
            restore_signals()
            if run is not None:
                full = _write_summary(run, spec, summary, live.history, t_start, workers, live.backend)
                if summary.get("status") == "completed":
                    _plots(run, spec, data, live.history)
                    reporter.summary(full, path)


@dataclass
class _Live:
    """The driver's current worker group and history; restarts replace them in place,
    so cleanup and the summary always see the live ones."""

    backend: object
    history: list[dict]


def _epochs(spec, data, live: _Live, run: RunDir, reporter: Reporter, backend_factory, t_start: float) -> dict:
    """The epoch loop with checkpoints and restarts; returns the final state."""
    epochs = spec["train.epochs"]
    every, keep = spec["checkpoint.every_epochs"], spec["checkpoint.keep"]
    max_failures = spec["failure.max_failures"]
    digest = spec.digest(ignore=SAFE_RESUME_CHANGES)
    failures, state = 0, None
    while len(live.history) < epochs:
        epoch = len(live.history)
        timeout = spec["failure.epoch_timeout_s"] or max(300.0, 10 * max(
            (h.get("epoch_seconds", 0.0) for h in live.history), default=0.0))
        bar = reporter.epoch_bar(epoch, epochs, len(data.x_train))
        try:
            try:
                per_rank = live.backend.run_epoch(epoch, progress=bar.update if bar else None, timeout_s=timeout)
                due = (epoch + 1) % every == 0 or epoch + 1 == epochs
                state = live.backend.get_state() if due else None
            finally:
                if bar:
                    bar.close()
        except WorkerFailure as e:
            failures += 1
            _restart_or_raise(e, failures, max_failures, spec, live, run, reporter, backend_factory)
            continue
        m = dict(per_rank[0])
        m["wall_seconds"] = time.time() - t_start
        live.history.append(m)
        run.append_metrics(m)
        if state is not None:
            # persisted before it is reported: a printed epoch is a saved epoch
            run.write_checkpoint(state, digest, live.history, keep)
        reporter.epoch(m, epochs)
    if state is None:  # resumed at the end already, or the last epoch was not due
        state = live.backend.get_state()
    return state


def _restart_or_raise(error: WorkerFailure, failures: int, max_failures: int, spec, live: _Live, run: RunDir,
                      reporter: Reporter, backend_factory) -> None:
    """Replace the worker group and restore the newest checkpoint, or give up."""
    while True:
        last = latest_checkpoint(run.path)
        if failures > max_failures:
            raise WorkerFailure(f"{error}; last completed epoch {len(live.history)}, newest checkpoint: "
                                f"{Path(last['path']).name if last else 'none'}", error.rank, error.node,
                                len(live.history)) from None
        reporter.message(f"lrjob: {error}")
        reporter.message(f"lrjob: restart {failures}/{max_failures}: new workers resume from "
                         f"{'epoch ' + str(last['epochs_done']) if last else 'the start'}")
        if live.backend is not None:
            live.backend.shutdown()
        live.backend = None
        try:
            live.backend = backend_factory()
            if last:
                live.backend.set_state(last)
        except WorkerFailure as again:
            error, failures = again, failures + 1
            continue
        live.history[:] = list(last["history"]) if last else []
        run.rewrite_metrics(live.history)
        return


def _write_env(run: RunDir, spec, backend, workers, checkpoint) -> None:
    run.write_json("env.json", {
        "versions": _versions(), "host": socket.gethostname(), "user": getpass.getuser(),
        "argv": sys.argv, "workers": workers, "where": backend.where,
        "placement": backend.placement, "seeds": {"train.seed": spec["train.seed"]},
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MXNET_CPU_WORKER_NTHREADS",
                                                   "HOROVOD_CYCLE_TIME")},
        "startup_seconds": backend.startup_seconds, "resumed_from": checkpoint["path"] if checkpoint else None,
    })


def _resume_command(path: Path) -> str:
    return f"lrjob run --resume {path}"


def _sigterm_as_interrupt():
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


def _write_summary(run: RunDir, spec, status: dict, history, t_start, workers, backend) -> dict:
    final = history[-1] if history else {}
    train_s = sum(h.get("train_seconds", 0.0) for h in history)
    summary = {
        "name": spec.name, **status, "epochs_done": len(history), "epochs": spec["train.epochs"],
        "workers": workers, "wall_seconds": time.time() - t_start,
        "samples_per_s": (float(np.median([h["samples_per_s"] for h in history])) if history else 0.0),
        "train_seconds": train_s, "startup_seconds": getattr(backend, "startup_seconds", None),
        "final": {k: v for k, v in final.items() if k not in ("confusion",)},
        "best_val_accuracy": max((h["val_accuracy"] for h in history), default=None),
        "run_dir": str(run.path),
    }
    run.write_json("summary.json", summary)
    return summary


def _export(run: RunDir, spec: JobSpec, data: Dataset, params: dict) -> None:
    from lr_core.export import export_model

    meta = {"job": spec.name, "source": data.source, "image_shape": list(data.image_shape or []),
            "columns": data.extra.get("columns", []), "label_column": spec["data.label_column"],
            "label_map": spec["data.label_map"]}
    export_model(run.path / "model", spec.loop_config(), params, data.num_features, meta)


def _plots(run: RunDir, spec, data, history) -> None:
    try:
        from .plots import write_plots
    except ImportError:
        return
    try:
        write_plots(run.path, spec, data, history)
    except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
        print(f"lrjob: warning: plots not written ({type(e).__name__}: {e})", file=sys.stderr)


def _resume_checkpoint(path: Path, spec: JobSpec) -> dict:
    if not path.is_dir():
        raise SpecError(f"--resume {path}: no such run directory")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise SpecError(f"--resume {path}: no valid checkpoint in {path / 'checkpoints'}; start a new run")
    job_file = path / "job.yaml"
    if job_file.is_file():
        import yaml

        old = spec_from_dict(yaml.safe_load(job_file.read_text()), where=str(job_file))
        changed = [f for f in old.diff(spec) if f not in SAFE_RESUME_CHANGES]
        if changed:
            raise SpecError(f"--resume {path}: the spec differs from the run's job.yaml in {', '.join(changed)}; "
                            f"only {', '.join(sorted(SAFE_RESUME_CHANGES))} may change on resume")
    if ckpt.get("spec_digest") and ckpt["spec_digest"] != spec.digest(ignore=SAFE_RESUME_CHANGES):
        raise SpecError(f"--resume {path}: checkpoint {ckpt['path']} was written by a different spec; "
                        f"start a new run")
    return ckpt
