"""Experiment tracking (launcher/tracking.py, docs/design.md#tracking): what a tracked run
logs to MLflow, read back through the MLflow client.

Fast tier: the spec section, the lazy import, a file store (``file:`` URI, no server), a
failed run, and a tracking server that does not answer (one warning line, the run
completes). Marked ``distributed`` like the other tests that start servers: a real
``mlflow server`` on loopback (a free port, a sqlite backend and an artifact folder in
tmp_path), stopped after the test."""
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from login_uris import LOGIN_URIS

from launcher.driver import run_job
from launcher.spec import load_spec
from procs import kill_tree, run

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LRJOB = str(BIN / "lrjob")
JOB = "jobs/binary_2d.yaml"
# A 3-epoch in-process run of seconds; learning rate 0.05 to see it among the params.
SMALL = ["resources.workers=0", "train.epochs=3", "train.learning_rate=0.05"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _only_run(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} was not created"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, runs
    return runs[0]


def _artifacts(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return sorted(out)


def _check_logged(client, result, experiment):
    """The MLflow run of ``result`` holds the spec, every epoch, the summary and the files."""
    run = _only_run(client, experiment)
    rid = run.info.run_id
    params = run.data.params
    assert params["train.learning_rate"] == "0.05" and params["train.epochs"] == "3"
    assert params["train.optimizer"] == "sgd" and params["data.source"] == "synthetic-blobs"
    assert json.loads(params["data.options"])["n_features"] == 2 and params["resources.workers"] == "0"
    for key in ("val_accuracy", "val_loss", "train_loss"):
        hist = sorted(client.get_metric_history(rid, key), key=lambda m: m.step)
        assert [m.step for m in hist] == [1, 2, 3], key
        assert [m.value for m in hist] == pytest.approx([h[key] for h in result.history], rel=1e-12), key
    assert run.data.metrics["summary.epochs_done"] == 3
    assert run.data.metrics["summary.best_val_accuracy"] == pytest.approx(result.summary["best_val_accuracy"])
    assert run.data.tags["lrjob.run_dir"] == str(Path(result.path).resolve())
    assert run.data.tags["lrjob.status"] == "completed" and run.info.status == "FINISHED"
    arts = _artifacts(client, rid)
    for name in ("job.yaml", "summary.json", "metrics.jsonl", "env.json", "curves.png", "boundary.png",
                 "report.html", "model/meta.json"):
        assert name in arts, (name, arts)
    assert any(a.startswith("model/") and a.endswith(".params") for a in arts), arts
    # the artifact is the run directory's file, byte for byte
    dst = Path(result.path).parent / "downloaded"
    dst.mkdir(exist_ok=True)
    got = Path(client.download_artifacts(rid, "summary.json", str(dst)))
    assert json.loads(got.read_text()) == json.loads((Path(result.path) / "summary.json").read_text())


# --------------------------------------------------------------------------- the spec
def test_tracking_is_off_by_default_and_filled_in_when_turned_on():
    assert load_spec(JOB).tracking.mlflow is None
    on = load_spec(JOB, ["tracking.mlflow={}"]).tracking.mlflow
    assert on == {"uri": "file:./mlruns", "experiment": "binary_2d"}
    given = load_spec(JOB, ["tracking.mlflow.uri=http://127.0.0.1:5000", "tracking.mlflow.experiment=lr"])
    assert given.tracking.mlflow == {"uri": "http://127.0.0.1:5000", "experiment": "lr"}


@pytest.mark.parametrize("given,stored", [
    ("file:./mlruns", "{cwd_uri}/mlruns"), ("file:mlruns", "{cwd_uri}/mlruns"),
    ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"), ("mlruns", "{cwd_uri}/mlruns"), ("./a/b", "{cwd_uri}/a/b"),
    ("/srv/mlruns", "file:///srv/mlruns"), ("file:///srv/mlruns", "file:///srv/mlruns"), ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000")])
def test_job_yaml_holds_a_relative_local_store_absolute_and_the_spec_keeps_it_as_given(tmp_path, monkeypatch,
                                                                                       given, stored):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(ROOT / JOB, [f"tracking.mlflow.uri={given}"])
    assert spec.tracking.mlflow["uri"] == given  # lrjob validate, a k8s ConfigMap: as given
    cwd = tmp_path.resolve()
    assert spec.resolved().tracking.mlflow["uri"] == stored.format(cwd=cwd, cwd_uri=cwd.as_uri())


@pytest.mark.parametrize("uri,shown", LOGIN_URIS)
def test_a_uri_is_shown_without_any_part_of_its_login(uri, shown):
    """``display`` (a URI alone), ``redact`` (a param, an override) and ``redact_text`` (a file, an
    error message, a JSON list) hide the whole login, also a secret with an unencoded '/'."""
    from launcher.storage import without_login, without_logins
    from launcher.tracking import _param_text, redact, redact_text
    from lr_core.tables import display

    assert display(uri) == shown and redact(uri) == shown
    assert redact(f"data.path={uri}") == f"data.path={shown}"
    assert redact_text(f"OSError: access denied: {uri}\n  path: '{uri}'\n") == \
        f"OSError: access denied: {shown}\n  path: '{shown}'\n"
    assert _param_text([uri, uri]) == json.dumps([shown, shown]) and _param_text([uri]) == json.dumps([shown])
    # env.json's command line and a message naming --output keep the query (the endpoint), not the login
    assert without_logins(f"lrjob run --output={uri}").partition("?")[0] == f"lrjob run --output={shown}"
    assert without_login(uri).partition("?")[0] == shown


@pytest.mark.parametrize("override,message", [
    ("tracking.mlflow.url=http://x", "tracking.mlflow: unknown key 'url'; did you mean 'uri'?"),
    ("tracking.mlflow.experiment=[1, 2]", "tracking.mlflow.experiment must be a non-empty string"),
    ("tracking.mlflow=yes", "tracking.mlflow must be a mapping"),
])
def test_bad_tracking_section_is_one_line_and_writes_nothing(tmp_path, override, message):
    r = run([LRJOB, "run", str(ROOT / JOB), "--workers", "0", "--set", override, "--runs-dir", str(tmp_path / "runs")],
            timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"lrjob: error: {message}"), r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()


def test_mlflow_is_imported_only_when_tracking_is_on(tmp_path):
    code = ("import sys; from launcher.cli import build_parser; build_parser(); "
            "from launcher.driver import run_job; from launcher.spec import load_spec; "
            f"run_job(load_spec({JOB!r}, ['resources.workers=0', 'train.epochs=1']), {str(tmp_path / 'r')!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    r = run([sys.executable, "-c", code], timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- a file store
@pytest.mark.pictures
def test_a_run_is_logged_to_a_file_store(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    result = run_job(load_spec(JOB, [*SMALL, f"tracking.mlflow.uri={uri}", "tracking.mlflow.experiment=blobs"]),
                     tmp_path / "run")
    _check_logged(_client(uri), result, "blobs")


def test_tracking_an_untracked_run_on_resume_logs_every_epoch(tmp_path):
    first = run_job(load_spec(JOB, [*SMALL, "train.epochs=2"]), tmp_path / "run")
    uri = (tmp_path / "mlruns").as_uri()
    resumed = run_job(load_spec(first.path / "job.yaml", ["train.epochs=3", f"tracking.mlflow.uri={uri}"]),
                      resume=first.path)
    client = _client(uri)
    mlrun = _only_run(client, "binary_2d")
    hist = sorted(client.get_metric_history(mlrun.info.run_id, "val_loss"), key=lambda m: m.step)
    assert [m.step for m in hist] == [1, 2, 3]
    assert [m.value for m in hist] == pytest.approx([h["val_loss"] for h in resumed.history], rel=1e-12)
    assert mlrun.info.status == "FINISHED"


def test_a_relative_file_store_is_absolute_in_job_yaml_so_a_resume_from_elsewhere_logs_there(tmp_path,
                                                                                               monkeypatch):
    """``--track file:mlruns`` names the store of the run's folder: ``lrjob run --resume RUN``
    from another folder continues the same MLflow run there (no second store)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = run_job(load_spec(ROOT / JOB, [*SMALL, "train.epochs=2", "tracking.mlflow.uri=file:mlruns"]),
                    tmp_path / "run")
    store = (tmp_path / "a" / "mlruns").as_uri()
    assert load_spec(first.path / "job.yaml", run_file=True).tracking.mlflow["uri"] == store
    monkeypatch.chdir(tmp_path / "b")
    resumed = run_job(load_spec(first.path / "job.yaml", ["train.epochs=3"], run_file=True), resume=first.path)
    assert not (tmp_path / "b" / "mlruns").exists()
    client = _client(store)
    mlrun = _only_run(client, "binary_2d")
    hist = sorted(client.get_metric_history(mlrun.info.run_id, "val_loss"), key=lambda m: m.step)
    assert [m.step for m in hist] == [1, 2, 3]
    assert [m.value for m in hist] == pytest.approx([h["val_loss"] for h in resumed.history], rel=1e-12)


def test_track_flag_and_a_failed_run_is_marked_failed(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    fault = json.dumps({"at": "step", "epoch": 2, "step": 3, "rank": 0, "action": "raise"})
    r = run([LRJOB, "run", JOB, "--workers", "0", "--track", uri, "--output", str(tmp_path / "run"),
             "--set", "train.epochs=3"], timeout=120, cwd=ROOT, env={**os.environ, "LRJOB_FAULT": fault})
    assert r.returncode == 1, r.stderr
    client = _client(uri)
    mlrun = _only_run(client, "binary_2d")
    assert mlrun.info.status == "FAILED" and mlrun.data.tags["lrjob.status"] == "failed"
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "val_accuracy")] == [1]
    assert "summary.json" in _artifacts(client, mlrun.info.run_id)


@pytest.mark.slow  # a lrjob process waits out an unreachable server (8 s): the slow in-process tier
def test_an_unreachable_server_is_one_warning_and_the_run_completes(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    r = run([LRJOB, "run", JOB, "--workers", "0", "--track", uri, "--output", str(tmp_path / "run"),
             "--set", "train.epochs=2"], timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    about = [line for line in r.stderr.splitlines() if "mlflow" in line.lower() or uri in line]
    assert len(about) == 1, r.stderr
    assert about[0].startswith(f"lrjob: warning: MLflow tracking at {uri} is off for this run (start failed: "
                               f"MlflowException: API request to {uri}/"), about
    assert "Traceback" not in r.stderr and "Retrying" not in r.stderr, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert (tmp_path / "run" / "model" / "meta.json").is_file()


# --------------------------------------------------------------------------- a real server
@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a free loopback port, a sqlite backend and an artifact folder in
    tmp_path (artifacts travel through the server); killed with its workers after the test."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # until /health answers (bounded: at most ~60 s)
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                _pause(proc)  # a tenth of a second, or until the server exits
        else:
            pytest.fail("mlflow server did not answer /health")
        yield uri
    finally:
        kill_tree(proc)
        log.close()


def _pause(proc):
    try:
        proc.wait(timeout=0.1)
    except subprocess.TimeoutExpired:
        pass


@pytest.mark.pictures
@pytest.mark.distributed
def test_a_run_is_logged_to_a_tracking_server(mlflow_server, tmp_path, capfd):
    capfd.readouterr()
    secret = mlflow_server.replace("http://", "http://alice:SECRET@")  # the server ignores it
    result = run_job(load_spec(JOB, [*SMALL, f"tracking.mlflow.uri={secret}",
                                     "tracking.mlflow.experiment=lr-blobs"]), tmp_path / "run")
    out, err = capfd.readouterr()
    assert out == ""  # stdout belongs to lrjob (--json, --quiet), not to MLflow
    assert "SECRET" not in err and "alice" not in err, err  # MLflow's run link, redacted
    _check_logged(_client(mlflow_server), result, "lr-blobs")
    # the artifacts went through the server into its folder
    assert list((tmp_path / "artifacts").rglob("report.html"))


@pytest.mark.slow  # a lrjob process against a silent server, its stderr closed (8 s): the slow in-process tier
def test_a_tracking_warning_on_a_closed_pipe_does_not_fail_the_run(tmp_path):
    """``lrjob run ... --json 2>&1 | head -1``: the reader is gone when tracking warns; the
    warning is dropped, the run completes and exits 0."""
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there: start fails, one warning
    proc = subprocess.Popen([LRJOB, "run", JOB, "--workers", "0", "--track", uri, "--json",
                             "--output", str(tmp_path / "run"), "--set", "train.epochs=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        first = proc.stdout.readline()  # the start event, written before tracking starts
        proc.stdout.close()             # the reader goes away (| head -1)
        assert proc.wait(timeout=240) == 0
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert json.loads(first)["event"] == "start"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed", summary


# --------------------------------------------------------------------------- credentials
SECRET_SPEC = """name: people
model: {kind: binary}
data: {source: csv, path: 's3://KEY:SECRET1@bucket/people.csv?secret_key=SECRET2', label_map: {'yes': 1, 'no': 0}}
resources: {workers: 0}
tracking: {mlflow: {uri: 'http://alice:SECRET3@mlflow.example:5000', experiment: people}}
"""


def test_no_credentials_reach_mlflow_or_the_warning(tmp_path):
    """A user:secret@ part or a query string in data.path or tracking.mlflow.uri is in no
    param, tag, artifact nor warning line."""
    from launcher.tracking import MlflowTracker

    (tmp_path / "job.yaml").write_text(SECRET_SPEC)
    spec = load_spec(tmp_path / "job.yaml")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "job.yaml").write_text(spec.to_yaml())
    (run_dir / "env.json").write_text(json.dumps({"argv": ["lrjob", "run", "--track", spec.tracking.mlflow["uri"],
                                                           "--set", f"data.path={spec.data.path}"]}))
    uri = (tmp_path / "mlruns").as_uri()
    tracker = MlflowTracker(uri, "people")
    warnings = []
    tracker.warn = warnings.append
    tracker.start(spec, run_dir, [])
    tracker.finish({"status": "completed", "epochs_done": 0}, run_dir)
    assert warnings == []
    client = _client(uri)
    mlrun = _only_run(client, "people")
    assert mlrun.data.params["data.path"] == "s3://bucket/people.csv"
    assert mlrun.data.params["tracking.mlflow.uri"] == "http://mlflow.example:5000"
    dst = tmp_path / "downloaded"
    dst.mkdir()
    logged = json.dumps([mlrun.data.params, mlrun.data.tags])
    for name in ("job.yaml", "env.json"):
        logged += Path(client.download_artifacts(mlrun.info.run_id, name, str(dst))).read_text()
    assert "s3://bucket/people.csv" in logged
    for secret in ("SECRET1", "SECRET2", "SECRET3", "KEY:", "alice"):
        assert secret not in logged, secret

    # an unreachable server's warning shows the URI without its credentials
    down = MlflowTracker(f"http://alice:SECRET3@127.0.0.1:{_free_port()}/?token=SECRET4{'x' * 300}", "people")
    down.warn = warnings.append
    down.start(spec, run_dir, [])
    down.finish({"status": "completed"}, run_dir)
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0], warnings
    assert "SEC" not in warnings[0] and "alice" not in warnings[0], warnings[0]


# --------------------------------------------------------------------------- mapping fields
def test_a_label_map_with_any_keys_is_one_json_param_and_the_run_finishes(tmp_path):
    """``{"<=50K": 0, ">50K": 1}`` (keys MLflow refuses as param names) is logged as one JSON
    param; so are data.options and train.class_weight; the run ends FINISHED, no warning."""
    from launcher.tracking import MlflowTracker

    (tmp_path / "job.yaml").write_text(
        "name: adult\nmodel: {kind: binary}\n"
        "data: {source: csv, path: adult.csv, label_map: {'<=50K': 0, '>50K': 1}}\n"
        "train: {class_weight: {'<=50K': 1.0, '>50K': 3.0}}\nresources: {workers: 0}\n")
    spec = load_spec(tmp_path / "job.yaml")
    uri = (tmp_path / "mlruns").as_uri()
    tracker = MlflowTracker(uri, "adult")
    warnings = []
    tracker.warn = warnings.append
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker.start(spec, run_dir, [{"epoch": 1, "val_loss": 0.5, "odd metric!": 1.0}])
    tracker.finish({"status": "completed"}, run_dir)
    assert warnings == []
    mlrun = _only_run(_client(uri), "adult")
    params = mlrun.data.params
    assert json.loads(params["data.label_map"]) == {"<=50K": 0, ">50K": 1}
    assert json.loads(params["train.class_weight"]) == {"<=50K": 1.0, ">50K": 3.0}
    assert mlrun.data.metrics["odd metric_"] == 1.0
    assert mlrun.info.status == "FINISHED"


def test_a_failure_after_the_mlflow_run_exists_ends_it_failed(tmp_path, monkeypatch):
    """The first error after the MLflow run was created turns tracking off and closes that
    run FAILED (not left RUNNING)."""
    from mlflow.tracking import MlflowClient

    from launcher.tracking import MlflowTracker

    log_batch = MlflowClient.log_batch

    def refuse_metrics(self, run_id, metrics=(), **kwargs):  # the server refuses the epoch's batch
        if metrics:
            raise RuntimeError("refused")
        return log_batch(self, run_id, metrics=metrics, **kwargs)
    monkeypatch.setattr(MlflowClient, "log_batch", refuse_metrics)
    uri = (tmp_path / "mlruns").as_uri()
    tracker = MlflowTracker(uri, "blobs")
    warnings = []
    tracker.warn = warnings.append
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker.start(load_spec(JOB, SMALL), run_dir, [])
    tracker.epoch({"epoch": 1, "val_loss": 0.5})
    tracker.finish({"status": "completed"}, run_dir)
    assert len(warnings) == 1 and "epoch failed: RuntimeError: refused" in warnings[0]
    assert _only_run(_client(uri), "blobs").info.status == "FAILED"


@pytest.fixture
def silent_server():
    """A loopback socket that accepts connections and never answers (kept open until the end)."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        srv.close()
        for conn in held:
            conn.close()


@pytest.mark.slow  # it waits the whole FINISH_SECONDS by design: the slow in-process tier of make test
def test_a_server_that_never_answers_costs_the_run_a_bounded_wait(tmp_path, silent_server):
    """The server accepts and says nothing, and the user's MLflow HTTP timeout is 10 minutes:
    training does not wait for it, the end waits FINISH_SECONDS at most, one warning, exit 0
    (the bound below is the deadline plus a generous minute for the run itself)."""
    from launcher.tracking import FINISH_SECONDS

    env = {**os.environ, "MLFLOW_HTTP_REQUEST_TIMEOUT": "600", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    r = run([LRJOB, "run", JOB, "--workers", "0", "--track", silent_server, "--output", str(tmp_path / "run"),
             "--set", "train.epochs=2"], timeout=FINISH_SECONDS + 60, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    about = [line for line in r.stderr.splitlines() if "MLflow" in line]
    assert about == [f"lrjob: warning: MLflow tracking at {silent_server} is off for this run (the server did not "
                     f"answer within {FINISH_SECONDS:g} s at the end); training goes on, the run directory has "
                     f"everything"], r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2


def test_a_resume_continues_the_same_mlflow_run(tmp_path):
    """One lrjob run is one MLflow run: a tracked run resumed (2 epochs, then 3) reopens the
    MLflow run recorded in mlflow.json; every epoch is logged once; it ends FINISHED."""
    uri = (tmp_path / "mlruns").as_uri()
    first = run_job(load_spec(JOB, [*SMALL, "train.epochs=2", f"tracking.mlflow.uri={uri}"]), tmp_path / "run")
    recorded = json.loads((first.path / "mlflow.json").read_text())
    resumed = run_job(load_spec(first.path / "job.yaml", ["train.epochs=3"]), resume=first.path)
    client = _client(uri)
    mlrun = _only_run(client, "binary_2d")
    assert mlrun.info.run_id == recorded["run_id"] and mlrun.info.status == "FINISHED"
    hist = sorted(client.get_metric_history(mlrun.info.run_id, "val_loss"), key=lambda m: m.step)
    assert [m.step for m in hist] == [1, 2, 3]
    assert [m.value for m in hist] == pytest.approx([h["val_loss"] for h in resumed.history], rel=1e-12)
    assert mlrun.data.params["train.epochs"] == "2"  # MLflow keeps a param's first value
