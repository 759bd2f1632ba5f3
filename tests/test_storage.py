"""Run directories on shared storage (launcher/storage.py, docs/design.md#storage), against a
real S3-compatible server (moto) on loopback that each test starts and stops (conftest.py
``s3_server``): a run to s3:// uploads its files, a killed driver's identical command resumes
from the uploaded checkpoint and ends bit-identical to an uninterrupted run, a checkpoint
whose upload did not finish is skipped, and bad URIs, a missing bucket, an unreachable
endpoint and a failing upload are one-line errors. The last tests stage runs of a ``file://``
store instead: the driver's same staging code, in-process, with no server to start."""
import fcntl
import io
import json
import os
import sys

import numpy as np
import pyarrow.fs as pfs
import pytest

from launcher.backends import InProcessBackend
from launcher.driver import DriverOptions, run_job
from launcher.report.progress import Reporter
from launcher.spec import load_spec
from launcher.storage import MANIFEST, StorageError
from lr_core.errors import LrjobInputError, SpecError

JOB = "jobs/binary_synthetic.yaml"
# momentum: the optimizer state travels through the upload too; a small set keeps each run short
BASE = ["resources.workers=0", "train.momentum=0.9", "data.options.n_train=300", "train.batch_size=50"]


def _spec(*extra):
    return load_spec(JOB, [*BASE, *extra])


def _files(fs, prefix="data/run") -> dict[str, int]:
    infos = fs.get_file_info(pfs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path[len(prefix) + 1:]: i.size for i in infos if i.type == pfs.FileType.File}


def _read(fs, key) -> bytes:
    with fs.open_input_stream(key) as f:
        return f.read()


def _npz(fs, key) -> dict:
    with np.load(io.BytesIO(_read(fs, key)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _cli(capsys, *args):
    from launcher.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _lrjob(*args, env):
    import procs

    return procs.run([sys.executable, "-m", "launcher.cli", *map(str, args)], timeout=300, env=env)


@pytest.mark.pictures
def test_a_run_to_s3_finishes_and_the_bucket_holds_its_files(s3_server, tmp_path):
    _, fs, query = s3_server
    uri = f"s3://data/run?{query}"
    done = run_job(_spec("train.epochs=3", "checkpoint.keep=2"), uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    files = _files(fs)
    for name in ("job.yaml", "env.json", "metrics.jsonl", "summary.json", "report.html", "curves.png",
                 "model/meta.json", "model/model-symbol.json", "model/model-0000.params"):
        assert name in files, name
    # pruned to checkpoint.keep there too; each complete checkpoint has its manifest
    assert sorted({k.split("/")[1] for k in files if k.startswith("checkpoints/")}) == ["epoch-0002", "epoch-0003"]
    for name in ("epoch-0002", "epoch-0003"):
        manifest = json.loads(_read(fs, f"data/run/checkpoints/{name}/{MANIFEST}"))
        assert sorted(manifest["files"]) == ["optimizer.npz", "params.npz", "state.json"]
        for f, want in manifest["files"].items():
            assert files[f"checkpoints/{name}/{f}"] == want["size"]
    summary = json.loads(_read(fs, "data/run/summary.json"))
    assert summary["status"] == "completed" and summary["epochs_done"] == 3
    assert summary["run_dir"] == uri
    assert len(_read(fs, "data/run/metrics.jsonl").decode().splitlines()) == 3
    params = _npz(fs, "data/run/checkpoints/epoch-0003/params.npz")
    for name in done.params:
        assert np.array_equal(params[name], done.params[name]), name
    assert not (tmp_path / "runs").exists(), "everything is uploaded: the staging copy is gone"


def test_resume_uri_without_a_job_continues_the_uploaded_run(s3_server, tmp_path, capsys):
    _, fs, query = s3_server
    uri = f"s3://data/run?{query}"
    code, _, err = _cli(capsys, "run", JOB, *(x for s in [*BASE, "train.epochs=2"] for x in ("--set", s)),
                        "--output", uri, "--runs-dir", tmp_path / "runs", "--quiet")
    assert code == 0, err
    code, out, err = _cli(capsys, "run", "--resume", uri, "--set", "train.epochs=4", "--json",
                          "--runs-dir", tmp_path / "runs")
    assert code == 0, err
    events = [json.loads(x) for x in out.splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [3, 4], "only the remaining epochs ran"
    full = run_job(_spec("train.epochs=4"), tmp_path / "full")
    params = _npz(fs, "data/run/checkpoints/epoch-0004/params.npz")
    for name in full.params:
        assert np.array_equal(params[name], full.params[name]), name
    assert json.loads(_read(fs, "data/run/env.json"))["resumed_from"] == "s3://data/run/checkpoints/epoch-0002"


@pytest.mark.slow  # two lrjob processes killed and run again against a live S3 server: the slow in-process tier
@pytest.mark.parametrize("fault,resumed_from,skipped", [
    # killed at the start of epoch 3: epoch-0002 is uploaded whole
    ({"at": "step", "epoch": 3, "step": 1, "rank": 0}, "epoch-0002", None),
    # killed after epoch-0003's files were uploaded, before its manifest: it is skipped
    ({"at": "upload", "epoch": 3, "stage": "files"}, "epoch-0002", "epoch-0003"),
])
def test_a_killed_driver_resumes_from_the_uploaded_checkpoint_and_matches(s3_server, tmp_path, fault,
                                                                          resumed_from, skipped):
    _, fs, query = s3_server
    uri = f"s3://data/run?{query}"
    cmd = ["run", JOB, "--output", uri, "--runs-dir", tmp_path / "runs", "--json",
           *(x for s in [*BASE, "train.epochs=4"] for x in ("--set", s))]
    env = dict(os.environ, LRJOB_FAULT=json.dumps({**fault, "action": "kill", "once": str(tmp_path / "fired")}))
    killed = _lrjob(*cmd, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((tmp_path / "fired.where").read_text())["at"] == fault["at"]
    files = _files(fs)
    if skipped:
        assert f"checkpoints/{skipped}/params.npz" in files and f"checkpoints/{skipped}/{MANIFEST}" not in files

    again = _lrjob(*cmd, env=env)  # the identical command; the marker exists, the fault does not fire again
    assert again.returncode == 0, again.stderr[-2000:]
    epochs = [e["epoch"] for e in map(json.loads, again.stdout.splitlines()) if e["event"] == "epoch"]
    assert epochs == [3, 4], "continued from epoch 2, not redone"
    warned = [x for x in again.stderr.splitlines() if "skipped" in x]
    if skipped:
        assert warned == [f"lrjob: warning: checkpoint s3://data/run/checkpoints/{skipped} skipped: "
                          f"no {MANIFEST} (its upload did not finish)"]
    else:
        assert warned == []
    full = run_job(_spec("train.epochs=4"), tmp_path / "full")
    params = _npz(fs, "data/run/checkpoints/epoch-0004/params.npz")
    for name in full.params:
        assert np.array_equal(params[name], full.params[name]), name
    lines = [json.loads(x) for x in _read(fs, "data/run/metrics.jsonl").decode().splitlines()]
    assert [m["val_loss"] for m in lines] == [m["val_loss"] for m in full.history]
    assert json.loads(_read(fs, "data/run/env.json"))["resumed_from"].endswith(resumed_from)
    assert json.loads(_read(fs, "data/run/summary.json"))["status"] == "completed"
    assert f"checkpoints/epoch-0003/{MANIFEST}" in _files(fs), "the skipped checkpoint was uploaded anew, whole"


def test_a_checkpoint_that_does_not_match_its_manifest_is_skipped(s3_server, tmp_path, capsys):
    _, fs, query = s3_server
    uri = f"s3://data/run?{query}"
    run_job(_spec("train.epochs=2"), uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    key = "data/run/checkpoints/epoch-0002/params.npz"
    blob = bytearray(_read(fs, key))
    blob[-30] ^= 0xFF  # the same size, other bytes: only the SHA-256 tells
    with fs.open_output_stream(key) as f:
        f.write(bytes(blob))
    capsys.readouterr()
    again = run_job(_spec("train.epochs=3"), uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    err = capsys.readouterr().err
    assert (f"lrjob: warning: checkpoint s3://data/run/checkpoints/epoch-0002 skipped: params.npz does not match "
            f"its {MANIFEST}") in err.splitlines()
    assert json.loads(_read(fs, "data/run/env.json"))["resumed_from"].endswith("epoch-0001")
    full = run_job(_spec("train.epochs=3"), tmp_path / "full")
    for name in full.params:
        assert np.array_equal(again.params[name], full.params[name]), name


@pytest.mark.parametrize("uri,want", [
    ("nope://host/run", "lrjob: error: --output nope://host/run: cannot open this URI (Unrecognized filesystem "
                        "type in URI: nope://host/run); use s3://bucket/path, gs://bucket/path or file:///path (a "
                        "server other than AWS: ?endpoint_override=host:port&scheme=http)"),
    ("s3://missing/run?{query}", "lrjob: error: --output s3://missing/run: bucket 'missing' does not exist; "
                                 "create it first (aws s3 mb s3://missing), or choose another bucket"),
    ("s3://data?{query}", "lrjob: error: --output s3://data: names no folder inside the bucket; add one, "
                          "e.g. s3://data/run"),
    ("s3://data/other?{query}", "lrjob: error: --output s3://data/other: exists, is not empty and holds no lrjob "
                                "run (no job.yaml, no checkpoints); choose a new path"),
    ("s3://data/run?endpoint_override=127.0.0.1:{dead}&scheme=http",
     "lrjob: error: --output s3://data/run: cannot reach the storage ("),
])
def test_bad_storage_is_one_line_before_anything_is_written(s3_server, tmp_path, capsys, uri, want):
    _, fs, query = s3_server
    with fs.open_output_stream("data/other/notes.txt") as f:
        f.write(b"not a run")
    import conftest

    uri = uri.format(query=query, dead=conftest._free_port())
    before = _files(fs, "data")
    code, out, err = _cli(capsys, "run", JOB, "--set", "train.epochs=1", "--workers", "0", "--output", uri,
                          "--runs-dir", tmp_path / "runs")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(want), err
    assert "Traceback" not in err
    assert _files(fs, "data") == before, "nothing written to the storage"
    assert not (tmp_path / "runs").exists(), "no staging copy left"


def test_a_uri_holding_another_jobs_run_is_refused_and_left_as_it_was(s3_server, tmp_path, capsys):
    _, fs, query = s3_server
    with fs.open_output_stream("data/run/job.yaml") as f:
        f.write(_spec("train.epochs=2", "train.seed=7").resolved().to_yaml().encode())
    before = {k: _read(fs, f"data/run/{k}") for k in _files(fs)}
    code, out, err = _cli(capsys, "run", JOB, *(x for s in [*BASE, "train.epochs=2"] for x in ("--set", s)),
                          "--output", f"s3://data/run?{query}", "--runs-dir", tmp_path / "runs")
    assert (code, out) == (2, "")
    assert err == ("lrjob: error: --output s3://data/run: holds a run of another job (its job.yaml differs in "
                   "train.seed); choose a new path\n")
    assert {k: _read(fs, f"data/run/{k}") for k in _files(fs)} == before
    assert not (tmp_path / "runs").exists(), "the staging copy is removed"


@pytest.mark.parametrize("holds", ["nothing", "job.yaml"])
def test_resume_of_a_uri_without_a_complete_checkpoint_is_one_line(s3_server, tmp_path, capsys, holds):
    _, fs, query = s3_server
    if holds == "job.yaml":  # a run killed before its first checkpoint was uploaded
        with fs.open_output_stream("data/run/job.yaml") as f:
            f.write(_spec("train.epochs=2").resolved().to_yaml().encode())
    code, out, err = _cli(capsys, "run", "--resume", f"s3://data/run?{query}", *(["--set", "train.epochs=2"]
                          if holds == "nothing" else []), JOB if holds == "nothing" else "--quiet",
                          "--runs-dir", tmp_path / "runs")
    assert (code, out) == (2, "")
    assert err == ("lrjob: error: --resume s3://data/run: no valid checkpoint in s3://data/run/checkpoints; " + (
        "start a new run\n" if holds == "nothing" else
        "run the job again with this URI as --output to start it over there\n"))  # a run stopped before
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("gone_after,failed_on", [
    (1, "checkpoints/epoch-0002"),  # during the run
    (3, "job.yaml"),                # the final upload of a completed run
])
def test_an_upload_failing_mid_run_fails_the_run_and_keeps_the_staging_copy_that_resume_uploads(
        s3_server, tmp_path, capsys, gone_after, failed_on):
    _, fs, query = s3_server
    endpoint = query.split("endpoint_override=")[1].split("&")[0]
    admin = pfs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_deletion=True)

    class BucketGone(Reporter):
        def epoch(self, m, epochs):
            super().epoch(m, epochs)
            if m["epoch"] == gone_after:
                admin.delete_dir("data")  # the bucket and all in it: the next upload fails

    with pytest.raises(StorageError) as err:
        run_job(_spec("train.epochs=3"), f"s3://data/run?{query}", reporter=BucketGone("silent"),
                options=DriverOptions(runs_dir=tmp_path / "runs"))
    (staging,) = (tmp_path / "runs" / ".staging").iterdir()
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"s3://data/run/{failed_on}: upload failed (")
    assert text.endswith(f"); nothing is lost: the run is in {staging}; once the storage answers, lrjob run "
                         f"--resume {staging} uploads it to s3://data/run and continues it")
    summary = json.loads((staging / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == text
    assert (staging / "checkpoints" / f"epoch-{gone_after + 1 if gone_after < 3 else 3:04d}" / "state.json").is_file()
    assert not (staging / ".lock").exists()
    # the command the message names, once the storage is back: the run ends there, whole
    fs.create_dir("data")
    if gone_after == 1:  # meanwhile the run went on from its URI: this copy is older, and refused
        with fs.open_output_stream(f"data/run/checkpoints/epoch-0009/{MANIFEST}") as f:
            f.write(b"{}")
        code, out, err = _cli(capsys, "run", "--resume", staging, "--quiet")
        assert (code, out) == (2, "")
        assert err == (f"lrjob: error: --resume {staging}: s3://data/run/checkpoints/epoch-0009 is newer than this "
                       f"copy's epoch-0002: the run went on from its storage; continue it with lrjob run --resume "
                       f"'s3://data/run?{query}'\n")
        fs.delete_dir("data/run")
        # another run at the URI: refused, nothing uploaded, and the copy stays
        with fs.open_output_stream("data/run/job.yaml") as f:
            f.write(b"name: another\n")
        code, out, err = _cli(capsys, "run", "--resume", staging, "--quiet")
        assert (code, out) == (2, "") and "holds another run" in err and err.count("\n") == 1, err
        assert _read(admin, "data/run/job.yaml") == b"name: another\n"
        assert (staging / "checkpoints" / "epoch-0002").is_dir()
        fs.delete_dir("data/run")
        # the copy locked by another process: refused before any work, and the copy stays
        fd = os.open(staging, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            code, out, err = _cli(capsys, "run", "--resume", staging, "--quiet")
        finally:
            os.close(fd)
        assert code == 2 and "another lrjob process" in err, err
        assert (staging / "checkpoints" / "epoch-0002").is_dir(), "a refused resume keeps the copy"
    code, out, err = _cli(capsys, "run", "--resume", staging, "--quiet")
    assert code == 0, err
    files = _files(admin)
    assert json.loads(_read(admin, "data/run/summary.json"))["status"] == "completed"
    assert {"model/meta.json", "report.html", f"checkpoints/epoch-0003/{MANIFEST}"} <= set(files)
    assert len(_read(admin, "data/run/metrics.jsonl").decode().splitlines()) == 3
    full = run_job(_spec("train.epochs=3"), tmp_path / "full")
    params = _npz(admin, "data/run/checkpoints/epoch-0003/params.npz")
    for name in full.params:
        assert np.array_equal(params[name], full.params[name]), name
    assert not staging.exists(), "all of it is uploaded: the staging copy is gone"


def test_an_interrupted_run_uploads_what_it_has_and_names_the_uri_to_resume(s3_server, tmp_path):
    _, fs, query = s3_server
    uri = f"s3://data/run?{query}"

    class CtrlCAfterEpoch2(Reporter):
        def epoch(self, m, epochs):
            super().epoch(m, epochs)
            if m["epoch"] == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as e:
        run_job(_spec("train.epochs=4"), uri, reporter=CtrlCAfterEpoch2("silent"),
                options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert e.value.resume == f"lrjob run --resume '{uri}'"
    summary = json.loads(_read(fs, "data/run/summary.json"))
    assert summary["status"] == "interrupted" and summary["resume"] == e.value.resume
    assert f"checkpoints/epoch-0002/{MANIFEST}" in _files(fs)
    assert not (tmp_path / "runs").exists(), "all of it is uploaded: the staging copy is gone"


def test_horovodrun_ranks_refuse_a_uri(capsys):
    code, out, err = _cli(capsys, "worker", JOB, "--output", "s3://user:secret@data/run?endpoint_override=h:1")
    assert (code, out) == (2, "")
    assert err == ("lrjob: error: --output s3://data/run?endpoint_override=h:1: a storage URI is not supported "
                   "under horovodrun (every rank reads the run directory); use a folder every rank sees, or lrjob "
                   "run\n")


def test_a_file_uri_is_a_storage_too(tmp_path):
    uri = f"file://{tmp_path}/store/run"
    run_job(_spec("train.epochs=1"), uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    store = tmp_path / "store" / "run"
    assert (store / "checkpoints" / "epoch-0001" / MANIFEST).is_file()
    assert json.loads((store / "summary.json").read_text())["status"] == "completed"
    assert not (tmp_path / "runs").exists()


def test_a_login_in_the_uri_is_written_nowhere(s3_server, tmp_path, capsys, monkeypatch):
    # the credentials in the URI itself (moto takes any), none in the environment
    _, fs, query = s3_server
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    secret = "Zq9SECRETzq9"
    args = ["run", JOB, "--set", "train.epochs=1", "--set", "data.options.n_train=100", "--workers", "0",
            "--output", f"s3://lrjob:{secret}@data/run?{query}", "--runs-dir", tmp_path / "runs"]
    monkeypatch.setattr(sys, "argv", ["lrjob", *map(str, args)])  # env.json records the command line
    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    assert secret not in out + err
    files = _files(fs)
    assert "env.json" in files and "summary.json" in files
    leaked = [k for k in files if secret.encode() in _read(fs, f"data/run/{k}")]
    assert leaked == [], f"the URI's secret is in {leaked}"
    env = json.loads(_read(fs, "data/run/env.json"))
    assert f"s3://data/run?{query}" in env["argv"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag", ["--output", "--resume"])
def test_a_uri_whose_secret_holds_a_slash_is_refused_without_showing_it(tmp_path, capsys, flag):
    # an AWS secret key may hold '/': such a login cannot be parsed, and the error must not print it
    uri = "s3://AKIDX:Zq9/SECRET+zq9@data/run?endpoint_override=127.0.0.1:9&scheme=http"
    code, out, err = _cli(capsys, "run", *([JOB] if flag == "--output" else []), "--workers", "0", flag, uri,
                          "--runs-dir", tmp_path / "runs")
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"lrjob: error: {flag} s3://data/run: cannot open this URI"), err
    assert "SECRET" not in err and "Zq9" not in err and "AKIDX" not in err, err
    assert not (tmp_path / "runs").exists()


def test_a_probe_object_left_over_by_a_killed_check_does_not_make_the_uri_other_and_is_removed(s3_server, tmp_path):
    import socket

    _, fs, query = s3_server
    gone = _gone_pid()
    with fs.open_output_stream("data/run/.lrjob-probe-0badf00d") as f:  # a driver killed between write and remove
        f.write(json.dumps({"host": socket.gethostname(), "pid": gone}).encode())
    done = run_job(_spec("train.epochs=1"), f"s3://data/run?{query}", options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert done.summary["status"] == "completed"
    assert json.loads(_read(fs, "data/run/summary.json"))["status"] == "completed"
    assert not [k for k in _files(fs) if "probe" in k], "the leftover probe is gone, and no new one is left"


def test_another_drivers_check_in_progress_keeps_its_probe_and_only_stale_probes_are_removed(tmp_path, monkeypatch):
    """Driver A is held by the fault hook between writing its probe and removing it (point
    ``probe``); driver B opens and stages the same URI meanwhile. B removes the probes of a
    dead process of this host and one older than PROBE_STALE_S, keeps A's and the fresh ones it
    cannot judge (another host's, an empty one); A's check then ends without an error."""
    import socket
    import time

    from launcher.storage import PROBE_STALE_S, open_remote

    store = tmp_path / "store" / "run"
    store.mkdir(parents=True)
    uri = f"file://{store}"
    gone = _gone_pid()

    def probe(name, owner, age=0.0):
        path = store / f".lrjob-probe-{name}"
        path.write_bytes(b"" if owner is None else json.dumps(owner).encode())
        if age:
            then = time.time() - age
            os.utime(path, (then, then))

    probe("dead0001", {"host": socket.gethostname(), "pid": gone})
    probe("01d00001", {"host": "elsewhere", "pid": 1}, age=PROBE_STALE_S + 60)
    probe("e15e0001", {"host": "elsewhere", "pid": 1})
    probe("e0e70001", None)
    left = set()

    def meanwhile():  # A's probe is written, A waits: B's own check (the fault fired once already)
        b = open_remote(uri, "--output")
        (tmp_path / "staging").mkdir()
        b.stage(tmp_path / "staging")
        left.update(p.name.removeprefix(".lrjob-probe-") for p in store.iterdir())

    outcome = _check_held_at_its_probe(uri, tmp_path, monkeypatch, meanwhile)
    assert not isinstance(outcome, BaseException), outcome
    assert {"e15e0001", "e0e70001"} < left and not {"dead0001", "01d00001"} & left, left
    assert len(left) == 3, left  # and A's own
    assert sorted(p.name for p in store.iterdir()) == [".lrjob-probe-e0e70001", ".lrjob-probe-e15e0001"]


def test_a_check_whose_probe_another_driver_removed_meanwhile_still_passes(tmp_path, monkeypatch):
    """A driver that cannot tell A's probe from a stale one (another PID namespace under the same
    host name) may remove it between A's write and A's removal: A's write succeeded, so A's check
    passes (point ``probe`` holds A there)."""
    store = tmp_path / "store" / "run"
    store.mkdir(parents=True)

    def meanwhile():
        (probe,) = store.iterdir()
        probe.unlink()

    outcome = _check_held_at_its_probe(f"file://{store}", tmp_path, monkeypatch, meanwhile)
    assert not isinstance(outcome, BaseException), outcome
    assert list(store.iterdir()) == []


def _check_held_at_its_probe(uri, tmp_path, monkeypatch, meanwhile):
    """Driver A's write check of ``uri``, held by the fault hook between writing its probe and
    removing it (point ``probe``) while ``meanwhile()`` runs; what A's ``open_remote`` returned
    or raised."""
    import threading

    from launcher.storage import open_remote
    from lr_core import faults

    fired, release = tmp_path / "fired", tmp_path / "release"
    monkeypatch.setenv("LRJOB_FAULT", "")
    faults.arm(json.dumps({"at": "probe", "stage": "written", "action": "wait", "until": str(release),
                           "once": str(fired), "timeout": 60}))
    outcome = {}

    def check_a():
        try:
            outcome["a"] = open_remote(uri, "--output")
        except BaseException as e:  # noqa: BLE001 - the test reads it
            outcome["a"] = e

    a = threading.Thread(target=check_a)
    a.start()
    try:
        while not os.path.exists(f"{fired}.where") and a.is_alive():  # A's probe is written, A waits
            a.join(0.01)
        assert a.is_alive(), outcome
        meanwhile()
    finally:
        release.touch()
        a.join(60)
        faults.arm(None)
    return outcome.get("a")


def _gone_pid() -> int:
    """A pid that no process has: one above the kernel's pid_max (an exited child's pid could be
    reused by the time the probe is judged)."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1


# ---------------------------------------------------------------------------- file:// runs, in-process and quick
# The driver's staging of a storage URI (Driver.__init__, docs/design.md "Storage") on a local
# store: the same RemoteRun code as s3://, without a server.

def _file_uri(tmp_path, monkeypatch):
    """An empty store folder and its ``file://`` URI; the working directory is ``tmp_path`` from here
    on (load the spec first), so a URI taken for a local path would land there, not in the checkout."""
    store = tmp_path / "store" / "run"
    store.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return store, f"file://{store}"


def test_a_file_uri_output_runs_in_a_staging_copy_under_the_runs_dir_that_goes_once_uploaded(tmp_path, monkeypatch):
    spec = _spec("train.epochs=1", "data.options.n_train=100")
    store, uri = _file_uri(tmp_path, monkeypatch)
    done = run_job(spec, uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert done.path.parent == tmp_path / "runs" / ".staging" and done.path.name.startswith(f"{spec.name}-")
    assert (store / "checkpoints" / "epoch-0001" / MANIFEST).is_file()
    summary = json.loads((store / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["run_dir"] == uri
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "the staging copy is gone, nothing else was made"


@pytest.mark.parametrize("flag", ["--output", "--resume"])
def test_a_file_uri_holding_other_files_is_refused_naming_its_flag(tmp_path, monkeypatch, flag):
    spec = _spec("train.epochs=1")
    store, uri = _file_uri(tmp_path, monkeypatch)
    (store / "notes.txt").write_text("mine")
    with pytest.raises(SpecError) as e:
        run_job(spec, **({"output": uri} if flag == "--output" else {"resume": uri}),
                options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert str(e.value) == (f"{flag} {uri}: exists, is not empty and holds no lrjob run (no job.yaml, "
                            f"no checkpoints); choose a new path")
    assert sorted(p.name for p in store.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_file_uri_resumed_before_its_first_checkpoint_was_uploaded_is_refused(tmp_path, monkeypatch):
    spec = _spec("train.epochs=1", "data.options.n_train=100")
    store, uri = _file_uri(tmp_path, monkeypatch)
    (store / "job.yaml").write_text(spec.resolved().to_yaml())  # a run killed before its first checkpoint
    with pytest.raises(SpecError) as e:
        run_job(spec, resume=uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert str(e.value) == (f"--resume {uri}: no valid checkpoint in {uri}/checkpoints; run the job again with "
                            f"this URI as --output to start it over there")
    assert sorted(p.name for p in store.iterdir()) == ["job.yaml"]
    assert not (tmp_path / "runs").exists()


def test_a_file_uri_runs_kept_staging_copy_is_resumed_there_and_uploaded(tmp_path, monkeypatch):
    """The upload of epoch 1's checkpoint fails (the fault hook's ``upload`` point raises): the run
    fails and keeps its staging copy, which records its URI. ``--resume STAGING`` is refused in one
    line while the storage cannot be written; once it can, it continues the run in that copy and
    uploads it to the URI, then removes the copy."""
    from lr_core import faults

    spec = _spec("train.epochs=2", "data.options.n_train=100")
    store, uri = _file_uri(tmp_path, monkeypatch)
    monkeypatch.setattr(faults, "ARMED", False)
    monkeypatch.setattr(faults, "_SPEC", None)
    monkeypatch.setenv("LRJOB_FAULT", "")
    faults.arm(json.dumps({"at": "upload", "epoch": 1, "stage": "files", "action": "raise"}))
    try:
        with pytest.raises(StorageError):
            run_job(spec, uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    finally:
        faults.arm(None)
    (staging,) = (tmp_path / "runs" / ".staging").iterdir()
    assert (staging / "checkpoints" / "epoch-0001" / "state.json").is_file()
    assert not (store / "checkpoints" / "epoch-0001" / MANIFEST).exists()
    # while the storage still cannot be written (a file where its folder was): one line, the copy stays
    store.rename(tmp_path / "store" / "away")
    store.write_text("not a folder")
    with pytest.raises(LrjobInputError) as e:
        run_job(spec, resume=staging, options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert str(e.value).startswith(f"--resume {uri}: cannot write there (") and "\n" not in str(e.value), e.value
    assert (staging / "checkpoints" / "epoch-0001" / "state.json").is_file()
    store.unlink()
    (tmp_path / "store" / "away").rename(store)
    done = run_job(spec, resume=staging, options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert [m["epoch"] for m in done.history] == [1, 2]
    summary = json.loads((store / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2 and summary["run_dir"] == uri
    for name in ("epoch-0001", "epoch-0002"):
        assert (store / "checkpoints" / name / MANIFEST).is_file(), name
    assert not staging.exists(), "all of it is uploaded: the staging copy is gone"


def test_a_json_stream_holds_the_failed_summary_when_the_final_upload_fails(tmp_path, monkeypatch):
    """--json: a completed run whose last upload fails ends failed, and its stream still gives
    that summary.json as a summary event (the staging copy's, which says why)."""
    from launcher.driver import Driver

    spec = _spec("train.epochs=1", "data.options.n_train=100")
    store, uri = _file_uri(tmp_path, monkeypatch)
    real = Driver._sync

    def failing(self, final=False):
        if final:
            raise StorageError("the store went away")
        return real(self, final)

    monkeypatch.setattr(Driver, "_sync", failing)
    out = io.StringIO()
    with pytest.raises(StorageError):
        run_job(spec, uri, reporter=Reporter("json", stream=out, err=io.StringIO()),
                options=DriverOptions(runs_dir=tmp_path / "runs"))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "epoch", "summary"]
    assert events[-1]["status"] == "failed" and events[-1]["error"] == "the store went away"


def test_a_uri_run_continued_on_another_worker_count_keeps_one_record(tmp_path, monkeypatch):
    """The record a continued run carries on (docs/design.md#failures-and-restarts) is downloaded
    with the checkpoints: before, a run at a URI began its record again at each command."""
    spec = _spec("train.epochs=1", "data.options.n_train=100")
    more = _spec("train.epochs=2", "data.options.n_train=100", "resources.workers=2")
    store, uri = _file_uri(tmp_path, monkeypatch)
    run_job(spec, uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    first, first_env = (json.loads((store / name).read_text()) for name in ("summary.json", "env.json"))
    run_job(more, resume=uri, options=DriverOptions(runs_dir=tmp_path / "runs",
                                                    backend_factory=lambda: InProcessBackend(more.loop_config(),
                                                                                             more.load_data())))
    summary, env = (json.loads((store / name).read_text()) for name in ("summary.json", "env.json"))
    assert summary["resizes"] == [{"epoch": 2, "from": 0, "to": 2, "why": "continued with 2 workers"}]
    assert summary["wall_seconds"] > first["wall_seconds"]
    assert [e["started"] for e in env["earlier"]] == [first_env["started"]]


def test_a_uri_runs_record_is_read_whole_and_only_beside_a_job_yaml(tmp_path, monkeypatch):
    """The record is read as a local run's is (up to 16 MiB: 900 failures are kept, not cut at
    1 MiB and lost), and only where a run is: a folder without job.yaml, holding a summary.json
    and an unfinished checkpoint upload, is started over, not refused as holding no run."""
    spec = _spec("train.epochs=1", "data.options.n_train=100")
    more = _spec("train.epochs=2", "data.options.n_train=100")
    store, uri = _file_uri(tmp_path, monkeypatch)
    run_job(spec, uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    summary = json.loads((store / "summary.json").read_text())
    failures = [{"epoch": 1, "rank": 1, "node": "node-b", "error": "x" * 1200} for _ in range(900)]
    (store / "summary.json").write_text(json.dumps({**summary, "failures": failures}))
    assert (store / "summary.json").stat().st_size > 1 << 20
    run_job(more, resume=uri, options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert len(json.loads((store / "summary.json").read_text())["failures"]) == 900

    other = tmp_path / "store" / "other"
    (other / "checkpoints" / "epoch-0001").mkdir(parents=True)
    (other / "checkpoints" / "epoch-0001" / "params.npz").write_bytes(b"cut short")  # no manifest.json
    (other / "summary.json").write_text(json.dumps(summary))
    done = run_job(spec, f"file://{other}", options=DriverOptions(runs_dir=tmp_path / "runs"))
    assert done.summary["status"] == "completed" and (other / "job.yaml").is_file()
