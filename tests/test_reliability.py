"""Faults injected into real processes: killed workers, killed drivers, Ctrl-C,
divergence, resume. Faults land at exact moments through ``LRJOB_FAULT``
(``lr_core/faults.py``: "kill rank 1 before step 5 of epoch 3", "kill the driver
between the checkpoint's temporary write and its rename"), never by sleeping."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import procs
import psutil
import pytest

from launcher.rundir import latest_checkpoint, list_checkpoints, load_checkpoint
from launcher.driver import run_job
from launcher.spec import load_spec
from lr_core.errors import DivergenceError, SpecError

ROOT = Path(__file__).resolve().parent.parent
LRJOB = [sys.executable, "-m", "launcher.cli"]
# ~250 steps per epoch: a worker killed at a step is killed in the middle of an epoch.
KILL_JOB = ["jobs/binary_synthetic.yaml", "--set", "train.batch_size=4", "--set", "train.epochs=5"]


def _env(**fault):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    if fault:
        env["LRJOB_FAULT"] = json.dumps(fault)
    return env


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _fault_report(marker: Path, timeout: float = 120) -> dict:
    """Where an armed fault fired (``<once>.where``: pid and place), once it has."""
    where = Path(f"{marker}.where")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if where.is_file() and where.read_text().endswith("}"):
            return json.loads(where.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the fault {marker} never fired")


_STARTED: list[subprocess.Popen] = []


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _stop_what_the_test_started():
    yield
    while _STARTED:
        procs.kill_tree(_STARTED.pop())


def _address(ray_session) -> list[str]:
    """``--address`` of the session's Ray: a run that joins it starts no Ray of its own (the
    Ray start and stop cost more than these short runs train); its actors, the workers that
    faults kill or stop, are its own and end with it."""
    return ["--address", ray_session.get_runtime_context().gcs_address]


def _gone(pids, timeout: float = 30) -> bool:
    """Whether every process of ``pids`` has ended (Ray kills a finished run's actors
    asynchronously), waiting up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


class _Run:
    """`lrjob run --json` in a subprocess, its events read as they come."""

    def __init__(self, *args, env=None):
        # a session of its own: the autouse fixture below stops what a failed test left running
        # SIGINT as at a terminal: a shell without job control starts background commands
        # with SIGINT ignored, and Python then never raises KeyboardInterrupt
        self.proc = subprocess.Popen([*LRJOB, "run", *args, "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env or _env(), start_new_session=True,
                                     preexec_fn=_default_sigint)
        _STARTED.append(self.proc)
        self.events, self.stderr = [], ""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        self._e = threading.Thread(target=self._read_err, daemon=True)
        self._e.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def wait_for(self, pred, timeout=180):
        t0 = time.time()
        while time.time() - t0 < timeout:
            for e in list(self.events):
                if pred(e):
                    return e
            if self.proc.poll() is not None and not any(pred(e) for e in self.events):
                raise AssertionError(f"lrjob exited {self.proc.returncode} first: {self.stderr[-2000:]}")
            time.sleep(0.05)
        raise AssertionError("timed out waiting for an event")

    def finish(self, timeout=300):
        rc = self.proc.wait(timeout)
        self._t.join(5)
        self._e.join(5)
        return rc

    def epochs(self) -> list[int]:
        return [e["epoch"] for e in self.events if e["event"] == "epoch"]


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    spec = load_spec(KILL_JOB[0], ["resources.workers=0", "train.batch_size=4", "train.epochs=5"])
    return run_job(spec, output=tmp_path_factory.mktemp("kill-ref") / "ref")


def _assert_params_match(run_dir: Path, reference, tol=1e-4):
    ckpt = latest_checkpoint(run_dir)
    assert ckpt["epochs_done"] == 5
    for name, value in reference.params.items():
        assert np.max(np.abs(ckpt["params"][name] - value)) <= tol, name


@pytest.mark.distributed
def test_killed_worker_is_restarted_from_the_last_checkpoint(ray_session, tmp_path, kill_reference):
    out, marker = tmp_path / "run", tmp_path / "fault"
    # rank 1 dies before step 5 of epoch 3; the restarted group does not die again (once)
    run = _Run(*KILL_JOB, "--workers", "2", "--output", str(out), "--set", "failure.max_failures=1",
               *_address(ray_session),
               env=_env(at="step", epoch=3, step=5, rank=1, action="kill", once=str(marker)))
    start = run.wait_for(lambda e: e["event"] == "start")
    assert run.finish() == 0, run.stderr
    victim = _fault_report(marker)["pid"]
    assert victim == start["placement"][1]["pid"]
    said = " ".join(e["text"] for e in run.events if e["event"] == "message")
    assert "rank 1" in said and "restart 1/1" in said and "resume from epoch 2" in said, said
    # epochs 1-2 reported once; epoch 3 was lost with the worker and run again
    assert run.epochs() == [1, 2, 3, 4, 5]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 5
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    _assert_params_match(out, kill_reference)
    assert _gone([victim])


@pytest.mark.distributed
def test_killed_worker_without_restarts_fails_then_resume_finishes(ray_session, tmp_path, kill_reference):
    out, marker = tmp_path / "run", tmp_path / "fault"
    run = _Run(*KILL_JOB, "--workers", "2", "--output", str(out), *_address(ray_session),
               env=_env(at="step", epoch=3, step=5, rank=0, action="kill", once=str(marker)))
    start = run.wait_for(lambda e: e["event"] == "start")
    pids = [p["pid"] for p in start["placement"]]
    assert run.finish() == 1
    assert _fault_report(marker)["pid"] == pids[0]
    err = run.stderr
    assert "rank 0" in err and "last completed epoch 2" in err, err
    assert f"lrjob run --resume {out}" in err, err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_done"] == 2
    assert _gone(pids), [p for p in pids if _alive(p)]
    resumed = _Run("--resume", str(out), *_address(ray_session))
    assert resumed.finish() == 0, resumed.stderr
    assert resumed.epochs() == [3, 4, 5], "the resumed run trains only the epochs that remain"
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    _assert_params_match(out, kill_reference)


def _run_tree(proc: subprocess.Popen) -> set[int]:
    """The pids of a process and all of its descendants (Ray's head processes included)."""
    try:
        root = psutil.Process(proc.pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


@pytest.mark.distributed
@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
                         ids=["ctrl-c", "sigterm", "sigterm-to-its-group"])
def test_sigint_or_sigterm_stops_workers_and_ray(tmp_path, sig, to_group):
    """The signal to the driver, or SIGTERM to its whole process group, as ``timeout`` and
    ``kill -TERM -- -PGID`` send it: the run is interrupted with its checkpoint and resume command,
    and its Ray stops. Before, a group's SIGTERM also killed the embedded Ray's GCS and raylet:
    the driver's clean-up waited 60 s for the GCS, then Ray ended it with ``summary.json``
    still "running" and no resume command."""
    out = tmp_path / "run"
    run = _Run("jobs/binary_synthetic.yaml", "--set", "train.batch_size=2", "--set", "train.epochs=50",
               "--workers", "2", "--output", str(out))
    start = run.wait_for(lambda e: e["event"] == "start")
    pids = {p["pid"] for p in start["placement"]}
    run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] == 1)
    started = _run_tree(run.proc)  # this run's own Ray: gcs_server, raylet, workers
    names = {psutil.Process(p).name() for p in started if _alive(p)}
    assert pids <= started and any("raylet" in n for n in names), names
    if to_group:
        os.killpg(run.proc.pid, sig)  # the run leads its own group (_Run): only its own processes get it
    else:
        run.proc.send_signal(sig)
    assert run.finish(timeout=300) == 130, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert f"continue with: lrjob run --resume {out}" in run.stderr, run.stderr
    assert list_checkpoints(out), "the last checkpoint is kept"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.5)
    left = {p: psutil.Process(p).name() for p in started if _alive(p)}
    assert not left, f"the run's processes outlived it: {left}"


def test_a_start_that_is_stopped_kills_what_lost_its_parent_through_its_group(tmp_path):
    """``_stop_started`` after a Ctrl-C inside ``ray.init``: a process the start made whose parent
    was ended first (Ray's own clean-up can end the raylet before its agents) is no longer in the
    tree of this process's children, but still in the group of the daemon that started it."""
    from launcher.backends.cluster import _children, _stop_started

    before = _children()
    pid_file = tmp_path / "grandchild"
    daemon = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "os._exit(0)\n")], process_group=0)
    _STARTED.append(daemon)
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) or _alive(daemon.pid):
        assert time.monotonic() < deadline, "the daemon did not start its child and end"
        time.sleep(0.02)
    orphan = int(pid_file.read_text())
    assert _alive(orphan) and psutil.Process(orphan).ppid() != os.getpid()
    try:
        _stop_started(before)
        deadline = time.monotonic() + 10
        while _alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(orphan), "the daemon's child outlived the stopped start"
    finally:
        if _alive(orphan):
            os.kill(orphan, signal.SIGKILL)


def test_the_daemons_own_groups_patch_is_undone_by_the_last_use_out():
    """Nested or overlapping uses (another thread's embedded Ray): Ray's own class is back once the
    last one ends, also after an error inside."""
    import ray._private.services as services

    from launcher.backends.cluster import daemons_in_groups_of_their_own

    ray_own = services.ConsolePopen
    first, second = daemons_in_groups_of_their_own(), daemons_in_groups_of_their_own()
    first.__enter__()
    patched = services.ConsolePopen
    assert patched is not ray_own and issubclass(patched, ray_own)
    second.__enter__()
    first.__exit__(None, None, None)  # out of order: the other use is still inside
    assert services.ConsolePopen is patched
    second.__exit__(None, None, None)
    assert services.ConsolePopen is ray_own
    with pytest.raises(RuntimeError):
        with daemons_in_groups_of_their_own():
            raise RuntimeError("ray.init failed")
    assert services.ConsolePopen is ray_own


@pytest.mark.distributed
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_ctrl_c_while_ray_starts_leaves_nothing_running(tmp_path, attempt):
    """Ctrl-C at a terminal (SIGINT to the whole process group) as soon as the run's raylet is up,
    inside ``ray.init``: the run exits 130 and no process of its session stays. Before, Ray's
    dashboard and runtime-env agents stayed up for a minute or more when the raylet had started
    them (about half the attempts here: three of them)."""
    run = _Run("jobs/binary_synthetic.yaml", "--set", "train.epochs=50", "--workers", "2",
               "--output", str(tmp_path / "run"))
    deadline = time.monotonic() + 120
    while not any("raylet" in psutil.Process(p).name() for p in _run_tree(run.proc) if _alive(p)):
        assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr
        time.sleep(0.02)
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.finish(timeout=120) in (130, -signal.SIGSEGV), run.stderr  # Ray's IO thread may crash the exit

    def session():  # the run's session: its processes, and whatever they started
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == run.proc.pid and _alive(proc.pid):
                    found.append(proc.name())
            except (OSError, psutil.Error):
                continue
        return found
    deadline = time.monotonic() + 10
    while session() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session() == [], "still running after the run exited"


def test_sigterm_on_in_process_run_marks_interrupted(tmp_path):
    out = tmp_path / "run"
    run = _Run("jobs/binary_synthetic.yaml", "--set", "train.epochs=2000", "--workers", "0", "--output", str(out))
    run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] >= 2)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=300) == 130
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def test_a_second_ctrl_c_during_cleanup_exits_at_once(tmp_path):
    """The driver stops itself where its clean-up begins after a first Ctrl-C; a second
    Ctrl-C, delivered when it continues, ends the process there: no more clean-up, no
    summary rewritten, no message."""
    out, marker = tmp_path / "run", tmp_path / "fault"
    run = _Run("jobs/binary_synthetic.yaml", "--set", "train.epochs=2000", "--workers", "0", "--output", str(out),
               env=_env(at="cleanup", status="interrupted", action="stop", once=str(marker)))
    try:
        run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] >= 2)
        run.proc.send_signal(signal.SIGINT)
        assert _fault_report(marker)["pid"] == run.proc.pid
        proc = psutil.Process(run.proc.pid)
        deadline = time.monotonic() + 60
        while proc.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.status() == psutil.STATUS_STOPPED
        run.proc.send_signal(signal.SIGINT)  # pending until the process continues
        run.proc.send_signal(signal.SIGCONT)
        assert run.finish(timeout=300) == 130
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert "interrupted" not in run.stderr, run.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "running"


def test_sigint_on_in_process_run_finishes_the_cleanup(tmp_path):
    """The same run with a single Ctrl-C: the clean-up runs to the end (the test above
    differs only by its second Ctrl-C)."""
    out = tmp_path / "run"
    run = _Run("jobs/binary_synthetic.yaml", "--set", "train.epochs=2000", "--workers", "0", "--output", str(out))
    run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] >= 2)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=300) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    import re

    said = re.search(r"lrjob: interrupted; checkpoint (epoch-\d+) is kept; continue with: (.+)", run.stderr)
    assert said, run.stderr
    assert said.group(1) in [p.name for p in list_checkpoints(out)] and said.group(2) == summary["resume"]


def test_resume_is_bit_identical_in_process(tmp_path):
    full = run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.epochs=6"]),
                   output=tmp_path / "full")
    run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.epochs=3"]),
            output=tmp_path / "part")
    resumed = run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.epochs=6"]),
                      resume=tmp_path / "part")
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name
    assert [m["val_loss"] for m in full.history] == [m["val_loss"] for m in resumed.history]


@pytest.mark.parametrize("optimizer", [
    ["train.momentum=0.9", "train.learning_rate=0.05"],
    ["train.optimizer=adam", "train.learning_rate=0.01", "train.weight_decay=0.001"],
], ids=["sgd-momentum", "adam-weight-decay"])
def test_resume_with_optimizer_state_is_bit_identical(tmp_path, optimizer):
    o = ["resources.workers=0", *optimizer]
    full = run_job(load_spec("jobs/digits_softmax.yaml", o + ["train.epochs=4"]), output=tmp_path / "full")
    run_job(load_spec("jobs/digits_softmax.yaml", o + ["train.epochs=2"]), output=tmp_path / "part")
    resumed = run_job(load_spec("jobs/digits_softmax.yaml", o + ["train.epochs=4"]), resume=tmp_path / "part")
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name


def test_resume_refuses_an_unsafe_change(tmp_path):
    run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.epochs=2"]),
            output=tmp_path / "part")
    with pytest.raises(SpecError, match="train.learning_rate"):
        run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.learning_rate=0.5"]),
                resume=tmp_path / "part")


def test_divergence_names_epoch_and_step(tmp_path):
    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0", "model.hidden=[8]", "train.learning_rate=1000"])
    with pytest.raises(DivergenceError, match=r"at epoch 1, step \d+ of \d+; lower train.learning_rate"):
        run_job(spec, output=tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and "learning_rate" in summary["error"]


TORN_JOB = ["jobs/binary_synthetic.yaml", "--workers", "0", "--set", "train.epochs=5",
            "--set", "checkpoint.keep=2"]


@pytest.fixture(scope="module")
def torn_reference(tmp_path_factory):
    spec = load_spec(TORN_JOB[0], ["resources.workers=0", "train.epochs=5", "checkpoint.keep=2"])
    return run_job(spec, output=tmp_path_factory.mktemp("torn-ref") / "ref")


# each kills a lrjob process at a point and runs it again (8 s): the slow in-process tier of make test
@pytest.mark.slow
@pytest.mark.parametrize("fault,newest,printed", [
    ({"at": "checkpoint", "epoch": 3, "stage": "params"}, 2, 2),    # inside the temporary write
    ({"at": "checkpoint", "epoch": 3, "stage": "written"}, 2, 2),   # written, not yet renamed
    ({"at": "checkpoint", "epoch": 3, "stage": "renamed"}, 3, 2),   # in place, not yet pruned or printed
    ({"at": "step", "epoch": 4, "step": 50, "rank": 0}, 3, 3),      # in the middle of an epoch
], ids=["in-temp-write", "before-rename", "before-prune", "mid-epoch"])
def test_killing_the_driver_never_leaves_a_torn_checkpoint(tmp_path, torn_reference, fault, newest, printed):
    """SIGKILL the in-process driver at an exact moment of the checkpoint protocol: every
    visible checkpoint is whole, the newest is the one predicted, and resume runs only
    the remaining epochs to the uninterrupted result, exactly."""
    out = tmp_path / "run"
    run = _Run(*TORN_JOB, "--output", str(out), env=_env(**fault, action="kill"))
    assert run.finish() == -signal.SIGKILL, run.stderr
    assert run.epochs() == list(range(1, printed + 1)), "a printed epoch is a saved epoch"
    visible = sorted(p for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    for ckpt in visible:  # the old or the new checkpoint, never a torn one
        assert ckpt.is_dir() and sorted(f.name for f in ckpt.iterdir()) == [
            "optimizer.npz", "params.npz", "state.json"], ckpt
        load_checkpoint(ckpt)
    assert [p.name for p in visible][-1] == f"epoch-{newest:04d}"
    assert latest_checkpoint(out)["epochs_done"] == newest

    resumed = _Run("--resume", str(out))
    assert resumed.finish() == 0, resumed.stderr
    assert resumed.epochs() == list(range(newest + 1, 6))
    assert sorted(p.name for p in list_checkpoints(out)) == ["epoch-0004", "epoch-0005"]
    final = latest_checkpoint(out)
    assert final["epochs_done"] == 5
    for name, value in torn_reference.params.items():
        assert np.array_equal(final["params"][name], value), name
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [m["val_loss"] for m in metrics] == [m["val_loss"] for m in torn_reference.history]


@pytest.mark.slow  # a lrjob process killed and run again (8 s): the slow in-process tier of make test
def test_killed_while_replacing_a_damaged_checkpoint_resume_still_reaches_the_result(tmp_path, torn_reference):
    """A damaged epoch-0003 is skipped on resume and written again; a crash between
    moving the damaged one aside and renaming the new one in leaves epoch-0002 as the
    newest whole checkpoint, and the next resume still ends exactly at the reference."""
    out = tmp_path / "run"
    first = _Run(*TORN_JOB[:-2], "--set", "train.epochs=3", "--set", "checkpoint.keep=2", "--output", str(out))
    assert first.finish() == 0, first.stderr
    (out / "checkpoints" / "epoch-0003" / "params.npz").write_bytes(b"PK\x03\x04 torn")
    assert latest_checkpoint(out)["epochs_done"] == 2

    crashed = _Run("--resume", str(out), "--set", "train.epochs=5",
                   env=_env(at="checkpoint", epoch=3, stage="swapping", action="kill"))
    assert crashed.finish() == -signal.SIGKILL, crashed.stderr
    visible = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    assert visible == ["epoch-0002"] and latest_checkpoint(out)["epochs_done"] == 2

    resumed = _Run("--resume", str(out), "--set", "train.epochs=5")
    assert resumed.finish() == 0, resumed.stderr
    assert resumed.epochs() == [3, 4, 5]
    final = latest_checkpoint(out)
    for name, value in torn_reference.params.items():
        assert np.array_equal(final["params"][name], value), name


def test_a_malformed_fault_is_one_line_before_anything_is_written(tmp_path):
    """(Each malformed form and its message: tests/test_faults.py.)"""
    value, message = '{"at": "step", "stp": 3, "action": "kill"}', "point 'step' reports epoch, rank, step, not stp"
    env = dict(_env(), LRJOB_FAULT=value)
    r = subprocess.run([*LRJOB, "run", "jobs/binary_synthetic.yaml", "--workers", "0", "--output",
                        str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
    helped = subprocess.run([*LRJOB, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert helped.returncode == 0, "a command that never trains does not read LRJOB_FAULT"


@pytest.mark.distributed
def test_hung_worker_is_detected_within_the_timeout_and_restarted(ray_session, tmp_path, kill_reference):
    """Rank 1 stops itself (SIGSTOP: alive to Ray, silent to Horovod) before step 5 of
    epoch 3: the epoch timeout fires, the group is replaced, and the run still finishes
    with the reference's parameters."""
    out, marker = tmp_path / "run", tmp_path / "fault"
    run = _Run(*KILL_JOB, "--workers", "2", "--output", str(out), "--set", "failure.max_failures=1",
               "--set", "failure.epoch_timeout_s=8", *_address(ray_session),
               env=_env(at="step", epoch=3, step=5, rank=1, action="stop", once=str(marker)))
    victim = None
    try:
        victim = _fault_report(marker)["pid"]
        run.wait_for(lambda e: e["event"] == "message" and "restart 1/1" in e["text"], timeout=120)
        assert run.finish() == 0, run.stderr
    finally:
        if victim:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if run.proc.poll() is None:
            run.proc.kill()
    said = " ".join(e["text"] for e in run.events if e["event"] == "message")
    assert "made no progress in epoch 3 for 8 s" in said, said
    assert run.epochs() == [1, 2, 3, 4, 5]
    _assert_params_match(out, kill_reference)


@pytest.mark.distributed
def test_a_hang_is_blamed_on_the_rank_that_stopped_first(ray_session, tmp_path):
    """Rank 1 stops itself before step 5 of epoch 1 while rank 0 waits for it in the allreduce:
    both are busy when the epoch timeout fires, and the error and the summary name rank 1 (the
    lowest busy rank, 0, would be wrong)."""
    out, marker = tmp_path / "run", tmp_path / "fault"
    run = _Run(*KILL_JOB, "--workers", "2", "--output", str(out), "--set", "failure.epoch_timeout_s=8",
               *_address(ray_session),
               env=_env(at="step", epoch=1, step=5, rank=1, action="stop", once=str(marker)))
    victim = None
    try:
        victim = _fault_report(marker)["pid"]
        rc = run.finish()
    finally:
        if victim:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
    start = next(e for e in run.events if e["event"] == "start")
    assert victim == start["placement"][1]["pid"]
    assert rc == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "rank 1 on" in last and "made no progress in epoch 1 for 8 s" in last, last
    assert "(hung: silent for" in last and "last heard at step" in last, last
    assert "Traceback" not in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "rank 1 on" in summary["error"], summary
    assert [(f["epoch"], f["rank"]) for f in summary["failures"]] == [(1, 1)], summary["failures"]
