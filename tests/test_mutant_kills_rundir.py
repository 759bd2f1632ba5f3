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


# ---------------------------------------------------------------------------- _load_npz: each header check, exact
import io  # noqa: E402
import zipfile  # noqa: E402

from launcher.rundir import latest_checkpoint  # noqa: E402


def _npy(shape, payload=b"", descr="<f4"):
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": descr, "fortran_order": False, "shape": shape})
    return head.getvalue() + payload


def _zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _claim(path, name, file_size):
    """Make the zip entry ``name`` claim ``file_size`` bytes (local header and central directory)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    real = info.compress_size.to_bytes(4, "little") + info.file_size.to_bytes(4, "little")
    data = path.read_bytes()
    assert data.count(real) == 2
    path.write_bytes(data.replace(real, info.compress_size.to_bytes(4, "little") + file_size.to_bytes(4, "little")))
    return info


def _load_error(path):
    with pytest.raises(ValueError) as e:
        rundir._load_npz(path)
    return str(e.value)


def test_a_stored_entry_may_claim_the_file_size_not_more(tmp_path):
    p = _zip(tmp_path / "p.npz", [("w.npy", _npy((2,), b"\0" * 8))])
    on_disk = p.stat().st_size
    _claim(p, "w.npy", on_disk + 1)
    assert _load_error(p) == f"w.npy: its zip entry claims {on_disk + 1} bytes, the file holds {on_disk}"
    _claim(p, "w.npy", on_disk)      # as much as the file: the header's check decides
    head = len(_npy((2,)))
    assert _load_error(p) == (f"w.npy: its header says float32 (2,) (8 bytes), the entry holds {on_disk - head}")


def test_a_deflated_entry_may_claim_1032_times_its_compressed_size_not_more(tmp_path):
    p = _zip(tmp_path / "p.npz", [("w.npy", _npy((2,), b"\0" * 8))], zipfile.ZIP_DEFLATED)
    info = _claim(p, "w.npy", 1032 * zipfile.ZipFile(p).getinfo("w.npy").compress_size + 1)
    assert _load_error(p) == (f"w.npy: its zip entry claims {1032 * info.compress_size + 1} bytes, "
                              f"the file holds {p.stat().st_size}")


def test_a_well_compressed_entry_larger_than_the_file_reads(tmp_path):
    values = (np.arange(100_000) % 7).astype(np.float32)
    np.savez_compressed(tmp_path / "p.npz", w=values)
    assert zipfile.ZipFile(tmp_path / "p.npz").getinfo("w.npy").file_size > 10 * (tmp_path / "p.npz").stat().st_size
    assert np.array_equal(rundir._load_npz(tmp_path / "p.npz")["w"], values)


def test_a_version_2_npy_member_reads(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(6, dtype=np.float32).reshape(2, 3), version=(2, 0))
    p = _zip(tmp_path / "p.npz", [("w.npy", buf.getvalue())])
    assert np.array_equal(rundir._load_npz(p)["w"], np.arange(6, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("shape,payload,says", [
    ((10 ** 11,), b"\0" * 2048, "float32 (100000000000,) (400000000000 bytes), the entry holds 2048"),
    # a product past int64 (2**80 elements): counted exactly, not wrapped to 0
    ((2 ** 40, 2 ** 40), b"", "float32 (1099511627776, 1099511627776) (4835703278458516698824704 bytes), "
                              "the entry holds 0"),
])
def test_a_lying_header_is_named_with_what_it_says_and_what_the_entry_holds(tmp_path, shape, payload, says):
    p = _zip(tmp_path / "p.npz", [("w.npy", _npy(shape, payload))])
    assert _load_error(p) == f"w.npy: its header says {says}"


def test_every_member_after_an_object_array_is_checked_too(tmp_path):
    obj = io.BytesIO()
    np.lib.format.write_array(obj, np.array([{}], dtype=object), allow_pickle=True)
    p = _zip(tmp_path / "p.npz", [("a.npy", obj.getvalue()), ("w.npy", _npy((10 ** 11,), b"\0" * 64))])
    assert _load_error(p) == "w.npy: its header says float32 (100000000000,) (400000000000 bytes), the entry holds 64"


def _checkpoints(tmp_path, n=3):
    run = RunDir.create(tmp_path / "r")
    for e in range(1, n + 1):
        run.write_checkpoint(_state(e), "d1", [{}] * e, keep=10)
    return run


def test_latest_checkpoint_asks_the_judge_about_each_and_lists_the_skipped(tmp_path):
    run = _checkpoints(tmp_path)
    seen, skipped = [], []

    def judge(ck):
        seen.append(ck["epochs_done"])
        return "too new" if ck["epochs_done"] == 3 else None

    assert latest_checkpoint(run.path, judge, skipped)["epochs_done"] == 2
    assert seen == [3, 2] and skipped == [(run.path / "checkpoints" / "epoch-0003", "too new")]


def test_an_unreadable_checkpoints_reason_is_its_first_line_cut_at_160(tmp_path):
    run = _checkpoints(tmp_path, 2)
    name = "w" * 200
    _zip(run.path / "checkpoints" / "epoch-0002" / "params.npz", [(f"{name}.npy", _npy((10 ** 11,), b"\0" * 8))])
    skipped = []
    assert latest_checkpoint(run.path, skipped=skipped)["epochs_done"] == 1
    message = f"{name}.npy: its header says float32 (100000000000,) (400000000000 bytes), the entry holds 8"
    assert skipped == [(run.path / "checkpoints" / "epoch-0002", f"unreadable: ValueError: {message[:160]}")]


def _deflate_block_type_3(path):
    """A deflated member whose data starts with a block of the reserved type 3: zlib.error on reading."""
    _zip(path, [("w.npy", _npy((2,), b"\0" * 8))], zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo("w.npy").header_offset
    data = bytearray(path.read_bytes())
    start = offset + 30 + int.from_bytes(data[offset + 26:offset + 28], "little") + \
        int.from_bytes(data[offset + 28:offset + 30], "little")
    data[start] = 0b111           # BFINAL 1, BTYPE 11
    path.write_bytes(bytes(data))


def _method_99(path):
    """A member compressed by method 99 (AES in other tools): zipfile cannot read it."""
    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    data[local + 8:local + 10] = data[central + 10:central + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(data))


def _encrypted(path):
    """A member whose flag bit 0 (encrypted) is set: zipfile would ask for a password."""
    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    data[local + 6] |= 1
    data[central + 8] |= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,reason", [
    (lambda p: _encrypted(p / "params.npz"), "unreadable: ValueError: w.npy: its zip entry is marked encrypted"),
    (lambda p: _method_99(p / "optimizer.npz"),
     "unreadable: NotImplementedError: That compression method is not supported"),
    (lambda p: (p / "state.json").write_text("[" * 100_000 + "]" * 100_000),
     "unreadable: ValueError: not usable JSON (nested too deeply)"),
    (lambda p: _deflate_block_type_3(p / "params.npz"),
     "unreadable: error: Error -3 while decompressing data: invalid block type"),
])
def test_a_checkpoint_that_breaks_the_parsers_is_skipped_not_a_crash(tmp_path, damage, reason):
    run = _checkpoints(tmp_path, 2)
    damage(run.path / "checkpoints" / "epoch-0002")
    skipped = []
    assert latest_checkpoint(run.path, skipped=skipped)["epochs_done"] == 1
    assert skipped == [(run.path / "checkpoints" / "epoch-0002", reason)]
    assert run.epoch_checkpoint(2) is None and run.epoch_checkpoint(1)["epochs_done"] == 1


def test_an_error_without_text_is_named_by_its_type_alone(tmp_path):
    """A zip entry whose local header sits in the archive's comment, its data past the end of the
    file: zipfile (Python 3.11) raises an EOFError with no text; the reason is its type alone."""
    import struct

    run = _checkpoints(tmp_path, 2)
    p = run.path / "checkpoints" / "epoch-0002" / "params.npz"
    fake = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 100, 10, 5, 0) + b"w.npy"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("w.npy", b"x" * 10)
        zf.comment = fake
    data = bytearray(p.read_bytes())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 20, 100)                        # compressed size
    struct.pack_into("<I", data, central + 42, len(data) - len(fake))      # the local header's offset
    p.write_bytes(bytes(data))
    skipped = []
    assert latest_checkpoint(run.path, skipped=skipped)["epochs_done"] == 1
    assert skipped == [(run.path / "checkpoints" / "epoch-0002", "unreadable: EOFError: ")]


# ---------------------------------------------------------------- metrics.jsonl, run folders, leftovers
import fcntl  # noqa: E402
from pathlib import Path  # noqa: E402

from launcher.rundir import check_writable, make_run_dir  # noqa: E402


def test_a_link_planted_after_the_check_is_refused_by_the_open_itself(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_bytes(b"")
    checked = RunDir._inside

    def then_a_link_appears(self, name):
        target = checked(self, name)
        target.symlink_to(elsewhere)
        return target

    monkeypatch.setattr(RunDir, "_inside", then_a_link_appears)
    with pytest.raises(LrjobInputError) as e:
        run.append_metrics({"epoch": 1})
    assert str(e.value) == (f"{run.path / 'metrics.jsonl'}: is a symbolic link inside the run directory; "
                            f"lrjob follows no link there: remove it, or start a new run")
    assert elsewhere.read_bytes() == b""


def test_the_metrics_file_is_opened_non_blocking_and_close_on_exec(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    seen, fsync = [], os.fsync

    def spy(fd):
        if os.path.samefile(f"/proc/self/fd/{fd}", run.path / "metrics.jsonl"):
            seen.append((bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
                         bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    run.append_metrics({"epoch": 1})
    assert seen == [(True, True)]


def test_a_new_metrics_file_makes_its_name_durable_once(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    synced, real = [], rundir._fsync_dir
    monkeypatch.setattr(rundir, "_fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    run.append_metrics({"epoch": 1})
    assert synced == [run.path]
    run.append_metrics({"epoch": 2})
    assert synced == [run.path]


def _metrics_after_append(tmp_path, old: bytes) -> bytes:
    run = RunDir.create(tmp_path / "r")
    (run.path / "metrics.jsonl").write_bytes(old)
    run.append_metrics({"epoch": 9})
    return (run.path / "metrics.jsonl").read_bytes()


def test_a_torn_line_is_cut_after_the_last_whole_line_not_the_first(tmp_path):
    assert (_metrics_after_append(tmp_path, b'{"epoch": 1}\n{"epoch": 2}\n{"epo')
            == b'{"epoch": 1}\n{"epoch": 2}\n{"epoch": 9}\n')


def test_a_torn_line_is_cut_whatever_bytes_end_it(tmp_path):
    assert _metrics_after_append(tmp_path, b'{"epoch": 1, "tag": "XX\nXX') == b'{"epoch": 1, "tag": "XX\n{"epoch": 9}\n'


def test_only_the_last_64_kib_are_judged_for_a_torn_line(tmp_path):
    # 100 KiB of whole lines: the window ends at the end of the file, which ends a line
    lines = b"".join(b'{"epoch": %d, "pad": "%s"}\n' % (i, b"p" * 90) for i in range(1000))
    assert len(lines) > 1 << 16
    assert _metrics_after_append(tmp_path, lines) == lines + b'{"epoch": 9}\n'


def test_a_torn_line_of_64_kib_less_one_after_a_newline_is_cut_there(tmp_path):
    # the window's first byte is the newline: the line before is whole, the torn one goes
    old = b'{"epoch": 1}\n' + b"x" * ((1 << 16) - 1)
    assert _metrics_after_append(tmp_path, old) == b'{"epoch": 1}\n{"epoch": 9}\n'


def test_a_torn_line_longer_than_64_kib_is_named(tmp_path):
    run = RunDir.create(tmp_path / "r")
    old = b'{"epoch": 1}\n' + b"x" * (1 << 16)
    (run.path / "metrics.jsonl").write_bytes(old)
    with pytest.raises(LrjobInputError) as e:
        run.append_metrics({"epoch": 9})
    assert str(e.value) == (f"{run.path / 'metrics.jsonl'}: its last line is longer than 64 KiB and "
                            f"unfinished; remove it, or start a new run")
    assert (run.path / "metrics.jsonl").read_bytes() == old


def test_a_run_folder_is_made_with_its_missing_parents(tmp_path):
    path, created = make_run_dir(None, "n", base=tmp_path / "a" / "b")
    assert path.is_dir() and path.parent == tmp_path / "a" / "b"
    assert created == [tmp_path / "a", tmp_path / "a" / "b", path]
    out = tmp_path / "c" / "d" / "run"
    assert make_run_dir(out, "n") == (out, [tmp_path / "c", tmp_path / "c" / "d", out])
    assert out.is_dir()


@pytest.mark.parametrize("path, flag, where", [(Path("/proc/lrjob-none/run"), "--output", "/proc/lrjob-none/run"),
                                               (None, "--runs-dir", "/proc/lrjob-none")])
def test_a_run_folder_that_cannot_be_made_is_named_with_the_os_reason(path, flag, where):
    with pytest.raises(LrjobInputError) as e:
        make_run_dir(path, "n", base="/proc/lrjob-none")
    assert str(e.value) == f"{flag} {where}: not writable (No such file or directory); choose a writable directory"


def test_a_folder_that_refuses_the_probe_is_named_with_the_os_reason(tmp_path, monkeypatch):
    """os.access says yes (as it does to root, and on some mounts) but making the probe folder
    fails: the OS's reason is in the one line."""
    import errno

    real_mkdtemp = rundir.tempfile.mkdtemp

    def read_only(*args, dir=None, **kwargs):  # only the folder the run goes in refuses it
        if dir is not None and Path(dir) == tmp_path:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(rundir.tempfile, "mkdtemp", read_only)
    with pytest.raises(LrjobInputError) as e:
        check_writable(tmp_path / "run")
    assert str(e.value) == (f"--output {tmp_path / 'run'}: {tmp_path} is not writable (Read-only file system); "
                            f"choose a writable directory")


def test_a_checkpoints_file_or_link_is_not_cleaned(tmp_path):
    run = RunDir.create(tmp_path / "r")
    (run.path / "checkpoints").rmdir()
    (run.path / "checkpoints").write_text("not a folder")
    assert clean_leftovers(run.path) == []
    (run.path / "checkpoints").unlink()
    other = tmp_path / "other"
    (other / ".tmp-epoch-0001-abcd1234").mkdir(parents=True)
    (run.path / "checkpoints").symlink_to(other)
    assert clean_leftovers(run.path) == []
    assert (other / ".tmp-epoch-0001-abcd1234").is_dir()


def test_the_checkpoints_of_a_run_named_by_a_link_are_still_cleaned(tmp_path):
    run = RunDir.create(tmp_path / "r")
    (run.path / ".tmp-model-abcd1234").mkdir()
    (run.path / "checkpoints" / ".tmp-epoch-0001-abcd1234").mkdir(parents=True, exist_ok=True)
    (tmp_path / "link").symlink_to(run.path)
    # the run folder itself is a link: its own entries are left, its checkpoints/ is a real folder
    assert clean_leftovers(tmp_path / "link") == [tmp_path / "link" / "checkpoints" / ".tmp-epoch-0001-abcd1234"]
    assert (run.path / ".tmp-model-abcd1234").is_dir()


def test_a_leftover_folder_that_resists_removal_is_no_crash(tmp_path, monkeypatch):
    """A leftover the file system will not let go (EACCES on each entry: another user's folder,
    a read-only mount) is listed as found and the cleaning goes on, no crash."""
    import errno

    stuck = tmp_path / ".tmp-model-abcd1234" / "ro"
    stuck.mkdir(parents=True)
    (stuck / "params.npz").write_bytes(b"x")

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "unlink", refused)
    monkeypatch.setattr(os, "rmdir", refused)
    assert clean_leftovers(tmp_path) == [tmp_path / ".tmp-model-abcd1234"]
    monkeypatch.undo()
    assert (stuck / "params.npz").read_bytes() == b"x"


def _binary_2d(tmp_path):
    import dataclasses

    from launcher.spec import load_spec

    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0"])
    data = dataclasses.replace(spec.load_data(), stats={"mean": [0.5, -1.0], "std": [2.0, 4.0]}, scale=0.5)
    params = {"lrjob_layer0_weight": np.array([[1.0, -0.5]], np.float32),
              "lrjob_layer0_bias": np.array([0.25], np.float32)}
    return spec, data, params


def test_the_model_export_writes_serving_fields_through_a_hidden_folder(tmp_path, monkeypatch):
    """``RunDir.export_model``: meta.json has the standardization, the scale and the epoch the
    parameters are from; both exports are made in a hidden ``.tmp-model-*`` folder of the run,
    renamed to ``model`` (docs/design.md "Run directory")."""
    from lr_core import export

    spec, data, params = _binary_2d(tmp_path)
    run = RunDir.create(tmp_path / "r")
    seen = []
    real = export.export_onnx

    def recorded(directory):
        seen.append(directory)
        return real(directory)

    monkeypatch.setattr(export, "export_onnx", recorded)
    assert run.export_model(spec, data, params, {"epoch": 3, "selected_by": "val_loss"}) == []
    (where,) = seen
    assert where.parent == run.path and where.name.startswith(".tmp-model-") and not where.exists()
    meta = json.loads((run.model_dir / "meta.json").read_text())
    assert meta["standardize"] == {"mean": [0.5, -1.0], "std": [2.0, 4.0]} and meta["scale"] == 0.5
    assert meta["exported"] == {"epoch": 3, "selected_by": "val_loss"}
    assert sorted(p.name for p in run.model_dir.iterdir()) == ["meta.json", "model-0000.params",
                                                              "model-symbol.json", "model.onnx"]
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "model"]


def test_a_failed_onnx_export_is_a_warning_naming_the_model_folder(tmp_path, monkeypatch):
    """The ONNX export fails (the fault point of lr_core/faults.py): the MXNet model is in place and
    the warning names ``model/``, never the hidden folder it was made in, cut at 300 characters."""
    from lr_core import faults

    spec, data, params = _binary_2d(tmp_path)
    run = RunDir.create(tmp_path / ("run-" + "x" * 200))   # a long path: the cause is cut at 300 characters
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", {"at": "export", "format": "onnx", "action": "raise"})
    warnings = run.export_model(spec, data, params)
    final = run.model_dir
    cause = f"{final}: ONNX export failed (RuntimeError: injected fault at export {{'format': 'onnx'}})"
    assert len(cause) > 300
    assert warnings == [{"code": "onnx-export", "message": (
        f"{final / 'model.onnx'} not written ({cause[:300]}); the MXNet model in {final} is complete; "
        f"retry with: lrjob export {run.path} --format onnx")}]
    assert sorted(p.name for p in final.iterdir()) == ["meta.json", "model-0000.params", "model-symbol.json"]
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "model"]


def test_an_export_that_fails_raises_its_own_error_even_when_its_folder_resists_removal(tmp_path, monkeypatch):
    """The MXNet export fails half-way (a file written into the hidden folder); removing that folder
    fails too (the file system turned read-only): the export's own error is what the caller sees,
    not the clean-up's."""
    import errno
    import shutil

    from lr_core import export

    spec, data, params = _binary_2d(tmp_path)
    run = RunDir.create(tmp_path / "r")

    def half_written(directory, *args, **kwargs):
        (directory / "model-symbol.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    real_rmtree = shutil.rmtree
    monkeypatch.setattr(export, "export_model", half_written)
    monkeypatch.setattr(os, "unlink", read_only)
    monkeypatch.setattr(os, "rmdir", read_only)
    with pytest.raises(OSError) as e:
        run.export_model(spec, data, params)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    (left,) = [p for p in run.path.iterdir() if p.name.startswith(".tmp-model-")]
    real_rmtree(left)


# ---------------------------------------------------------------- the lock's refusals, replaced folders, created runs
import errno  # noqa: E402

from launcher.rundir import list_checkpoints  # noqa: E402


def test_a_run_directory_that_is_a_link_is_refused_with_the_reason_in_words(tmp_path):
    """The lock opens the run directory without following a link: a link to a folder is refused in
    one line with the OS's reason (its words, not ``[Errno ...]``), and nothing is written where it points."""
    (tmp_path / "target").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "target")
    with pytest.raises(LrjobInputError) as e:
        RunLock.acquire(tmp_path / "run")
    # Linux says ENOTDIR (O_DIRECTORY judges the link itself), other systems ELOOP
    assert str(e.value) in {f"{tmp_path / 'run'}: cannot lock the run directory ({os.strerror(code)}); "
                            f"choose another --output" for code in (errno.ENOTDIR, errno.ELOOP)}
    assert list((tmp_path / "target").iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(LrjobInputError) as e:
        RunLock.acquire(tmp_path / "f", "pick another run")
    assert str(e.value) == f"{tmp_path / 'f'}: cannot lock the run directory ({os.strerror(errno.ENOTDIR)}); pick another run"


def test_a_lock_the_system_refuses_is_one_line_with_the_reason_in_words(tmp_path, monkeypatch):
    """flock failing for another reason than a holder (ENOLCK: the kernel's lock table is full) is
    the same one line as a folder that cannot be opened, not the message about another process."""
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(LrjobInputError) as e:
        RunLock.acquire(tmp_path, "pick another run")
    assert str(e.value) == f"{tmp_path}: cannot lock the run directory ({os.strerror(errno.ENOLCK)}); pick another run"


def test_a_pid_file_that_cannot_be_written_is_one_line_with_the_reason_in_words(tmp_path):
    """A folder at ``.lock``: the pid file's rename fails (EISDIR); the message names the reason in words."""
    (tmp_path / ".lock").mkdir()
    with pytest.raises(LrjobInputError) as e:
        RunLock.acquire(tmp_path)
    assert str(e.value) == (f"{tmp_path / '.lock'}: cannot write the lock's pid file ({os.strerror(errno.EISDIR)}); "
                            f"remove it, or choose another --output")


@pytest.mark.parametrize("kind", ["file", "link to a folder"])
def test_what_a_finished_folder_replaces_is_removed_not_left_aside(tmp_path, kind):
    """A file or a link (to a folder) in the final place is moved aside and then removed, not left as
    a hidden ``.old-`` leftover; a link's target is left as it was."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep").write_text("keep")
    parent = tmp_path / "p"
    parent.mkdir()
    final, tmp = parent / "final", parent / ".tmp-final"
    if kind == "file":
        final.write_text("old")
    else:
        final.symlink_to(tmp_path / "elsewhere")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    rundir._replace_dir(tmp, final)
    assert os.listdir(parent) == ["final"]
    assert not final.is_symlink() and (final / "new").read_text() == "new"
    assert (tmp_path / "elsewhere" / "keep").read_text() == "keep"


def test_a_stray_file_named_like_a_checkpoint_is_replaced_by_it(tmp_path):
    run = RunDir.create(tmp_path / "r")
    (run.path / "checkpoints" / "epoch-0001").write_text("stray")
    path = run.write_checkpoint(_state(1), "d1", [], keep=5)
    assert os.listdir(run.path / "checkpoints") == ["epoch-0001"]
    assert load_checkpoint(path)["epochs_done"] == 1


def test_a_checkpoint_whose_state_json_is_a_link_is_not_one(tmp_path):
    """A folder whose ``state.json`` links to a real checkpoint's is no checkpoint (no link is followed in a run)."""
    run = RunDir.create(tmp_path / "r")
    first = run.write_checkpoint(_state(1), "d1", [], keep=5)
    second = run.path / "checkpoints" / "epoch-0002"
    second.mkdir()
    (second / "state.json").symlink_to(first / "state.json")
    assert list_checkpoints(run.path) == [first]
    assert run.latest_checkpoint()["epochs_done"] == 1


def test_a_run_created_with_its_spec_holds_its_job_yaml(tmp_path):
    from launcher.spec import load_spec

    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0"])
    run = RunDir.create(tmp_path / "r", spec)
    assert (run.path / "job.yaml").read_text() == spec.to_yaml()
    assert RunDir.open(run.path).spec().to_yaml() == spec.to_yaml()
    assert (run.path / "checkpoints").is_dir()
