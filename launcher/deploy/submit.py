"""Ray Jobs submission: ``lrjob submit | status | logs | stop | list``.

The resolved job spec travels with the submission (Ray's ``working_dir``); the
entrypoint on the cluster is ``lrjob run job.yaml ...``. The run directory is written on
the node that runs the job's driver (the head node by default): ``--output`` puts it on
storage the cluster shares (e.g. the PVC of k8s/), otherwise it lands in
``~/lrjob-runs/<name>-<stamp>`` on that node, and the path is printed in the logs.

    lrjob submit jobs/binary_synthetic.yaml --address http://127.0.0.1:8265 --workers 2 --wait
    lrjob status lrjob-binary_synthetic-20260101T000000Z --address http://127.0.0.1:8265

A Ray head without token authentication runs code for anyone who reaches its dashboard.
``lrjob submit`` asks the dashboard first (``GET /api/authentication_mode``, public in Ray
2.52 and later; when it says ``token``, ``GET /api/jobs/`` without the token must be refused)
and refuses any other head unless ``--insecure`` is given, naming what it found (open, 404,
a proxy's 401/403/redirect, unreachable, TLS error); the other commands print a warning
(docs/design.md "Cluster security").
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lr_core.errors import ClusterError, LrjobInputError

from ..backends.auth_check import AuthCheck, check_auth
from ..backends.cluster import require_listening, use_ray_token_if_present
from ..rundir import utc_stamp

__all__ = ["submit", "Submission", "client_for", "auth_mode", "check_auth", "AuthCheck", "TERMINAL"]

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _address(address: str | None) -> str:
    address = address or os.environ.get("LRJOB_ADDRESS") or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise LrjobInputError("--address: give the Ray dashboard address, e.g. --address http://HEAD:8265 "
                              "(or set LRJOB_ADDRESS)")
    if "://" not in address:
        address = f"http://{address}"
    return address


def auth_mode(address: str, timeout: float = 5.0) -> str:
    """``check_auth(address).mode``."""
    return check_auth(address, timeout).mode


def _require_auth(address: str, insecure: bool | None, timeout: float) -> None:
    """Refuse (``insecure`` False) or warn about (True; None: a command that runs nothing) a
    head that does not show token authentication (``check_auth``); the message carries the real
    error or answer."""
    check = check_auth(address, timeout)
    if check.mode == "token":
        return
    what = check.describe()
    if insecure is False:
        fix = {"unreachable": "check the address and that the dashboard is up",
               "tls": "check the dashboard's certificate and the CA this machine trusts (REQUESTS_CA_BUNDLE)",
               "gated": "reach the Ray dashboard directly (e.g. kubectl port-forward)"}.get(
            check.mode, "start it with RAY_AUTH_MODE=token (SECURITY.md)")
        error = ClusterError if check.mode == "unreachable" else LrjobInputError
        raise error(f"--address {address}: the Ray head {what}; {fix}, or pass --insecure to submit anyway "
                    f"(anyone who reaches an open head can run code there)")
    sys.stderr.write(f"lrjob: warning: --address {address}: the Ray head {what}; anyone who reaches an open "
                     f"head can run code there" + (" (submitting anyway: --insecure)" if insecure else "") + "\n")


def client_for(address: str | None, timeout: float = 5.0, *, insecure: bool | None = None):
    """A ``JobSubmissionClient`` after a bounded check that the dashboard answers and one that it
    wants a token: without one, ``insecure=False`` refuses (``lrjob submit``), ``True`` or
    ``None`` (the commands that only read or stop jobs) print a warning."""
    address = _address(address)
    parsed = urlparse(address)
    require_listening(address, (parsed.hostname, parsed.port or 8265), "Ray dashboard",
                      "start one with `ray start --head --dashboard-host 0.0.0.0` or check the address", timeout)
    from ray.job_submission import JobSubmissionClient

    use_ray_token_if_present()
    # Before the client: its constructor already calls the Jobs API, and an answer such as a
    # proxy's redirect or 401 then surfaces as a bare authentication error.
    _require_auth(address, insecure, timeout)
    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - the client raises plain exceptions
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "authentication" in str(e).lower() or "unauthorized" in str(e).lower():
            raise LrjobInputError(f"--address {address}: the cluster wants its token ({first[:150]}); copy the "
                                  f"head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN") from None
        raise ClusterError(f"--address {address}: the Ray Jobs API did not answer ({first[:200]})") from e
    return client


def _job_info(client, job_id: str):
    try:
        return client.get_job_info(job_id)
    except Exception as e:  # noqa: BLE001
        raise LrjobInputError(f"{job_id}: no such job on this cluster ({str(e).splitlines()[0][:200]}); "
                              f"see `lrjob list`") from None


@dataclass(frozen=True)
class Submission:
    """Where and how ``submit`` sends a job: the dashboard ``address`` (None: $LRJOB_ADDRESS or
    $RAY_API_SERVER_ADDRESS), the run directory on the cluster, whether to follow the logs to the
    end, the submission id, and whether a head without token authentication is accepted."""

    address: str | None = None
    output: str | None = None
    wait: bool = False
    submission_id: str | None = None
    insecure: bool = False


def submit(spec, how: Submission) -> int:
    """Submit ``spec`` as a Ray job (entrypoint ``lrjob run``); with ``how.wait``, follow its
    logs to the end and return its exit code. A head without token authentication is refused
    (``LrjobInputError``) unless ``how.insecure``."""
    out = sys.stdout
    address, output, wait, submission_id = how.address, how.output, how.wait, how.submission_id
    client = client_for(address, insecure=how.insecure)
    job_id = submission_id or f"lrjob-{spec.name}-{utc_stamp()}"
    for key, value in (("data.path", spec.data.path), ("data.val_path", spec.data.val_path)):
        if value:
            # the spec travels, the data does not: the path must exist where the driver runs
            sys.stderr.write(f"lrjob: note: {key} {value} must exist at that path on the cluster's driver "
                             f"node (shared storage or the image)\n")
    run_dir = output or f"$HOME/lrjob-runs/{spec.name}-{utc_stamp()}"
    with tempfile.TemporaryDirectory(prefix="lrjob-submit-") as tmp:
        Path(tmp, "job.yaml").write_text(spec.to_yaml())
        out_arg = run_dir if output is None else shlex.quote(output)
        entrypoint = f"lrjob run job.yaml --workers {spec.workers} --output {out_arg}"
        deadline = time.monotonic() + 60
        while True:
            try:
                client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                                  runtime_env={"working_dir": tmp}, metadata={"lrjob_job": spec.name})
                break
            except Exception as e:  # noqa: BLE001
                # A head that just started answers "No available agent" until its job agent is up.
                if "No available agent" in str(e) and time.monotonic() < deadline:
                    time.sleep(2)
                    continue
                hint = ("; the head's job agent is not up: check the head's dashboard_agent.log (another Ray on "
                        "that machine may hold its port 52365: ray start --dashboard-agent-listen-port)"
                        if "No available agent" in str(e) else "")
                raise ClusterError(f"submit to {client.get_address()} failed: "
                                   f"{str(e).splitlines()[0][:300]}{hint}") from e
    out.write(f"submitted {job_id}\n  entrypoint: {entrypoint}\n"
              f"  follow:  lrjob logs {job_id} --follow --address {client.get_address()}\n"
              f"  status:  lrjob status {job_id} --address {client.get_address()}\n")
    out.flush()
    if not wait:
        return 0
    status = follow_logs(client, job_id, out)
    out.write(f"{job_id}: {status}\n")
    return 0 if status == "SUCCEEDED" else 1


def follow_logs(client, job_id: str, out=sys.stdout, poll: float = 1.0) -> str:
    """Print the job's log as it grows; return its final status."""
    seen = 0
    while True:
        status = str(_job_info(client, job_id).status)
        try:
            logs = client.get_job_logs(job_id)
        except Exception:  # noqa: BLE001 - not started yet
            logs = ""
        if len(logs) > seen:
            out.write(logs[seen:])
            out.flush()
            seen = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll)


def cmd_status(args) -> int:
    """``lrjob status ID``: print the job's status (and its message); returns 0."""
    client = client_for(args.address)
    info = _job_info(client, args.id)
    status = str(info.status)
    print(f"{args.id}: {status}" + (f" ({info.message})" if info.message else ""))
    return 0


def cmd_logs(args) -> int:
    """``lrjob logs ID``: print the job's logs (with ``--follow``, until it ends); returns 0."""
    client = client_for(args.address)
    _job_info(client, args.id)
    if args.follow:
        follow_logs(client, args.id)
    else:
        sys.stdout.write(client.get_job_logs(args.id))
    return 0


def cmd_stop(args) -> int:
    """``lrjob stop ID``: stop the job and wait up to ``--timeout`` s for a final status; returns 0
    once it has one, else 1."""
    client = client_for(args.address)
    _job_info(client, args.id)
    client.stop_job(args.id)
    deadline = time.time() + args.timeout
    status = str(_job_info(client, args.id).status)
    while status not in TERMINAL and time.time() < deadline:
        time.sleep(0.5)
        status = str(_job_info(client, args.id).status)
    print(f"{args.id}: {status}")
    return 0 if status in TERMINAL else 1


def cmd_list(args) -> int:
    """``lrjob list``: print the cluster's jobs, oldest first (id, status, start time, entrypoint);
    returns 0."""
    client = client_for(args.address)
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
    rows = [("ID", "STATUS", "STARTED", "ENTRYPOINT")]
    for j in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000)) if j.start_time else "-"
        rows.append((j.submission_id or j.job_id or "-", str(j.status), started, (j.entrypoint or "")[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def add_parsers(subs, make) -> None:
    """Register submit/status/logs/stop/list with the CLI (``make`` builds a subparser)."""
    s = make(subs, "submit", "submit a job to a Ray cluster (Ray Jobs API)")
    s.add_argument("job", nargs="?", help="job spec YAML")
    s.add_argument("--address", default=None, help="Ray dashboard, e.g. http://HEAD:8265 (or $LRJOB_ADDRESS)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field (repeatable)")
    s.add_argument("--workers", type=int, default=None, help="Horovod workers on the cluster (default: from the spec)")
    s.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (default: from the spec)")
    s.add_argument("--output", default=None,
                   help="run directory on the cluster (default: ~/lrjob-runs/<name>-<stamp> on the driver node)")
    s.add_argument("--id", dest="submission_id", default=None, help="submission id (default: lrjob-<name>-<stamp>)")
    s.add_argument("--wait", action="store_true", help="stream the logs until the job ends; exit 1 unless it succeeded")
    s.add_argument("--insecure", action="store_true",
                   help="submit even to a Ray head that runs without token authentication (refused by default)")
    for name, help_ in (("status", "show a submitted job's status"), ("logs", "print a submitted job's logs"),
                        ("stop", "stop a submitted job")):
        p = make(subs, name, help_)
        p.add_argument("id", help="submission id (printed by lrjob submit; see lrjob list)")
        p.add_argument("--address", default=None, help="Ray dashboard, e.g. http://HEAD:8265")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        if name == "stop":
            p.add_argument("--timeout", type=float, default=60, help="seconds to wait for STOPPED (default 60)")
    p = make(subs, "list", "list the jobs submitted to a Ray cluster")
    p.add_argument("--address", default=None, help="Ray dashboard, e.g. http://HEAD:8265")
