"""``launcher.rundir`` checkpoints, where `make mutants` found the fast tests silent: the
mid-epoch fields (the data cursor's ``step``, the finished steps' ``step_losses``, the
``data_key`` of the data trained on) written and read back, and a ``state.json`` from a
writer that had none of them (docs/design.md "Checkpoints"); the pid the lock's message names,
leftovers and ``checkpoints`` that are links, an old run's ``job.yaml``, and each verdict of
``checkpoint_problem`` (docs/design.md "Run directory")."""
import json

import numpy as np

from launcher.rundir import RunDir, atomic_write_text, load_checkpoint


def _state(epochs_done, **extra):
    return {"epochs_done": epochs_done, "params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "optimizer_arrays": {"0": np.ones(3)}, "optimizer_meta": {"num_update": 4}, **extra}


def test_a_mid_epoch_checkpoint_round_trip(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = run.write_checkpoint(_state(2, step=3, step_losses=[0.5, 0.25, 0.125]), "d1", [], keep=5,
                                data_key="key-1")
    assert path.name == "epoch-0002-step-00000003"
    saved = json.loads((path / "state.json").read_text())
    assert saved["data_cursor"]["step"] == 3 and saved["data_cursor"]["next_epoch"] == 2
    assert saved["step_losses"] == [0.5, 0.25, 0.125] and saved["data_key"] == "key-1"
    ck = load_checkpoint(path)
    assert ck["step"] == 3 and isinstance(ck["step"], int)
    assert ck["step_losses"] == [0.5, 0.25, 0.125] and ck["data_key"] == "key-1"


def test_an_end_of_epoch_checkpoint_keeps_no_step_losses(tmp_path):
    run = RunDir.create(tmp_path / "r")
    # step 0: the epoch is done; losses a caller left in the state do not belong to any epoch
    path = run.write_checkpoint(_state(2, step=0, step_losses=[1.0]), "d1", [], keep=5)
    assert path.name == "epoch-0002"
    saved = json.loads((path / "state.json").read_text())
    assert saved["step_losses"] == [] and saved["data_key"] is None
    ck = load_checkpoint(path)
    assert (ck["step"], ck["step_losses"], ck["data_key"]) == (0, [], None)


def test_a_state_without_a_step_is_an_end_of_epoch_checkpoint(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = run.write_checkpoint(_state(4), "d1", [], keep=5)
    assert path.name == "epoch-0004"
    assert json.loads((path / "state.json").read_text())["data_cursor"]["step"] == 0


def test_a_mid_epoch_state_without_step_losses_writes_an_empty_list(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = run.write_checkpoint(_state(1, step=2), "d1", [], keep=5)
    assert json.loads((path / "state.json").read_text())["step_losses"] == []
    assert load_checkpoint(path)["step_losses"] == []


def test_a_checkpoint_without_the_mid_epoch_fields_reads_as_end_of_epoch(tmp_path):
    run = RunDir.create(tmp_path / "r")
    path = run.write_checkpoint(_state(3), "d1", [], keep=5)
    saved = json.loads((path / "state.json").read_text())
    for key in ("data_cursor", "step_losses", "data_key"):
        del saved[key]
    (path / "state.json").write_text(json.dumps(saved))
    ck = load_checkpoint(path)
    assert (ck["step"], ck["step_losses"], ck["data_key"], ck["epochs_done"]) == (0, [], None, 3)
    saved["data_cursor"] = {"next_epoch": 3}                   # a cursor without a step
    (path / "state.json").write_text(json.dumps(saved))
    assert load_checkpoint(path)["step"] == 0


def test_atomic_write_text_takes_a_string_or_pieces(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one line\n")
    atomic_write_text(tmp_path / "b.txt", (f"{i}\n" for i in range(3)))
    assert (tmp_path / "a.txt").read_text() == "one line\n"
    assert (tmp_path / "b.txt").read_text() == "0\n1\n2\n"


def test_pruning_spares_the_best_epochs_end_checkpoint_not_a_mid_epoch_one(tmp_path):
    """checkpoint.keep_best: the best epoch's end-of-epoch checkpoint stays whatever keep says;
    a mid-epoch checkpoint inside the next epoch is not it."""
    run = RunDir.create(tmp_path / "r")
    run.best_epoch = 1
    for done, step in ((0, 1), (1, 0), (1, 1), (2, 0), (3, 0)):
        run.write_checkpoint(_state(done, step=step, step_losses=[0.5] * step), "d1", [], keep=1)
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["epoch-0001", "epoch-0003"]


# ---------------------------------------------------------------------------- the lock's pid, leftovers, run_state
import os  # noqa: E402

import pytest  # noqa: E402

from launcher import rundir  # noqa: E402
from launcher.rundir import RunLock, checkpoint_problem, clean_leftovers, run_state  # noqa: E402
from lr_core.errors import LrjobInputError  # noqa: E402


def _held_message(run):
    with pytest.raises(LrjobInputError) as e:
        RunLock.acquire(run)
    return str(e.value)


@pytest.mark.parametrize("content,pid", [
    (b"4242\n", "4242"),
    (b"7" * 32 + b"8\n", "7" * 32),      # 32 bytes are read: a pid has fewer digits
    (b"\xff\xfe12\n", "?"),              # not UTF-8: not a pid
    (b"pid 12\n", "?"),
    (None, "?"),                         # no pid file
    ("link", "?"),                       # a link is not followed
])
def test_the_lock_message_names_the_pid_its_file_holds_or_a_question_mark(tmp_path, content, pid):
    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock.acquire(run)
    try:
        (run / ".lock").unlink()
        if content == "link":
            (tmp_path / "elsewhere").write_text("4242\n")
            (run / ".lock").symlink_to(tmp_path / "elsewhere")
        elif content is not None:
            (run / ".lock").write_bytes(content)
        assert _held_message(run) == (f"{run}: another lrjob process (pid {pid}) is writing this run directory; "
                                      f"wait for it to end, or choose another --output")
    finally:
        lock.release()


def test_a_linked_folder_moved_aside_is_removed_not_put_back(tmp_path):
    """``.old-epoch-0003-77`` that is a link to a complete checkpoint elsewhere: a leftover to remove
    (the link only), never renamed into place as a checkpoint."""
    run = RunDir.create(tmp_path / "r")
    elsewhere = run.write_checkpoint(_state(3), "d1", [{}] * 3, keep=5)
    outside = tmp_path / "outside"
    os.replace(elsewhere, outside)
    (run.path / "checkpoints" / ".old-epoch-0003-77").symlink_to(outside)
    assert clean_leftovers(run.path) == [run.path / "checkpoints" / ".old-epoch-0003-77"]
    assert os.listdir(run.path / "checkpoints") == [] and (outside / "state.json").is_file()


def test_a_linked_checkpoints_folder_holds_no_run(tmp_path):
    """``checkpoints`` as a link to a folder holding a checkpoint: not lrjob's ("other"), its
    target never read as the run's."""
    target = RunDir.create(tmp_path / "target")
    target.write_checkpoint(_state(2), "d1", [{}] * 2, keep=5)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(target.path / "checkpoints")
    assert run_state(tmp_path / "run") == "other"
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "checkpoints").write_text("x")
    assert run_state(tmp_path / "file") == "other"


def test_a_run_job_yaml_without_standardize_reads_as_not_standardized(tmp_path):
    """A run's job.yaml written before data.standardize existed: that run did not standardize."""
    (tmp_path / "job.yaml").write_text("name: x\nmodel: {kind: binary}\ndata: {source: synthetic-blobs}\n"
                                       "resources: {workers: 0}\n")
    assert RunDir.open(tmp_path).spec().data.standardize is False


# ---------------------------------------------------------------------------- checkpoint_problem's verdicts
def _fits(step=0, done=2, **extra):
    """A checkpoint that fits a model with ``b`` (2,) and ``w`` (2, 3), 5 steps per epoch."""
    name = f"epoch-{done:04d}" + (f"-step-{step:08d}" if step else "")
    ck = {"params": {"b": np.zeros(2, np.float32), "w": np.zeros((2, 3), np.float32)}, "spec_digest": "d",
          "epochs_done": done, "optimizer_arrays": {"0.0": np.zeros(2), "1": np.zeros((2, 3))},
          "optimizer_meta": {"num_update": 4, "layout": {"0": "tuple1", "1": "array"}},
          "step": step, "step_losses": [0.5] * step, "history": [{}] * done, "path": f"/r/checkpoints/{name}"}
    ck.update(extra)
    return ck


_PARAMS = {"b": np.zeros(2, np.float32), "w": np.zeros((2, 3), np.float32)}


@pytest.mark.parametrize("ck,reason", [
    (_fits(spec_digest=None), "it records no spec_digest, so the spec it belongs to cannot be checked"),
    (_fits(history={"0": {}}), "its history holds no list of epochs, its epochs_done is 2"),
    (_fits(step=1, step_losses="0.5"), "it holds no list of step losses, its data_cursor.step is 1"),
    (_fits(params={}), "its parameters are none, the model has b, w"),
    (_fits(params={"a": np.zeros(2, np.float32), "w": np.zeros((2, 3), np.float32)}),
     "its parameters are a, w, the model has b, w"),
    (_fits(optimizer_meta={"layout": {"0": "none", "1": "array"}}, optimizer_arrays={"0.0": np.zeros(2)}),
     "optimizer state 1 is missing or not of shape (2, 3)"),
    (_fits(step=5, step_losses=[0.5] * 5, data_key="k"), "its data_cursor.step 5 is not a step of an epoch of 5 steps"),
    (_fits(step=5, step_losses=[0.5] * 5), "its data_cursor.step 5 is not a step of an epoch of 5 steps"),
])
def test_checkpoint_problem_names_what_does_not_fit(ck, reason):
    assert checkpoint_problem(ck, "d", _PARAMS, steps=5, data_key="k") == reason


@pytest.mark.parametrize("ck", [
    _fits(step=3, done=0),                                   # inside the first epoch
    _fits(optimizer_meta={"num_update": 4}),                 # no layout: no optimizer state to check
    _fits(optimizer_meta={"layout": {"0": "none", "1": "array"}}),
    _fits(optimizer_meta={"layout": {"0": "tuple2", "1": "none"}},
          optimizer_arrays={"0.0": np.zeros(2), "0.1": np.zeros(2)}),  # a tuple of all the arrays there are
    _fits(step=7, step_losses=[0.5] * 7, data_key="other"),  # other data: not measured by this data's steps
])
def test_checkpoint_problem_accepts_what_fits(ck):
    assert checkpoint_problem(ck, "d", _PARAMS, steps=5, data_key="k") is None


def test_a_pid_file_that_fails_to_read_is_a_question_mark(tmp_path, monkeypatch):
    """An I/O error reading the pid file (a disk error: EIO) costs the pid, not the message."""
    import errno

    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock.acquire(run)
    real_read = os.read

    def failing_read(fd, n):
        if os.path.samestat(os.fstat(fd), os.stat(run / ".lock")):
            raise OSError(errno.EIO, "Input/output error")
        return real_read(fd, n)

    try:
        monkeypatch.setattr(rundir.os, "read", failing_read)
        message = _held_message(run)
        monkeypatch.undo()
        assert message == (f"{run}: another lrjob process (pid ?) is writing this run directory; "
                           f"wait for it to end, or choose another --output")
    finally:
        lock.release()
