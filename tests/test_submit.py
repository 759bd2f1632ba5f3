"""Ray Jobs submission against a real head started by the test (`ray start --head` on
loopback, with the dashboard); the head's whole process group is stopped in every case.
The main head runs with Ray token authentication (a token in its HOME, which the client shares);
`open_head` runs without it, and `lrjob submit` must refuse it unless --insecure."""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from launcher.rundir import latest_checkpoint
from launcher.driver import run_job
from launcher.spec import load_spec
from procs import start_ray_head, stop_session

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LRJOB = str(BIN / "lrjob")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head(token: bool):
    """Start `ray start --head` in a HOME of its own: with ``token``, a token file there (Ray 2.60
    then starts the cluster in token mode, and the client, sharing the HOME, sends it); without,
    RAY_AUTH_MODE=disabled. Yields address, env and the GCS address; stops the head after."""
    # No address or token settings of the session's own Ray (ray.init switches token mode
    # on in this process's environment): the head decides its own.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["PATH"] = f"{BIN}:{env['PATH']}"  # the job's entrypoint finds this lrjob
    temp = tempfile.mkdtemp(prefix="lrjob-head-")
    # `ray start` reads and writes ~/.ray/auth_token: a HOME of its own leaves the user's HOME
    # as it was (the client reads the token from the same HOME)
    from lr_core.data import data_home

    env.setdefault("LRJOB_DATA_HOME", str(data_home()))
    env["HOME"] = os.path.join(temp, "home")
    env["MPLCONFIGDIR"] = os.path.join(temp, "matplotlib")
    os.makedirs(os.path.join(env["HOME"], ".ray"))
    head_env = dict(env)
    if token:
        Path(env["HOME"], ".ray", "auth_token").write_text(secrets.token_hex(32))
    else:
        head_env["RAY_AUTH_MODE"] = "disabled"
    proc = None
    try:
        proc, out, (port, dash, agent) = start_ray_head(
            lambda port, dash, agent: [
                str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                # the dashboard agent's HTTP port is fixed (52365) by default: another Ray on this
                # machine (the test session's) holds it, and the Jobs API then finds no agent
                f"--dashboard-agent-listen-port={agent}",
                "--num-cpus=4", f"--temp-dir={temp}", "--disable-usage-stats"], head_env)
        assert proc.returncode == 0, out
        assert ("Token authentication is enabled" in out) == token, out
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 60
        while time.time() < deadline:  # the Jobs API answers a little after `ray start` returns
            r = subprocess.run([LRJOB, "list", "--address", address], capture_output=True, text=True, env=env)
            if r.returncode == 0:
                break
            time.sleep(1)
        yield {"address": address, "env": env, "gcs": f"127.0.0.1:{port}"}
    finally:
        if proc is not None:
            stop_session(proc.pid)  # SIGTERM, SIGKILL after 2 s
            proc.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    yield from _head(token=True)


@pytest.fixture(scope="module")
def open_head():
    yield from _head(token=False)


def lrjob(head, *args, timeout=300):
    return subprocess.run([LRJOB, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=head["env"])


def test_submit_wait_status_logs_and_results(head, tmp_path):
    out = tmp_path / "submitted"
    r = lrjob(head, "submit", "jobs/binary_synthetic.yaml", "--address", head["address"], "--workers", 2,
              "--set", "train.epochs=3", "--output", out, "--id", "lrjob-test-ok", "--wait")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "SUCCEEDED" in r.stdout
    status = lrjob(head, "status", "lrjob-test-ok", "--address", head["address"])
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = lrjob(head, "logs", "lrjob-test-ok", "--address", head["address"])
    assert "3/3" in logs.stdout and "2 Horovod workers" in logs.stdout, logs.stdout[-2000:]
    listed = lrjob(head, "list", "--address", head["address"])
    assert "lrjob-test-ok" in listed.stdout
    # the cluster's run equals a local run of the same job
    local = run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.epochs=3"]),
                    output=tmp_path / "local")
    remote = latest_checkpoint(out)
    for name, value in local.params.items():
        assert np.max(np.abs(remote["params"][name] - value)) <= 1e-4, name
    got = [json.loads(x)["val_accuracy"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.allclose(got, [m["val_accuracy"] for m in local.history], atol=1e-6, rtol=0)


def test_stop_ends_a_long_job_as_stopped(head, tmp_path):
    r = lrjob(head, "submit", "jobs/binary_synthetic.yaml", "--address", head["address"], "--workers", 2,
              "--set", "train.epochs=1000", "--set", "train.batch_size=2", "--output", tmp_path / "long",
              "--id", "lrjob-test-long")
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = lrjob(head, "logs", "lrjob-test-long", "--address", head["address"]).stdout
        if "1/1000" in logs:
            break
        time.sleep(1)
    else:
        pytest.fail("the long job never reported an epoch")
    r = lrjob(head, "stop", "lrjob-test-long", "--address", head["address"])
    assert r.returncode == 0 and "STOPPED" in r.stdout, r.stdout + r.stderr


def test_unknown_job_id_is_a_clear_error(head):
    r = lrjob(head, "status", "no-such-job", "--address", head["address"])
    assert r.returncode == 2 and "no such job" in r.stderr and "Traceback" not in r.stderr


def test_logs_follow_streams_until_the_job_ends(head, tmp_path):
    out = tmp_path / "followed"
    epochs = 12
    r = lrjob(head, "submit", "jobs/binary_synthetic.yaml", "--address", head["address"], "--workers", 2,
              "--set", f"train.epochs={epochs}", "--output", out, "--id", "lrjob-test-follow")
    assert r.returncode == 0, r.stdout + r.stderr
    follow = subprocess.Popen([LRJOB, "logs", "lrjob-test-follow", "--follow", "--address", head["address"]],
                              cwd=ROOT, env=head["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(240, follow.kill)  # a job that never ends must not hang the test
    watchdog.start()
    try:
        lines, streamed = [], None
        for line in follow.stdout:  # read as the job runs
            lines.append(line)
            if streamed is None and line.strip().startswith(f"1/{epochs} "):
                # the first epoch is printed while the run is far from done
                streamed = not (out / "checkpoints" / f"epoch-{epochs:04d}").exists()
        code = follow.wait(timeout=30)
    finally:
        watchdog.cancel()
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    text = "".join(lines)
    assert code == 0, text[-2000:] + follow.stderr.read()[-2000:]
    assert streamed is True, text[-3000:]
    assert f"{epochs}/{epochs}" in text and "completed" in text and str(out) in text, text[-2000:]
    # --follow returns once the job has ended
    status = lrjob(head, "status", "lrjob-test-follow", "--address", head["address"])
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stdout + status.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_the_head_reports_token_auth_and_submit_accepts_it(head):
    from launcher.deploy.submit import auth_mode

    assert auth_mode(head["address"]) == "token"
    listed = lrjob(head, "list", "--address", head["address"])
    assert listed.returncode == 0 and "warning" not in listed.stderr, listed.stderr


def test_submit_refuses_a_head_without_auth_unless_insecure(open_head, tmp_path):
    from launcher.deploy.submit import auth_mode

    address = open_head["address"]
    assert auth_mode(address) == "disabled"
    out = tmp_path / "refused"
    r = lrjob(open_head, "submit", "jobs/binary_synthetic.yaml", "--address", address, "--workers", 1,
              "--set", "train.epochs=1", "--output", out, "--id", "lrjob-test-refused")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"lrjob: error: --address {address}: the Ray head runs without authentication")
    assert "--insecure" in line and "RAY_AUTH_MODE=token" in line
    assert r.stdout == "" and not out.exists()
    listed = lrjob(open_head, "list", "--address", address)
    assert listed.returncode == 0 and "lrjob-test-refused" not in listed.stdout  # nothing was submitted
    # the commands that only read jobs warn
    assert "lrjob: warning:" in listed.stderr and "runs without authentication" in listed.stderr, listed.stderr
    # --insecure: submitted, with a warning
    r = lrjob(open_head, "submit", "jobs/binary_synthetic.yaml", "--address", address, "--workers", 1,
              "--set", "train.epochs=1", "--output", out, "--id", "lrjob-test-insecure", "--insecure", "--wait")
    assert r.returncode == 0 and "SUCCEEDED" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    warnings = [x for x in r.stderr.splitlines() if x.startswith("lrjob: warning:")]
    assert len(warnings) == 1 and "runs without authentication" in warnings[0] and "--insecure" in warnings[0]
    # the driver on the open head joined it without a token: Ray's own warning is in its log
    assert "Token authentication is disabled for this Ray cluster" in r.stdout, r.stdout[-3000:]
    assert (out / "summary.json").is_file()


# --------------------------------------------------------------------------- the auth check's answers
def test_the_token_head_refuses_a_request_without_its_token(head):
    from launcher.deploy.submit import check_auth

    check = check_auth(head["address"])
    assert check.mode == "token" and check.detail.endswith("HTTP 401"), check


def _fake_dashboard(routes):
    """A tiny HTTP server on loopback in a thread: ``routes`` maps a path to (status, headers,
    body); any other path gives 404. Returns the server (stop it with ``shutdown``) and its URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            status, headers, body = routes.get(self.path, (404, {}, b"404: Not Found"))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


TOKEN = (200, {"Content-Type": "application/json"}, b'{"authentication_mode": "token"}')
FAKES = {
    "lying": ({"/api/authentication_mode": TOKEN, "/api/jobs/": (200, {}, b"[]")}, "open", "HTTP 200"),
    "404": ({}, "missing", "HTTP 404"),
    "redirect": ({"/api/authentication_mode": (302, {"Location": "https://sso.example/login"}, b"")}, "gated",
                 "HTTP 302 to https://sso.example/login"),
    "401": ({"/api/authentication_mode": (401, {}, b"no")}, "gated", "HTTP 401"),
    "not-json": ({"/api/authentication_mode": (200, {}, b"<html>")}, "unknown", "not JSON"),
    "honest": ({"/api/authentication_mode": TOKEN, "/api/jobs/": (401, {}, b"")}, "token", "HTTP 401"),
}


@pytest.mark.parametrize("case", list(FAKES))
def test_the_auth_check_tells_its_answers_apart(case):
    from launcher.deploy.submit import check_auth, client_for
    from lr_core.errors import LrjobInputError

    routes, mode, detail = FAKES[case]
    server, url = _fake_dashboard(routes)
    try:
        check = check_auth(url)
        assert check.mode == mode and detail in check.detail, check
        if mode != "token":
            with pytest.raises(LrjobInputError) as info:
                client_for(url, insecure=False)
            message = str(info.value)
            assert "\n" not in message and detail in message and "--insecure" in message, message
    finally:
        server.shutdown()
        server.server_close()


def test_the_auth_check_names_unreachable_and_tls_errors():
    from launcher.deploy.submit import check_auth

    server, url = _fake_dashboard({})
    try:  # https to a plain HTTP server: the TLS handshake fails
        check = check_auth(url.replace("http://", "https://"))
        assert check.mode == "tls" and "SSLError" in check.detail, check
    finally:
        server.shutdown()
        server.server_close()
    check = check_auth(f"http://127.0.0.1:{_free_port()}")
    assert check.mode == "unreachable" and "ConnectionError" in check.detail, check


def test_submit_to_a_lying_head_is_one_line_with_the_real_answer(tmp_path):
    server, url = _fake_dashboard(FAKES["lying"][0])
    try:
        r = subprocess.run([LRJOB, "submit", "jobs/binary_synthetic.yaml", "--address", url, "--output",
                            tmp_path / "out"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 2 and r.stdout == "" and not (tmp_path / "out").exists(), r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "serves its job API without a token (GET /api/jobs/ without a token: HTTP 200)" in line, line


def test_joining_an_open_cluster_with_a_local_token_still_warns(open_head, tmp_path):
    # this machine has a token (so this process runs in token mode), the cluster wants none:
    # the cluster is asked, through its dashboard
    env = dict(open_head["env"])
    env["HOME"] = str(tmp_path)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    code = ("from launcher.backends.cluster import RaySession\n"
            "from ray._private.authentication.authentication_utils import is_token_auth_enabled\n"
            f"with RaySession({open_head['gcs']!r}, 1, 1):\n"
            "    assert is_token_auth_enabled()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Token authentication is disabled for this Ray cluster" in r.stderr, r.stderr[-3000:]


def test_an_embedded_ray_is_a_new_one_while_a_started_head_runs_here(head, tmp_path):
    """`ray start --head` records its address for the machine (TMP/ray/ray_current_cluster);
    a bare ray.init() joins that cluster. lrjob's embedded Ray must start its own."""
    tmp = Path(tempfile.mkdtemp(prefix="lrj-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text(head["gcs"])
        env = dict(head["env"], RAY_TMPDIR=str(tmp), PYTHONPATH=str(ROOT))
        code = ("import ray\n"
                "from launcher.backends.cluster import RaySession\n"
                "with RaySession(None, 1, 1.0) as s:\n"
                "    print(s.kind, '|', ray.get_runtime_context().gcs_address)\n")
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                           timeout=180, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        kind, gcs = r.stdout.strip().splitlines()[-1].split(" | ")
        assert kind.startswith("local Ray") and gcs != head["gcs"], r.stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
