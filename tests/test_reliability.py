"""Faults injected into real processes: killed workers, killed drivers, Ctrl-C,
divergence, resume. No special code path in the trainer: the tests send signals."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from launcher.rundir import latest_checkpoint, list_checkpoints
from launcher.runner import run_job
from launcher.spec import load_spec
from lr_core.errors import DivergenceError, SpecError

ROOT = Path(__file__).resolve().parent.parent
LRJOB = str(Path(sys.executable).parent / "lrjob")
# ~250 steps per epoch: long enough to kill a worker in the middle of one.
KILL_JOB = ["jobs/binary_synthetic.yaml", "--set", "train.batch_size=4", "--set", "train.epochs=5"]


def _env():
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


class _Run:
    """`lrjob run --json` in a subprocess, its events read as they come."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([LRJOB, "run", *args, "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=_env())
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
def test_killed_worker_is_restarted_from_the_last_checkpoint(tmp_path, kill_reference):
    out = tmp_path / "run"
    run = _Run(*KILL_JOB, "--workers", "2", "--output", str(out), "--set", "failure.max_failures=1")
    start = run.wait_for(lambda e: e["event"] == "start")
    victim = start["placement"][1]["pid"]
    run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] == 2)
    time.sleep(0.3)  # into epoch 3
    os.kill(victim, signal.SIGKILL)
    assert run.finish() == 0, run.stderr
    said = " ".join(e["text"] for e in run.events if e["event"] == "message")
    assert "rank 1" in said and "restart 1/1" in said, said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 5
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5]
    _assert_params_match(out, kill_reference)
    assert not _alive(victim)


@pytest.mark.distributed
def test_killed_worker_without_restarts_fails_then_resume_finishes(tmp_path, kill_reference):
    out = tmp_path / "run"
    run = _Run(*KILL_JOB, "--workers", "2", "--output", str(out))
    start = run.wait_for(lambda e: e["event"] == "start")
    pids = [p["pid"] for p in start["placement"]]
    run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] == 2)
    time.sleep(0.3)
    os.kill(pids[0], signal.SIGKILL)
    assert run.finish() == 1
    err = run.stderr
    assert "rank 0" in err and "last completed epoch" in err, err
    assert f"lrjob run --resume {out}" in err, err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_done"] >= 2
    assert not any(_alive(p) for p in pids)
    r = subprocess.run([LRJOB, "run", "--resume", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    _assert_params_match(out, kill_reference)


@pytest.mark.distributed
def test_sigint_stops_workers_and_ray(tmp_path):
    def ray_processes():
        out = subprocess.run(["pgrep", "-f", "gcs_server|raylet"], capture_output=True, text=True).stdout
        return set(out.split())

    before = ray_processes()
    out = tmp_path / "run"
    run = _Run("jobs/binary_synthetic.yaml", "--set", "train.batch_size=2", "--set", "train.epochs=50",
               "--workers", "2", "--output", str(out))
    start = run.wait_for(lambda e: e["event"] == "start")
    pids = [p["pid"] for p in start["placement"]]
    run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] == 1)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=60) == 130, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert list_checkpoints(out), "the last checkpoint is kept"
    deadline = time.time() + 20
    while time.time() < deadline and (any(_alive(p) for p in pids) or ray_processes() - before):
        time.sleep(0.5)
    assert not any(_alive(p) for p in pids)
    assert not (ray_processes() - before), "the run's Ray processes outlived it"


def test_sigterm_on_in_process_run_marks_interrupted(tmp_path):
    out = tmp_path / "run"
    run = _Run("jobs/binary_synthetic.yaml", "--set", "train.epochs=2000", "--workers", "0", "--output", str(out))
    run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] >= 2)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == 130
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


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
    spec = load_spec("jobs/digits_softmax.yaml", ["resources.workers=0", "train.learning_rate=1e38"])
    with pytest.raises(DivergenceError, match=r"at epoch 1, step \d+ of \d+; lower train.learning_rate"):
        run_job(spec, output=tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and "learning_rate" in summary["error"]


def test_killing_the_driver_never_leaves_a_torn_checkpoint(tmp_path):
    """SIGKILL the in-process driver at several moments while it writes a checkpoint
    every epoch; the newest checkpoint always reads back and resume gives the
    uninterrupted result exactly."""
    args = ["jobs/binary_synthetic.yaml", "--workers", "0", "--set", "train.epochs=60",
            "--set", "checkpoint.keep=2"]
    reference = run_job(load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.epochs=60"]),
                        output=tmp_path / "ref")
    for i, delay in enumerate([0.15, 0.4, 0.8]):
        out = tmp_path / f"run{i}"
        run = _Run(*args, "--output", str(out))
        run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] >= 1)
        time.sleep(delay)
        run.proc.send_signal(signal.SIGKILL)
        run.finish()
        ckpt = latest_checkpoint(out)
        assert ckpt is not None and 1 <= ckpt["epochs_done"] < 60, "the kill must land mid-run"
        for stale in (out / "checkpoints").iterdir():  # leftovers are hidden temp dirs only
            assert stale.name.startswith(("epoch-", ".tmp-", ".old-")), stale
        r = subprocess.run([LRJOB, "run", "--resume", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=_env())
        assert r.returncode == 0, r.stderr
        final = latest_checkpoint(out)
        for name, value in reference.params.items():
            assert np.array_equal(final["params"][name], value), name


@pytest.mark.distributed
def test_hung_worker_is_detected_within_the_timeout_and_restarted(tmp_path, kill_reference):
    """SIGSTOP freezes rank 1 (alive to Ray, silent to Horovod): the epoch timeout fires,
    the group is replaced, and the run still finishes with the reference's parameters."""
    out = tmp_path / "run"
    run = _Run(*KILL_JOB, "--workers", "2", "--output", str(out), "--set", "failure.max_failures=1",
               "--set", "failure.epoch_timeout_s=15")
    start = run.wait_for(lambda e: e["event"] == "start")
    victim = start["placement"][1]["pid"]
    run.wait_for(lambda e: e["event"] == "epoch" and e["epoch"] == 2)
    os.kill(victim, signal.SIGSTOP)
    try:
        run.wait_for(lambda e: e["event"] == "message" and "restart 1/1" in e["text"], timeout=120)
        assert run.finish() == 0, run.stderr
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    said = " ".join(e["text"] for e in run.events if e["event"] == "message")
    assert "did not finish epoch 3 within 15 s" in said, said
    _assert_params_match(out, kill_reference)
