"""Experiment tracking (docs/design.md#tracking): a run logged to MLflow besides its run directory.

    lrjob run jobs/digits_softmax.yaml --workers 0 --track http://127.0.0.1:5000
    # or in the spec:  tracking: {mlflow: {uri: http://127.0.0.1:5000, experiment: digits}}

``make_tracker(spec)`` gives the driver a ``Tracker``: ``NullTracker`` when the spec leaves
``tracking.mlflow`` unset, else an ``MlflowTracker``, the only place that imports mlflow
(so ``lrjob --help`` and untracked runs never load it). The driver calls ``start`` once the
run directory exists, ``epoch`` after each epoch is saved and ``finish`` after the summary
and the plots are written.

What is logged: the resolved spec as params (flattened: ``train.learning_rate``; the
mappings of ``WHOLE``, such as ``data.label_map``, one JSON param each), every
epoch's numeric metrics (step = epoch), the summary's numbers (``summary.*``), the run's
files (job.yaml, summary.json, metrics.jsonl, env.json, the pictures, report.html, and the
exported model under ``model/``) as artifacts, and tags naming the run directory.

Tracking never fails or holds up a run: the MLflow calls run in order on one background
thread (a bounded queue), so an epoch never waits for the server; at the end the driver
waits ``FINISH_SECONDS`` at most for what is still queued. The first error (a server that
does not answer, a refused request, the deadline) is one warning line on stderr and turns
tracking off for the rest of the run; the client's HTTP retries and timeout are bounded
too (``HTTP_LIMITS``, the user's environment wins).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import queue
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["Tracker", "NullTracker", "MlflowTracker", "make_tracker", "flatten", "redact", "HTTP_LIMITS", "WHOLE",
           "FINISH_SECONDS"]

# MLflow client settings (environment variables it reads per request). Its defaults retry
# 7 times with a 120 s timeout each: minutes of a stalled driver for a server that is down.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# At the end of a run, the longest wait for the calls still queued (then one warning), and
# how many calls may wait for a slow server before tracking turns off.
FINISH_SECONDS = 10.0
QUEUE_ITEMS = 1000
# MLflow's per-request limits (log_batch) and its longest param value.
_BATCH_PARAMS, _BATCH_METRICS, _PARAM_CHARS = 100, 1000, 6000
# The run's files logged as artifacts when present (the exported model/ separately).
ARTIFACTS = ("job.yaml", "summary.json", "metrics.jsonl", "env.json", "curves.png", "confusion.png",
             "samples.png", "boundary.png", "roc_pr.png", "weights.png", "report.html")
# The files that may hold a URI with credentials (data.path, tracking.mlflow.uri, argv):
# uploaded as redacted copies.
_REDACTED = ("job.yaml", "env.json")
# The run directory's record of its MLflow run (uri, experiment_id, run_id): a resume
# reopens that run instead of creating a second one.
RUN_FILE = "mlflow.json"
# How summary.json's status reads in MLflow.
_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class Tracker:
    """What the driver calls; this base class logs nothing."""

    def start(self, spec, run_dir: Path, history: list[dict]) -> None:
        """The run begins (``history``: the epochs a resumed run already has)."""

    def epoch(self, metrics: dict) -> None:
        """One finished epoch's metrics (a line of metrics.jsonl)."""

    def finish(self, summary: dict, run_dir: Path) -> None:
        """The run ended (completed, failed or interrupted): ``summary`` is summary.json."""


class NullTracker(Tracker):
    """Tracking off (the default)."""


def make_tracker(spec) -> Tracker:
    """The tracker the spec asks for: ``MlflowTracker`` when ``tracking.mlflow`` is set, else
    ``NullTracker``. Nothing is imported or contacted here."""
    mlflow = spec.tracking.mlflow
    if not mlflow:
        return NullTracker()
    return MlflowTracker(mlflow["uri"], mlflow["experiment"])


# Spec fields whose keys are the user's (class names, source options): one JSON param each,
# so that a key such as "<=50K" never becomes a param name MLflow refuses.
WHOLE = ("data.label_map", "data.options", "data.features", "train.class_weight")
# What MLflow allows in a param or metric name; any other character becomes "_".
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def flatten(obj, prefix: str = "", whole: tuple[str, ...] = ()) -> dict[str, object]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (mappings only; lists stay values;
    the dotted names in ``whole`` stay one value)."""
    out: dict[str, object] = {}
    if isinstance(obj, dict) and prefix not in whole:
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k), whole))
    elif prefix:
        out[prefix] = obj
    return out


def _key(name: str) -> str:
    """``name`` as MLflow accepts a param or metric name (at most 250 characters)."""
    return _KEY_BAD.sub("_", name)[:250]


def _number(v) -> float | None:
    """``v`` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# A URI's user:secret@ part and its query (?access_key=...): never sent to MLflow nor shown.
# (The login ends at the host's last '@'; a secret with an unencoded '/' or '?', user:SE/CRET@,
# at the URI's last '@', as lr_core.tables.display reads it; launcher/storage.py's _LOGIN is the same.)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/?\s\"']*@|[^/?@:\s\"']*:(?!\d{1,5}[/?])[^\s\"']*@)")
_ONE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_ANY_QUERY = re.compile(r"\?[^\s\"'?]*=[^\s\"']*")
_QUERY = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'?]*)\?[^\s\"']*")


def redact(text: str) -> str:
    """``text`` with every URI in it shown as ``lr_core.tables.display`` shows one: without
    ``user:secret@`` and without its query string."""
    from lr_core.tables import display

    text = str(text)
    if _ONE_URI.fullmatch(text):  # a URI alone; in other text (a JSON list: '["s3://..."]'), each one
        return display(text)
    return _QUERY.sub(r"\1", _USERINFO.sub(r"\1", text))


def _param_text(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return redact(text)[:_PARAM_CHARS]


class MlflowTracker(Tracker):
    """Logs one lrjob run as one MLflow run of ``experiment`` at ``uri``, through
    ``MlflowClient`` (no global active run: several drivers in one process stay apart; only
    mlflow's global tracking URI is set, for the artifacts, see ``_finish``)."""

    def __init__(self, uri: str, experiment: str, finish_seconds: float | None = None):
        self.uri, self.experiment = uri, experiment
        self.client = None
        self.run_id: str | None = None
        self.parent_run_id: str | None = None  # a sweep's run: this run is its child (launcher/sweep.py)
        self.off = False  # set by the first failure: nothing more is sent
        # where the one warning line goes: the driver's Reporter (a closed pipe silences it)
        self.warn = _warn_stderr
        self.finish_seconds = FINISH_SECONDS if finish_seconds is None else finish_seconds
        # The MLflow calls run on one background thread, in order: a slow or silent server
        # never holds up an epoch; the queue is bounded, the end waits finish_seconds at most.
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_ITEMS)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the driver's calls
    def start(self, spec, run_dir: Path, history: list[dict]) -> None:
        """Create the MLflow run (tags: the run directory, the job), log the spec as params and
        the epochs a resumed run already has (on the background thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="lrjob-mlflow", daemon=True)
            self._thread.start()
        history = [dict(h) for h in history]
        self._send("start", lambda: self._start(spec, Path(run_dir), history))

    def epoch(self, metrics: dict) -> None:
        """Log the epoch's numeric metrics at step = its epoch number (queued, not waited for)."""
        metrics = dict(metrics)
        self._send("epoch", lambda: self._log_metrics([metrics]) if self.run_id is not None else None)

    def finish(self, summary: dict, run_dir: Path) -> None:
        """Log the summary's numbers, the run's files and the model, and close the MLflow run
        with the run's status; waits ``finish_seconds`` at most for everything queued, then
        warns once and returns (the run directory has everything)."""
        if self._thread is None:
            return
        summary = dict(summary)
        self._send("finish", lambda: self._finish(summary, Path(run_dir)) if self.run_id is not None else None)
        self._send(None, None)  # the worker's last item
        self._thread.join(self.finish_seconds)
        if self._thread.is_alive():
            self._turn_off(f"the server did not answer within {self.finish_seconds:g} s at the end")

    def _send(self, what, call) -> None:
        if self.off and what is not None:
            return
        try:
            self._queue.put_nowait((what, call))
        except queue.Full:
            self._turn_off(f"{QUEUE_ITEMS} calls waiting for the server")

    def _work(self) -> None:
        while True:
            what, call = self._queue.get()
            if what is None:
                return
            self._guard(what, call)

    def _turn_off(self, why: str) -> None:
        """Tracking off with one warning line (only the first reason is shown)."""
        with self._lock:
            if self.off:
                return
            self.off = True
        self.warn(f"lrjob: warning: MLflow tracking at {redact(self.uri)} is off for this run ({why}); "
                  f"training goes on, the run directory has everything")

    # ------------------------------------------------------------------ MLflow
    def _start(self, spec, run_dir: Path, history: list[dict]) -> None:
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)
        # urllib3 and mlflow would print retries and notices: the one warning line is ours.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.ERROR)
        self.client = client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(self.experiment)
            except Exception:  # noqa: BLE001 - another run created it meanwhile
                found = client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        tags = {"lrjob.run_dir": redact(str(run_dir.resolve())), "lrjob.job": redact(spec.name),
                "lrjob.workers": str(spec.workers), "mlflow.source.name": "lrjob",
                "mlflow.source.type": "JOB"}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self._reopen(run_dir, experiment_id)
        logged_params: dict = {}
        logged_steps: set[int] = set()
        if run is not None:  # a resume: the same MLflow run goes on
            client.update_run(run.info.run_id, status="RUNNING")
            logged_params = dict(run.data.params)
            key = next((k for h in history for k, v in h.items() if k != "epoch" and _number(v) is not None), None)
            if key is not None:
                logged_steps = {m.step for m in client.get_metric_history(run.info.run_id, _key(key))}
        else:
            run = client.create_run(experiment_id, tags=tags, run_name=run_dir.name)
            _write_json(run_dir / RUN_FILE, {"uri": redact(self.uri), "experiment_id": experiment_id,
                                             "run_id": run.info.run_id})
        self.run_id = run.info.run_id
        # MLflow keeps a param's first value: a resume adds the new ones only (train.epochs stays)
        params = [Param(_key(k), _param_text(v)) for k, v in sorted(flatten(spec.to_dict(), whole=WHOLE).items())
                  if _key(k) not in logged_params]
        for i in range(0, len(params), _BATCH_PARAMS):
            client.log_batch(self.run_id, params=params[i:i + _BATCH_PARAMS])
        history = [h for i, h in enumerate(history) if int(h.get("epoch", i + 1)) not in logged_steps]
        if history:
            self._log_metrics(history)

    def _reopen(self, run_dir: Path, experiment_id: str):
        """The MLflow run this run directory was logged to (``mlflow.json``), when it is at this
        URI and experiment and still exists; else None (a new MLflow run is created)."""
        try:
            doc = json.loads((run_dir / RUN_FILE).read_text())
            if doc.get("uri") != redact(self.uri) or doc.get("experiment_id") != experiment_id:
                return None
            run = self.client.get_run(str(doc["run_id"]))
        except Exception:  # noqa: BLE001 - absent, damaged, deleted: start a new MLflow run
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _log_metrics(self, epochs: list[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for i, m in enumerate(epochs):
            step = int(m.get("epoch", i + 1))
            metrics += [Metric(_key(k), x, now, step) for k, v in m.items()
                        if k != "epoch" and (x := _number(v)) is not None]
        for i in range(0, len(metrics), _BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _BATCH_METRICS])

    def _finish(self, summary: dict, run_dir: Path) -> None:
        from mlflow.entities import Metric, RunTag

        import mlflow

        # Artifacts that travel through the server (mlflow-artifacts:/ locations) are resolved
        # against mlflow's global tracking URI, not the client's: point it at ours.
        mlflow.set_tracking_uri(self.uri)
        client, now = self.client, int(time.time() * 1000)
        # "final" repeats the last epoch, already logged at its step
        numbers = {f"summary.{k}": x for k, v in summary.items() if k != "final" and (x := _number(v)) is not None}
        status = str(summary.get("status", "?"))
        client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(numbers.items())],
                         tags=[RunTag("lrjob.status", status)])
        with tempfile.TemporaryDirectory(prefix="lrjob-track-") as tmp:
            for name in ARTIFACTS:
                path = run_dir / name
                if not path.is_file():
                    continue
                if name in _REDACTED:  # the spec's URIs and the command line: no credentials
                    path = Path(tmp) / name
                    path.write_text(redact_text((run_dir / name).read_text()))
                client.log_artifact(self.run_id, str(path))
        if (run_dir / "model").is_dir():
            client.log_artifacts(self.run_id, str(run_dir / "model"), artifact_path="model")
        self._terminate(_STATUS.get(status, "FAILED"))

    def _terminate(self, status: str) -> None:
        """Close the MLflow run with ``status``. MLflow prints the run's link to stdout for a
        server, with the URI's credentials: stdout is lrjob's (--json, --quiet), so the link
        goes to the warning channel (stderr), redacted."""
        link = io.StringIO()
        try:
            with contextlib.redirect_stdout(link):
                self.client.set_terminated(self.run_id, status=status)
        finally:
            if link.getvalue().strip():
                self.warn(redact_text(link.getvalue().rstrip()))

    def _close_failed(self) -> None:
        """Best effort: an MLflow run created before the failure ends FAILED, not RUNNING."""
        if self.client is None or self.run_id is None:
            return
        try:
            self._terminate("FAILED")
        except Exception:  # noqa: BLE001 - the server may be the failure
            pass

    def _guard(self, what: str, call) -> None:
        """Run ``call``; the first exception is one warning line and turns tracking off."""
        if self.off:
            return
        try:
            call()
        except Exception as e:  # noqa: BLE001 - tracking must never fail a training run
            with self._lock:
                if self.off:  # already off (the deadline at the end): one warning only
                    return
                self.off = True
            self._close_failed()
            reason = redact(" ".join(f"{type(e).__name__}: {e}".split()))
            # a request's query, also when quoted without its host ("url: /?token=...")
            reason = _ANY_QUERY.sub("", reason)
            if len(reason) > 240:
                reason = reason[:237] + "..."
            self.warn(f"lrjob: warning: MLflow tracking at {redact(self.uri)} is off for this run ({what} failed: "
                      f"{reason}); training goes on, the run directory has everything")


def _write_json(path: Path, doc: dict) -> None:
    """``doc`` as ``path``, atomically (a temporary file renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def redact_text(text: str) -> str:
    """A file's text with every URI in it redacted (``redact``, applied within the text)."""
    return _QUERY.sub(r"\1", _USERINFO.sub(r"\1", text))


def _warn_stderr(text: str) -> None:
    """One line on stderr; a stderr that cannot be written (a closed pipe) drops it: a warning
    about tracking must not fail the run."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
