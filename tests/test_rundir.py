"""The run directory on its own (``launcher.rundir``), in-process and fast: atomic writes,
checkpoints that are whole or absent, pruning to ``checkpoint.keep``, the newest
checkpoint that reads back whole, and the readers every command uses."""
import dataclasses
import datetime as dt
import errno
import json
import os
import re
import shutil
import tempfile
import time

from pathlib import Path

import numpy as np
import pytest

from launcher import rundir
from launcher.rundir import (RunDir, RunLock, atomic_write_text, check_no_links, check_writable, clean_leftovers,
                             latest_checkpoint, list_checkpoints, load_checkpoint, make_run_dir)
from lr_core import faults
from lr_core.errors import LrjobInputError


def _state(epochs_done, seed=0):
    rng = np.random.default_rng(seed)
    return {"epochs_done": epochs_done,
            "params": {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": np.arange(2, dtype=np.float32)},
            "optimizer_arrays": {"0.0": rng.normal(size=(2, 3)), "1": np.ones(2)},
            "optimizer_meta": {"num_update": 7 * epochs_done, "index_update_count": {"0": 7},
                               "layout": {"0": "tuple1", "1": "array"}}}


def _history(n):
    # float32 as the loop reports them: state.json must convert NumPy scalars
    return [{"epoch": e + 1, "val_loss": np.float32(1.0 / (e + 1))} for e in range(n)]


def _write(run, epochs_done, keep=10, seed=0, digest="d1"):
    return run.write_checkpoint(_state(epochs_done, seed), digest, _history(epochs_done), keep)


def _names(run):
    return sorted(p.name for p in (run.path / "checkpoints").iterdir())


def _arm(monkeypatch, **spec):
    """Arm a fault point in this process (what LRJOB_FAULT does for a subprocess)."""
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", {"action": "raise", **spec})


# ---------------------------------------------------------------------------- paths
def test_utc_stamp_is_now_in_utc():
    stamp = rundir.utc_stamp()
    assert re.fullmatch(r"\d{8}T\d{6}Z", stamp), stamp
    when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 5


def test_utc_stamp_is_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no daylight saving
    time.tzset()
    try:
        when = dt.datetime.strptime(rundir.utc_stamp(), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 5


def test_make_run_dir_numbers_taken_names(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "utc_stamp", lambda: "20260101T000000Z")
    assert make_run_dir(None, "job", tmp_path) == (tmp_path / "job-20260101T000000Z",
                                                   [tmp_path / "job-20260101T000000Z"])
    assert make_run_dir(None, "job", tmp_path)[0] == tmp_path / "job-20260101T000000Z-2"
    assert make_run_dir(None, "job", str(tmp_path))[0] == tmp_path / "job-20260101T000000Z-3"
    assert sorted(os.listdir(tmp_path)) == ["job-20260101T000000Z", "job-20260101T000000Z-2",
                                            "job-20260101T000000Z-3"]
    monkeypatch.chdir(tmp_path)
    runs = rundir.Path("runs")
    assert make_run_dir(None, "other") == (runs / "other-20260101T000000Z", [runs, runs / "other-20260101T000000Z"])
    assert make_run_dir(tmp_path / "a" / "b", "x") == (tmp_path / "a" / "b", [tmp_path / "a", tmp_path / "a" / "b"])
    assert make_run_dir(tmp_path / "a" / "b", "x") == (tmp_path / "a" / "b", [])   # exists: the caller judges
    rundir.remove_if_empty([tmp_path / "a", tmp_path / "a" / "b"])
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(LrjobInputError, match=re.escape(f"--output {tmp_path / 'f'}: exists and is not a directory")):
        make_run_dir(tmp_path / "f", "x")


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    # Eight processes ask for a folder of the same job in the same second (the stamp is fixed):
    # the check-then-create of a path lets two of them share one; os.mkdir gives each its own.
    import multiprocessing

    monkeypatch.setattr(rundir, "utc_stamp", lambda: "20260101T000000Z")
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(8), ctx.Queue()

    def claim():
        start.wait()
        results.put(str(make_run_dir(None, "job", tmp_path)[0]))

    procs = [ctx.Process(target=claim) for _ in range(8)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert len(set(got)) == 8, got
    assert len(os.listdir(tmp_path)) == 8


def test_a_run_lock_is_exclusive_and_names_the_directory(tmp_path):
    lock = RunLock.acquire(tmp_path)
    assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(LrjobInputError) as e:   # another open file description: flock refuses it too
        RunLock.acquire(tmp_path)
    assert str(e.value) == (f"{tmp_path}: another lrjob process (pid {os.getpid()}) is writing this run "
                            f"directory; wait for it to end, or choose another --output")
    lock.release()
    lock.release()                               # twice is harmless
    assert not (tmp_path / ".lock").exists()
    RunLock.acquire(tmp_path).release()          # free again


def test_a_lock_of_a_dead_process_is_free(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys; from launcher.rundir import RunLock; "
                               f"RunLock.acquire({str(tmp_path)!r}); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LrjobInputError, match=f"pid {holder.pid}"):
            RunLock.acquire(tmp_path)
    finally:
        holder.kill()   # SIGKILL: no clean-up runs, the lock file stays
        holder.wait()
    assert (tmp_path / ".lock").exists()
    RunLock.acquire(tmp_path).release()


def test_a_linked_lock_file_is_refused(tmp_path):
    (tmp_path / "elsewhere").write_text("keep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LrjobInputError, match=re.escape(f"{tmp_path / 'run' / '.lock'}: is a symbolic link")):
        RunLock.acquire(tmp_path / "run")
    assert (tmp_path / "elsewhere").read_text() == "keep"


def test_a_removed_or_replaced_lock_file_does_not_free_the_lock(tmp_path):
    """The lock is on the folder, not on a file: unlinking or replacing ``.lock`` lets no second writer in."""
    lock = RunLock.acquire(tmp_path)
    (tmp_path / ".lock").unlink()
    with pytest.raises(LrjobInputError, match=r"another lrjob process \(pid \?\)"):
        RunLock.acquire(tmp_path)
    os.mkfifo(tmp_path / ".lock")                 # read for the message without blocking
    with pytest.raises(LrjobInputError, match=r"another lrjob process \(pid \?\)"):
        RunLock.acquire(tmp_path)
    lock.release()
    assert stat_kind(tmp_path / ".lock") == "fifo", "release removes only the regular pid file"
    RunLock.acquire(tmp_path).release()           # a FIFO there is replaced, no traceback


def stat_kind(path):
    import stat

    mode = os.lstat(path).st_mode if os.path.lexists(path) else None
    return None if mode is None else "fifo" if stat.S_ISFIFO(mode) else "file" if stat.S_ISREG(mode) else "other"


def test_a_hard_link_at_the_lock_never_writes_the_linked_file(tmp_path):
    (tmp_path / "precious").write_text("keep")
    (tmp_path / "run").mkdir()
    os.link(tmp_path / "precious", tmp_path / "run" / ".lock")
    lock = RunLock.acquire(tmp_path / "run")
    assert (tmp_path / "run" / ".lock").read_text() == f"{os.getpid()}\n"
    lock.release()
    assert (tmp_path / "precious").read_text() == "keep"


def test_a_folder_that_cannot_be_locked_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LrjobInputError, match=f"^{re.escape(str(tmp_path / 'f'))}: cannot lock the run directory"):
        RunLock.acquire(tmp_path / "f")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").mkdir()
    with pytest.raises(LrjobInputError, match=r"\.lock: cannot write the lock's pid file"):
        RunLock.acquire(tmp_path / "run")
    (tmp_path / "run" / ".lock").rmdir()
    RunLock.acquire(tmp_path / "run").release()    # the failed attempt left the folder unlocked


def test_an_unwritable_runs_dir_is_one_line(tmp_path):
    from launcher.driver import DriverOptions, run_job
    from launcher.spec import load_spec

    spec = load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.epochs=1"])
    (tmp_path / "f").write_text("x")
    for runs_dir, why in [("/proc/xx", "not writable"), (tmp_path / "f" / "runs", "is a file, not a directory")]:
        with pytest.raises(LrjobInputError, match=f"^--runs-dir {re.escape(str(runs_dir))}: .*{why}.*; choose a"):
            run_job(spec, options=DriverOptions(runs_dir=runs_dir))
    with pytest.raises(LrjobInputError, match="^--runs-dir /proc/xx: not writable .*; choose a writable directory$"):
        make_run_dir(None, "x", "/proc/xx")
    with pytest.raises(LrjobInputError, match="^--output /proc/xx/run: not writable .*; choose a writable directory$"):
        make_run_dir(Path("/proc/xx/run"), "x")


def test_check_writable_accepts_new_and_empty_paths(tmp_path):
    check_writable(tmp_path / "a" / "b" / "c")
    (tmp_path / "empty").mkdir()
    check_writable(tmp_path / "empty")


def test_check_writable_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LrjobInputError) as e:
        check_writable(tmp_path / "f" / "run")
    assert str(e.value) == (f"--output {tmp_path / 'f' / 'run'}: {tmp_path / 'f'} is a file, not a directory; "
                            f"choose another path")
    assert e.value.exit_code == 2


def test_check_writable_refuses_a_folder_without_write_and_search_rights(tmp_path, monkeypatch):
    # root may write anywhere: os.access answers for the probe instead of chmod
    asked = []
    real = os.access

    def access(path, mode):
        asked.append((rundir.Path(path), mode))
        return False if rundir.Path(path) == tmp_path else real(path, mode)

    monkeypatch.setattr(rundir.os, "access", access)
    with pytest.raises(LrjobInputError, match="is not writable; choose a writable directory"):
        check_writable(tmp_path / "new" / "run")
    assert asked == [(tmp_path, os.W_OK | os.X_OK)]


def test_atomic_write_text_writes_and_replaces_leaving_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.json", "one")
    atomic_write_text(tmp_path / "a.json", "two")
    assert (tmp_path / "a.json").read_text() == "two"
    assert os.listdir(tmp_path) == ["a.json"]
    atomic_write_text(str(tmp_path / "b.txt"), "")
    assert (tmp_path / "b.txt").read_text() == ""


def test_atomic_write_text_temporary_is_hidden_while_it_is_written(tmp_path, monkeypatch):
    seen = []
    real = os.fsync

    def fsync(fd):
        seen.append(sorted(os.listdir(tmp_path)))
        real(fd)

    monkeypatch.setattr(rundir.os, "fsync", fsync)
    atomic_write_text(tmp_path / "summary.json", "{}")
    listing = seen[0]           # the file's fsync (the folder's follows the rename)
    (tmp,) = listing
    assert tmp.startswith(".summary.json."), listing
    assert os.listdir(tmp_path) == ["summary.json"]


def test_atomic_write_text_makes_its_temporary_beside_the_target(tmp_path, monkeypatch):
    # a rename is atomic only within one file system: the temporary must not go to /tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"


def test_atomic_write_text_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "a.txt", b"not text")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_json_of_numpy_values(tmp_path):
    obj = {"f": np.float32(0.5), "i": np.int64(3), "b": np.bool_(True), "a": np.arange(3), "m": np.eye(2)}
    assert json.loads(rundir.dumps(obj)) == {"f": 0.5, "i": 3, "b": True, "a": [0, 1, 2], "m": [[1, 0], [0, 1]]}
    with pytest.raises(TypeError, match="not JSON serialisable: <class 'object'>"):
        rundir.dumps({"x": object()})
    run = RunDir.create(tmp_path / "r")
    run.write_json("x.json", {"a": np.int32(1), "l": [1]})
    assert (run.path / "x.json").read_text() == '{\n  "a": 1,\n  "l": [\n    1\n  ]\n}\n'


# ---------------------------------------------------------------------------- checkpoints
def test_write_checkpoint_round_trip(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = _write(run, 3)
    assert path == run.path / "checkpoints" / "epoch-0003"
    assert sorted(os.listdir(path)) == ["optimizer.npz", "params.npz", "state.json"]
    state = json.loads((path / "state.json").read_text())
    assert state["data_cursor"] == {"next_epoch": 3, "step": 0, "note": "epoch order = permutation(seed, epoch)"}
    ck = load_checkpoint(path)
    want = _state(3)
    assert ck["epochs_done"] == 3 and isinstance(ck["epochs_done"], int)
    assert ck["spec_digest"] == "d1"
    assert ck["history"] == _history(3)
    assert ck["optimizer_meta"] == want["optimizer_meta"]
    assert ck["path"] == str(path)
    for got, exp in ((ck["params"], want["params"]), (ck["optimizer_arrays"], want["optimizer_arrays"])):
        assert sorted(got) == sorted(exp)
        for k in exp:
            assert got[k].dtype == exp[k].dtype and np.array_equal(got[k], exp[k]), k
    assert _names(run) == ["epoch-0003"]


def test_write_checkpoint_recreates_a_missing_checkpoints_folder(tmp_path):
    run = RunDir(tmp_path)
    assert _write(run, 1).is_dir()


def test_load_checkpoint_defaults_for_older_state_files(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = _write(run, 2)
    state = json.loads((path / "state.json").read_text())
    del state["spec_digest"], state["history"]
    (path / "state.json").write_text(json.dumps(state))
    ck = load_checkpoint(path)
    assert ck["spec_digest"] is None and ck["history"] == []


@pytest.mark.parametrize("name", ["params.npz", "optimizer.npz"])
def test_load_checkpoint_refuses_pickles(tmp_path, name):
    run = RunDir.create(tmp_path / "r")
    path = _write(run, 1)
    np.savez(path / name, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        load_checkpoint(path)
    assert latest_checkpoint(run.path) is None


@pytest.mark.parametrize("keep,want", [(1, [5]), (2, [4, 5]), (3, [3, 4, 5]), (10, [1, 2, 3, 4, 5])])
def test_pruning_keeps_the_newest(tmp_path, keep, want):
    run = RunDir.create(tmp_path / "r")
    for e in range(1, 6):
        _write(run, e, keep=keep)
    assert [int(p.name[6:]) for p in list_checkpoints(run.path)] == want
    assert _names(run) == [f"epoch-{e:04d}" for e in want]


def test_rewriting_an_epoch_replaces_it_whole(tmp_path):
    run = RunDir.create(tmp_path / "r")
    _write(run, 2, seed=0)
    _write(run, 2, seed=1, digest="d2")
    ck = load_checkpoint(run.path / "checkpoints" / "epoch-0002")
    assert ck["spec_digest"] == "d2"
    assert np.array_equal(ck["params"]["w"], _state(2, seed=1)["params"]["w"])
    assert _names(run) == ["epoch-0002"]


@pytest.mark.parametrize("stage", ["params", "written"])
def test_a_crash_before_the_rename_leaves_the_old_checkpoints_only(tmp_path, monkeypatch, stage):
    run = RunDir.create(tmp_path / "r")
    _write(run, 1)
    _write(run, 2)
    _arm(monkeypatch, at="checkpoint", epoch=3, stage=stage)
    with pytest.raises(RuntimeError, match=f"injected fault at checkpoint .*'stage': '{stage}'"):
        _write(run, 3, keep=1)
    assert _names(run) == ["epoch-0001", "epoch-0002"]  # no temporary left, nothing pruned
    assert latest_checkpoint(run.path)["epochs_done"] == 2


def test_a_crash_while_rewriting_an_epoch_keeps_the_old_one(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    _write(run, 2, digest="old")
    _arm(monkeypatch, at="checkpoint", epoch=2, stage="written")
    with pytest.raises(RuntimeError):
        _write(run, 2, digest="new")
    assert _names(run) == ["epoch-0002"]
    assert latest_checkpoint(run.path)["spec_digest"] == "old"


def test_a_crash_after_the_rename_keeps_the_new_checkpoint_unpruned(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    _write(run, 1)
    _arm(monkeypatch, at="checkpoint", epoch=2, stage="renamed")
    with pytest.raises(RuntimeError):
        _write(run, 2, keep=1)
    assert _names(run) == ["epoch-0001", "epoch-0002"]
    assert latest_checkpoint(run.path)["epochs_done"] == 2


def test_the_temporary_folder_is_hidden_and_inside_checkpoints(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    seen = {}
    monkeypatch.setattr(faults, "hit", lambda at, **where: seen.setdefault(where["stage"], _names(run)))
    _write(run, 3)
    (tmp,) = seen["written"]
    assert tmp.startswith(".tmp-epoch-0003-"), seen
    assert seen["renamed"] == ["epoch-0003"]


class _Unremovable:
    """shutil.rmtree where removal fails (a busy NFS file, say), as the real one reports it."""

    def __init__(self):
        self.calls = []

    def __call__(self, path, ignore_errors=False, **kw):
        self.calls.append(os.path.basename(path))
        if not ignore_errors:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))


def test_a_folder_that_cannot_be_removed_never_fails_a_checkpoint(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    _write(run, 1)
    _write(run, 2)
    rmtree = _Unremovable()
    monkeypatch.setattr(rundir.shutil, "rmtree", rmtree)
    assert _write(run, 3, keep=1).name == "epoch-0003"          # pruning fails quietly
    assert _write(run, 3, keep=10).name == "epoch-0003"         # the replaced copy stays behind
    assert [c for c in rmtree.calls if c.startswith("epoch-")] == ["epoch-0001", "epoch-0002"]
    assert any(c.startswith(".old-epoch-0003-") for c in rmtree.calls)
    _arm(monkeypatch, at="checkpoint", epoch=4, stage="written")
    with pytest.raises(RuntimeError, match="injected fault"):  # the crash, not the clean-up, is reported
        _write(run, 4)
    assert rmtree.calls[-1].startswith(".tmp-epoch-0004-")
    monkeypatch.setattr(rundir.shutil, "rmtree", shutil.rmtree)


def test_fault_points_name_the_epoch_and_stage(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    seen = []
    monkeypatch.setattr(faults, "hit", lambda at, **where: seen.append((at, where)))
    _write(run, 4)
    assert seen == [("checkpoint", {"epoch": 4, "stage": s}) for s in ("params", "written", "renamed")]
    seen.clear()
    _write(run, 4)                                   # the same epoch again: the old one is swapped out
    assert seen == [("checkpoint", {"epoch": 4, "stage": s})
                    for s in ("params", "written", "swapping", "renamed")]


def test_a_crash_while_swapping_leaves_the_previous_epoch_newest(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    _write(run, 1)
    _write(run, 2)
    _arm(monkeypatch, at="checkpoint", epoch=2, stage="swapping")
    with pytest.raises(RuntimeError):
        _write(run, 2, digest="new")
    assert [p.name for p in list_checkpoints(run.path)] == ["epoch-0001"]
    assert latest_checkpoint(run.path)["epochs_done"] == 1
    # the next driver puts the epoch moved aside back, instead of deleting both copies
    aside = [p.name for p in (run.path / "checkpoints").iterdir() if p.name.startswith(".old-")]
    assert aside == [f".old-epoch-0002-{os.getpid()}"]
    assert clean_leftovers(run.path) == []
    assert _names(run) == ["epoch-0001", "epoch-0002"]
    assert latest_checkpoint(run.path)["spec_digest"] == "d1"


def test_a_model_moved_aside_is_put_back_when_its_replacement_never_arrived(tmp_path):
    run = RunDir.create(tmp_path / "r")
    old, new = run.path / ".old-model-77", run.path / ".tmp-model-abcd1234"   # killed between the renames
    for d, text in ((old, "old"), (new, "new")):
        d.mkdir()
        (d / "meta.json").write_text(text)
    (run.path / ".old-model-78").mkdir()                                        # torn: no meta.json
    assert clean_leftovers(run.path) == [run.path / ".old-model-78", new]
    assert (run.path / "model" / "meta.json").read_text() == "old"
    assert sorted(os.listdir(run.path)) == ["checkpoints", "model"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_are_readable_as_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
        assert os.umask(umask) == umask                   # left as it was
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "summary.json").st_mode & 0o777 == mode


def test_writing_never_changes_the_process_umask(tmp_path, monkeypatch):
    """os.umask can only read the mask by setting it; other threads would create files with 0 meanwhile."""
    old = os.umask(0o027)
    calls = []
    try:
        monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or 0o027)
        atomic_write_text(tmp_path / "a.txt", "x")
        run = RunDir.create(tmp_path / "r")
        _write(run, 1)
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert calls == []
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (run.path / "checkpoints" / "epoch-0001").stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_checkpoint_and_model_folders_have_the_modes_the_umask_gives(tmp_path, umask):
    from launcher.spec import load_spec

    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=1"])
    data = spec.load_data()
    params = {"lrjob_layer0_weight": np.zeros((1, data.num_features), np.float32),
              "lrjob_layer0_bias": np.zeros(1, np.float32)}
    old = os.umask(umask)
    try:
        run = RunDir.create(tmp_path / "r")
        _write(run, 1)
        _write(run, 2, keep=1)
        run.write_json("summary.json", {})
        run.append_metrics({"epoch": 1})
        run.write_bytes("curves.png", b"png")
        run.export_model(spec, data, params)
        run.export_model(spec, data, params)   # replaced: the new folder has the same modes
    finally:
        os.umask(old)
    seen = set()
    for top, dirs, files in os.walk(run.path):
        for d in dirs:
            assert os.stat(os.path.join(top, d)).st_mode & 0o777 == 0o777 & ~umask, os.path.join(top, d)
            seen.add(d)
        for f in files:
            assert os.stat(os.path.join(top, f)).st_mode & 0o777 == 0o666 & ~umask, os.path.join(top, f)
    assert {"checkpoints", "epoch-0002", "model"} <= seen


def test_pruning_never_drops_the_checkpoint_just_written_for_a_newer_leftover(tmp_path):
    run = RunDir.create(tmp_path / "r")
    _write(run, 9)                      # from an earlier attempt, say damaged and skipped on resume
    _write(run, 2, keep=1)
    _write(run, 3, keep=1)
    assert _names(run) == ["epoch-0003", "epoch-0009"]


def test_checkpoints_are_ordered_as_numbers(tmp_path):
    run = RunDir.create(tmp_path / "r")
    for e in (9999, 10000):
        _write(run, e, keep=10)
    assert [p.name for p in list_checkpoints(run.path)] == ["epoch-9999", "epoch-10000"]
    assert latest_checkpoint(run.path)["epochs_done"] == 10000
    _write(run, 10001, keep=2)     # pruning drops the oldest by number: epoch-9999
    assert _names(run) == ["epoch-10000", "epoch-10001"]
    (run.path / "checkpoints" / "epoch-10000-step-00000005").mkdir()
    (run.path / "checkpoints" / "epoch-10000-step-00000005" / "state.json").write_text("{}")
    (run.path / "checkpoints" / "epoch-99").mkdir()
    (run.path / "checkpoints" / "epoch-99" / "state.json").write_text("{}")
    assert [p.name for p in list_checkpoints(run.path)] == ["epoch-99", "epoch-10000", "epoch-10000-step-00000005",
                                                            "epoch-10001"]


def test_a_linked_checkpoints_folder_is_neither_pruned_nor_written(tmp_path):
    other = RunDir.create(tmp_path / "other")
    for e in (1, 2, 3):
        _write(other, e)
    run = RunDir.create(tmp_path / "r")
    shutil.rmtree(run.path / "checkpoints")
    (run.path / "checkpoints").symlink_to(other.path / "checkpoints")
    assert list_checkpoints(run.path) == []
    with pytest.raises(LrjobInputError) as e:
        _write(run, 4, keep=1)
    assert str(e.value) == (f"{run.path / 'checkpoints'}: is a symbolic link inside the run directory; lrjob "
                            f"follows no link there: remove it, or start a new run")
    assert _names(other) == ["epoch-0001", "epoch-0002", "epoch-0003"]
    with pytest.raises(LrjobInputError, match="is a symbolic link"):
        check_no_links(run.path)


def test_a_linked_checkpoint_is_not_one(tmp_path):
    other = RunDir.create(tmp_path / "other")
    _write(other, 7)
    run = RunDir.create(tmp_path / "r")
    _write(run, 1)
    (run.path / "checkpoints" / "epoch-0007").symlink_to(other.path / "checkpoints" / "epoch-0007")
    assert [p.name for p in list_checkpoints(run.path)] == ["epoch-0001"]
    _write(run, 2, keep=1)
    assert (other.path / "checkpoints" / "epoch-0007" / "state.json").is_file()


@pytest.mark.parametrize("name", ["metrics.jsonl", "summary.json", "report.html", "model"])
def test_no_file_is_written_through_a_link(tmp_path, name):
    from launcher.spec import load_spec

    outside = tmp_path / "outside"
    outside.write_text("keep")
    run = RunDir.create(tmp_path / "r")
    (run.path / name).symlink_to(outside)
    with pytest.raises(LrjobInputError) as e:
        if name == "metrics.jsonl":
            run.append_metrics({"epoch": 1})
        elif name == "summary.json":
            run.write_json(name, {})
        elif name == "report.html":
            run.write_bytes(name, b"<html>")
        else:
            spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0"])
            run.export_model(spec, spec.load_data(), {})
    assert str(e.value).startswith(f"{run.path / name}: is a symbolic link inside the run directory")
    assert outside.read_text() == "keep"
    assert sorted(os.listdir(run.path)) == ["checkpoints", name]   # no temporary left


def test_the_model_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from launcher.spec import load_spec
    from lr_core import export

    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0"])
    data = spec.load_data()
    params = {"lrjob_layer0_weight": np.ones((1, data.num_features), np.float32),
              "lrjob_layer0_bias": np.zeros(1, np.float32)}
    run = RunDir.create(tmp_path / "r")
    run.export_model(spec, data, params)
    before = {f: (run.model_dir / f).read_bytes() for f in os.listdir(run.model_dir)}
    real = export.export_model

    def dies_half_way(directory, *a, **k):
        real(directory, *a, **k)
        (rundir.Path(directory) / "model-0000.params").write_bytes(b"half")
        raise RuntimeError("killed while exporting")

    monkeypatch.setattr(export, "export_model", dies_half_way)
    with pytest.raises(RuntimeError):
        run.export_model(spec, data, {k: v * 2 for k, v in params.items()})
    assert {f: (run.model_dir / f).read_bytes() for f in os.listdir(run.model_dir)} == before
    assert sorted(os.listdir(run.path)) == ["checkpoints", "model"]
    monkeypatch.setattr(export, "export_model", real)
    run.export_model(spec, data, {k: v * 2 for k, v in params.items()})
    assert np.allclose(run.model().logits(np.ones((1, 2), np.float32))[:, 0], 4.0)
    assert sorted(os.listdir(run.path)) == ["checkpoints", "model"]


def test_leftovers_of_a_killed_writer_are_cleaned(tmp_path):
    run = RunDir.create(tmp_path / "r")
    _write(run, 1)
    leftovers = [run.path / "checkpoints" / ".tmp-epoch-0002-abc1_3x9", run.path / "checkpoints" / ".old-epoch-0001-77",
                 run.path / "checkpoints" / ".tmp-epoch-0002-step-00000005-a1b2c3d4",
                 run.path / ".tmp-model-x1y2z3w4", run.path / ".old-model-77"]
    for d in leftovers:
        d.mkdir()
        (d / "params.npz").write_bytes(b"x")
    (run.path / ".summary.json.ab12cd34").write_text("{")
    (run.path / "notes.txt").write_text("mine")          # not lrjob's: kept
    (run.path / ".damaged-x").mkdir()
    # names lrjob never writes, however close: kept
    mine = [".tmp-notes", ".old-backup", ".tmp-model-x", ".summary.json.ab12", ".notes.txt.ab12cd34", ".tmp-cache"]
    for name in mine:
        (run.path / name).write_text("mine")
    (run.path / "checkpoints" / ".tmp-cache").mkdir()
    (run.path / "checkpoints" / ".old-model-77").mkdir()
    removed = clean_leftovers(run.path)
    assert sorted(removed) == sorted([*leftovers, run.path / ".summary.json.ab12cd34"])
    assert sorted(os.listdir(run.path)) == sorted([".damaged-x", "checkpoints", "notes.txt", *mine])
    assert _names(run) == [".old-model-77", ".tmp-cache", "epoch-0001"]


@pytest.mark.parametrize("names,want", [
    ([], "new"), ([".lock"], "new"), (["checkpoints/"], "new"),
    ([".lock", "checkpoints/", ".job.yaml.ab12cd34"], "new"),
    (["job.yaml"], "run"), (["checkpoints/epoch-0002/state.json"], "run"), (["notes.txt"], "other"),
    ([".lock", "checkpoints/x"], "other"), (["checkpoints/epoch-0002/params.npz"], "other"), ([".tmp-notes"], "other"),
])
def test_run_state_judges_what_a_folder_holds(tmp_path, names, want):
    for name in names:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if name.endswith("/") else p.write_text("x")
    assert rundir.run_state(tmp_path) == want


def test_list_checkpoints_sees_only_complete_epoch_folders(tmp_path):
    assert list_checkpoints(tmp_path) == []
    run = RunDir.create(tmp_path / "r")
    assert list_checkpoints(run.path) == []
    for e in (10, 2, 1):
        _write(run, e)
    ck = run.path / "checkpoints"
    (ck / ".tmp-epoch-0011-abc").mkdir()
    (ck / ".tmp-epoch-0011-abc" / "state.json").write_text("{}")
    (ck / "epoch-0012").mkdir()                      # no state.json: torn
    (ck / "epoch-0013").write_text("a file")
    (ck / "other").mkdir()
    (ck / "other" / "state.json").write_text("{}")
    assert [p.name for p in list_checkpoints(run.path)] == ["epoch-0001", "epoch-0002", "epoch-0010"]
    assert run.checkpoints() == list_checkpoints(run.path)


def _damage(path, how):
    if how == "truncated params":
        data = (path / "params.npz").read_bytes()
        (path / "params.npz").write_bytes(data[: len(data) // 2])
    elif how == "no optimizer":
        (path / "optimizer.npz").unlink()
    elif how == "bad json":
        (path / "state.json").write_text("{")
    elif how == "no key":
        (path / "state.json").write_text(json.dumps({"epochs_done": 3}))
    elif how == "bad epochs":
        state = json.loads((path / "state.json").read_text())
        state["epochs_done"] = None
        (path / "state.json").write_text(json.dumps(state))
    elif how == "empty params":
        (path / "params.npz").write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated params", "no optimizer", "bad json", "no key", "bad epochs",
                                 "empty params"])
def test_latest_checkpoint_skips_a_damaged_newest(tmp_path, how):
    run = RunDir.create(tmp_path / "r")
    for e in (1, 2, 3):
        _write(run, e)
    _damage(run.path / "checkpoints" / "epoch-0003", how)
    ck = latest_checkpoint(run.path)
    assert ck["epochs_done"] == 2 and ck["path"] == str(run.path / "checkpoints" / "epoch-0002")
    assert run.latest_checkpoint()["epochs_done"] == 2
    _damage(run.path / "checkpoints" / "epoch-0002", how)
    _damage(run.path / "checkpoints" / "epoch-0001", how)
    assert latest_checkpoint(run.path) is None


def _lying_npz(path, name, shape, payload=b"\0" * 2048, file_size=None):
    """An .npz whose member ``name`` has an .npy header of ``shape`` over ``payload`` (a few KB on disk)."""
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.npy", head.getvalue() + payload)
    if file_size is not None:   # the zip entry lies about its size too (local header and central directory)
        data = bytearray(path.read_bytes())
        real = (len(head.getvalue()) + len(payload)).to_bytes(4, "little")
        data = data.replace(real + real, file_size.to_bytes(4, "little") * 2)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("file_size", [None, 2 ** 32 - 1])
def test_a_lying_npy_header_is_a_damaged_checkpoint_not_a_huge_allocation(tmp_path, file_size):
    run = RunDir.create(tmp_path / "r")
    for e in (1, 2):
        _write(run, e)
    params = run.path / "checkpoints" / "epoch-0002" / "params.npz"
    _lying_npz(params, "w", (10 ** 11,), file_size=file_size)
    assert params.stat().st_size < 4096
    skipped = []
    ck = latest_checkpoint(run.path, skipped=skipped)
    assert ck["epochs_done"] == 1
    assert [p.name for p, _ in skipped] == ["epoch-0002"]
    assert skipped[0][1].startswith("unreadable: ValueError: w.npy: "), skipped


def _fitting_checkpoint(step=0):
    """A checkpoint that fits a model with ``b`` (2,) and ``w`` (2, 3), 5 steps per epoch (gluon numbers them b, w)."""
    params = {"b": np.zeros(2, np.float32), "w": np.zeros((2, 3), np.float32)}
    return {"params": {k: v.copy() for k, v in params.items()}, "spec_digest": "d", "epochs_done": 2,
            "optimizer_arrays": {"0.0": np.zeros(2), "1": np.zeros((2, 3))},
            "optimizer_meta": {"num_update": 4, "layout": {"0": "tuple1", "1": "array"}},
            "step": step, "step_losses": [0.5] * step, "history": [{}, {}],
            "path": f"/r/checkpoints/epoch-0002{f'-step-{step:08d}' if step else ''}"}, params


def _nan(ck):
    ck["params"]["w"][0, 1] = np.nan


def _set(**path):
    def change(ck):
        for key, value in path.items():
            *outer, last = key.split("__")
            target = ck
            for k in outer:
                target = target[k]
            target[last] = value
    return change


@pytest.mark.parametrize("change,reason", [
    (_nan, "w holds NaN or infinite values"),
    (_set(params__b=np.zeros(2)), "b is float64 (2,), the model needs float32 (2,)"),
    (_set(optimizer_meta__layout={"0": "tuple1", "1": "matrix"}), "its optimizer state has an unknown layout 'matrix'"),
    (_set(optimizer_meta__layout={"0": "tuple1", "1": None}), "its optimizer state has an unknown layout None"),
    (_set(optimizer_meta__layout={"0": "tuple1000000000", "1": "array"}),
     "its optimizer state has an unknown layout 'tuple1000000000'"),
    (_set(optimizer_meta__layout={"0": "tuple999999", "1": "array"}),
     "its optimizer state has an unknown layout 'tuple999999'"),
    (_set(optimizer_meta=["layout"]), "its optimizer_meta is not a mapping"),
    (_set(optimizer_meta__layout=[["0", "array"]]), "its optimizer_meta is not a mapping"),
    (_set(optimizer_meta__layout={"0": "tuple1", "2": "array"}),
     "its optimizer state names parameter '2', the model has 2"),
    (_set(optimizer_meta__layout={"-1": "array"}), "its optimizer state names parameter '-1', the model has 2"),
    (_set(optimizer_arrays={"0.0": np.zeros(2), "1": np.zeros(6)}),
     "optimizer state 1 is missing or not of shape (2, 3)"),
    (_set(history=[{}]), "its history holds 1 epochs, its epochs_done is 2"),
    (_set(step=5, step_losses=[0.5] * 5), "its data_cursor.step 5 is not a step of an epoch of 5 steps"),
    (_set(step=-1), "its data_cursor.step -1 is not a step of an epoch of 5 steps"),
    (_set(step=1), "it holds 0 step losses, its data_cursor.step is 1"),
    (_set(step=1, step_losses=[0.5]), "its state.json says epoch-0002-step-00000001, the folder is epoch-0002"),
])
def test_checkpoint_problem_names_each_damage(change, reason):
    from launcher.rundir import checkpoint_problem

    ck, params = _fitting_checkpoint()
    assert checkpoint_problem(ck, "d", params, steps=5) is None
    assert checkpoint_problem(_fitting_checkpoint(step=4)[0], "d", params, steps=5) is None
    change(ck)
    assert checkpoint_problem(ck, "d", params, steps=5) == reason


def test_latest_checkpoint_is_the_newest_whole_one(tmp_path):
    run = RunDir.create(tmp_path / "r")
    assert latest_checkpoint(run.path) is None and run.latest_checkpoint() is None
    for e in (1, 9, 10):
        _write(run, e)
    assert latest_checkpoint(run.path)["epochs_done"] == 10


# ---------------------------------------------------------------------------- RunDir
def test_create_and_open(tmp_path):
    run = RunDir.create(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "checkpoints").is_dir()
    assert RunDir.create(tmp_path / "a" / "b").path == tmp_path / "a" / "b"   # again: no error
    assert RunDir.open(str(run.path)).path == run.path
    with pytest.raises(LrjobInputError) as e:
        RunDir.open(tmp_path / "missing")
    assert str(e.value) == f"{tmp_path / 'missing'}: no such run directory"
    (tmp_path / "f").write_text("x")
    with pytest.raises(LrjobInputError):
        RunDir.open(tmp_path / "f")


def test_readers_of_a_fresh_folder(tmp_path):
    run = RunDir.open(tmp_path)
    assert run.spec() is None and run.spec_dict() == {}
    assert run.history() == [] and run.summary() is None and run.env() is None
    assert run.model_dir == tmp_path / "model"
    (tmp_path / "summary.json").write_text("{not json")
    (tmp_path / "env.json").write_text('{"a": 1}')
    (tmp_path / "job.yaml").write_text("- a list\n")
    assert run.summary() is None and run.env() == {"a": 1} and run.spec_dict() == {}
    (tmp_path / "job.yaml").write_text("name: x\ntrain: {epochs: 2}\n")
    assert run.spec_dict() == {"name": "x", "train": {"epochs": 2}}
    (tmp_path / "summary.json").write_text('{"status": "completed"}')
    assert run.summary() == {"status": "completed"}


def test_a_bad_job_yaml_names_its_file(tmp_path):
    from lr_core.errors import SpecError

    (tmp_path / "job.yaml").write_text("name: x\ntrian: {epochs: 3}\n")
    with pytest.raises(SpecError, match=re.escape(str(tmp_path / "job.yaml"))):
        RunDir.open(tmp_path).spec()


def test_metrics_append_and_rewrite(tmp_path):
    run = RunDir.create(tmp_path)
    run.append_metrics({"epoch": 1, "x": np.float32(0.5)})
    run.append_metrics({"epoch": 2, "x": np.arange(2)})
    assert run.history() == [{"epoch": 1, "x": 0.5}, {"epoch": 2, "x": [0, 1]}]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1, "x": 0.5}\n{"epoch": 2, "x": [0, 1]}\n'
    run.rewrite_metrics([{"epoch": 1, "x": np.int64(4)}, {"epoch": 2}])
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1, "x": 4}\n{"epoch": 2}\n'
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n\n  \n{"epoch": 2}\n')
    assert run.history() == [{"epoch": 1}, {"epoch": 2}]
    run.rewrite_metrics([])
    assert run.history() == []


def test_a_metrics_line_is_appended_not_the_file_rewritten(tmp_path):
    run = RunDir.create(tmp_path)
    run.append_metrics({"epoch": 1})
    inode = (tmp_path / "metrics.jsonl").stat().st_ino
    with open(tmp_path / "metrics.jsonl") as reader:      # the same file grows: a reader sees the new line
        assert reader.read() == '{"epoch": 1}\n'
        run.append_metrics({"epoch": 2})
        assert reader.read() == '{"epoch": 2}\n'
    assert (tmp_path / "metrics.jsonl").stat().st_ino == inode
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "metrics.jsonl"]


def test_a_torn_last_metrics_line_is_no_epoch_and_is_cut_before_the_next(tmp_path):
    run = RunDir.create(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "val_lo')
    assert run.history() == [{"epoch": 1}]
    run.append_metrics({"epoch": 2})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    (tmp_path / "metrics.jsonl").write_text('{"epo')
    assert run.history() == []
    run.append_metrics({"epoch": 1})
    assert run.history() == [{"epoch": 1}]


@pytest.mark.parametrize("kind", ["hard link", "fifo"])
def test_metrics_are_never_appended_through_a_hard_link_or_to_a_fifo(tmp_path, kind):
    run = RunDir.create(tmp_path / "r")
    outside = tmp_path / "outside"
    if kind == "hard link":
        outside.write_text("keep")
        os.link(outside, run.path / "metrics.jsonl")
    else:
        os.mkfifo(run.path / "metrics.jsonl")
    with pytest.raises(LrjobInputError, match=r"metrics.jsonl: is not a regular file of this run alone"):
        run.append_metrics({"epoch": 1})
    if kind == "hard link":
        assert outside.read_text() == "keep"


def test_spec_and_model_of_a_written_run(tmp_path):
    from launcher.spec import load_spec

    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=1"])
    run = RunDir.create(tmp_path / "r")
    run.write_spec(spec)
    assert run.spec().to_yaml() == spec.to_yaml()
    assert run.spec_dict()["name"] == spec.name
    run.write_text("note.txt", "hello")
    assert (run.path / "note.txt").read_text() == "hello"
    data = dataclasses.replace(spec.load_data(), extra={"columns": ["a", "b"]}, image_shape=(1, 2))
    rng = np.random.default_rng(0)
    params = {"lrjob_layer0_weight": rng.normal(size=(1, data.num_features)).astype(np.float32),
              "lrjob_layer0_bias": np.array([0.25], dtype=np.float32)}
    run.export_model(spec, data, params)
    meta = json.loads((run.model_dir / "meta.json").read_text())
    assert meta["job"] == spec.name and meta["source"] == data.source
    assert meta["image_shape"] == [1, 2] and meta["columns"] == ["a", "b"]
    assert meta["label_column"] == spec.data.label_column and meta["label_map"] == spec.data.label_map
    run.export_model(spec, dataclasses.replace(data, extra={}, image_shape=None), params)
    meta = json.loads((run.model_dir / "meta.json").read_text())
    assert meta["columns"] == [] and meta["image_shape"] == []
    model = run.model()
    x = data.x_val[:5]
    want = x.astype(np.float64) @ params["lrjob_layer0_weight"][0].astype(np.float64) + 0.25
    assert np.allclose(model.logits(x)[:, 0], want, atol=1e-5)


def test_redrawing_a_run_takes_its_lock_and_refuses_while_a_run_holds_it(tmp_path):
    """``python -m launcher.report.plots RUN`` writes the run's report and pictures: while the
    run's writer holds the lock it writes nothing (one line, exit 2); once free, it redraws."""
    import subprocess
    import sys

    from launcher.driver import run_job
    from launcher.spec import load_spec

    run = tmp_path / "run"
    run_job(load_spec("jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=1"]), output=run)
    (run / "report.html").unlink()
    env = dict(os.environ, LRJOB_PICTURES="0")
    cmd = [sys.executable, "-m", "launcher.report.plots", str(run)]
    lock = RunLock.acquire(run)                   # a run writing it
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    finally:
        lock.release()
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"lrjob: error: {run}: another lrjob process (pid {os.getpid()}) is writing this run "
                        f"directory; wait for it to end, or redraw it once the run has ended\n")
    assert not (run / "report.html").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (run / "report.html").is_file() and not (run / ".lock").exists()


def test_a_file_written_is_durable_with_its_name(tmp_path, monkeypatch):
    """Each atomic write fsyncs the folder after its rename: the new name (summary.json,
    report.html, a picture) survives a crash, not only the bytes behind the old one."""
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(rundir.os, "replace", lambda a, b: (events.append(("replace", Path(b))), real_replace(a, b)))
    monkeypatch.setattr(rundir.os, "fsync",
                        lambda fd: (events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")))), real_fsync(fd)))
    RunDir(tmp_path).write_json("summary.json", {"status": "running"})
    i = events.index(("replace", tmp_path / "summary.json"))
    assert ("fsync", tmp_path) in events[i + 1:], events
