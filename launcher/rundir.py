"""The run directory (docs/design.md#run-directory): ``RunDir`` is its one writer and its
one reader. Only the driver writes it; every command that reads a run opens it here.

    runs/<name>-<UTC timestamp>/
      job.yaml  env.json  metrics.jsonl  summary.json
      checkpoints/epoch-NNNN/   (params.npz, optimizer.npz, state.json; atomic)
      model/                    (exported symbol + params + meta.json, model.onnx)

Checkpoints are written into a hidden temporary folder, fsynced, then renamed: a crash
at any moment leaves the old or the new checkpoint, never a torn one. Every file and
folder is written under a temporary name and renamed, ``model/`` included (``metrics.jsonl``
gets one line appended and fsynced per epoch, and is rewritten that way on resume); no symbolic link inside a run directory is followed (``check_no_links``). A driver holds ``RunLock`` on the directory for the whole
run (docs/design.md#run-directory).

    run = RunDir.open("runs/binary_synthetic-20261125T120000Z")
    run.spec(), run.history(), run.summary(), run.latest_checkpoint(), run.model()
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import lzma
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from lr_core import faults
from lr_core.errors import LrjobInputError
from lr_core.files import load_json

__all__ = ["RunDir", "RunLock", "make_run_dir", "check_writable", "check_no_links",
           "atomic_write_text", "atomic_write_bytes", "list_checkpoints", "load_checkpoint", "latest_checkpoint",
           "checkpoint_problem", "clean_leftovers", "run_state", "remove_if_empty", "LOCK_NAME"]

LOCK_NAME = ".lock"
# epoch-0012, epoch-0012-step-00000500: ordered by (epochs, step) as numbers, not as text
_CHECKPOINT_NAME = re.compile(r"epoch-(\d+)(?:-step-(\d+))?")
# What a killed writer leaves behind, by the exact names lrjob gives them (docs/design.md#run-directory):
# mkstemp/mkdtemp add 8 characters of [a-z0-9_]; a folder moved aside gets the writer's pid.
_TMP = r"[a-z0-9_]{8}"
_LEFTOVER_IN = {
    "": re.compile(rf"\.tmp-model-{_TMP}|\.old-model-\d+|\.(job\.yaml|env\.json|summary\.json|metrics\.jsonl|"
                   rf"report\.html|(curves|confusion|samples|boundary|roc_pr|weights)\.png|\.lock)\.{_TMP}"),
    "checkpoints": re.compile(rf"\.tmp-epoch-\d{{4,}}(-step-\d{{8,}})?-{_TMP}|"
                              rf"\.old-epoch-\d{{4,}}(-step-\d{{8,}})?-\d+"),
}


def utc_stamp() -> str:
    """The current UTC time as ``YYYYMMDDTHHMMSSZ``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def make_run_dir(path: Path | None, name: str, base: str | os.PathLike = "runs") -> tuple[Path, list[Path]]:
    """Create the run directory: ``path``, or (``path`` None) ``<base>/<name>-<UTC stamp>`` with
    ``-2``, ``-3``, ... appended when that name is taken. ``os.mkdir`` is the arbiter, so two
    processes started in the same second get two folders. Returns the path and the folders this
    call created, outermost first ([] when ``path`` existed: the caller judges what it holds)."""
    target = Path(path) if path is not None else Path(base)
    flag = "--output" if path is not None else "--runs-dir"
    created = [p for p in [*reversed(target.parents), target] if not p.exists()]
    try:
        if path is None:
            target.mkdir(parents=True, exist_ok=True)
            stamp, i = utc_stamp(), 1
            while True:
                candidate = target / (f"{name}-{stamp}" if i == 1 else f"{name}-{stamp}-{i}")
                try:
                    os.mkdir(candidate)
                    return candidate, [*created, candidate]
                except FileExistsError:
                    i += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(target)
        except FileExistsError:
            if target.is_symlink() or not target.is_dir():
                raise LrjobInputError(f"--output {target}: exists and is not a directory; "
                                      f"choose another path") from None
            return target, []
        return target, created
    except OSError as e:  # a folder that refuses new entries (/proc, a read-only mount): one line
        remove_if_empty(created)
        raise LrjobInputError(f"{flag} {target}: not writable ({e.strerror or e}); "
                              f"choose a writable directory") from None


def remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (outermost first, as ``make_run_dir`` lists them) that are empty, innermost first."""
    for folder in reversed(folders):
        try:
            os.rmdir(folder)
        except OSError:
            return


class RunLock:
    """An exclusive ``flock`` on the run directory itself (a directory fd opened with
    ``O_NOFOLLOW``), held by the one process that writes the run (a new run, a continued one, a
    resume). No file is locked, so no file can be unlinked, replaced or linked to defeat it;
    the kernel drops it when the process dies, so a SIGKILLed driver never leaves a stale lock.
    The holder's pid, for the message a second process prints, is written atomically to
    ``<run>/.lock``, a file never opened for the lock and removed by ``release``."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run: str | os.PathLike, other: str = "choose another --output") -> "RunLock":
        """Lock the run directory ``run``; a one-line ``LrjobInputError`` naming it when another
        process holds it, or when it cannot be locked (``other``: the way out the message offers
        besides waiting)."""
        run = Path(run)
        try:
            fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise LrjobInputError(f"{run}: cannot lock the run directory ({e.strerror or e}); "
                                  f"{other}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LrjobInputError(f"{run}: another lrjob process (pid {_holder_pid(run / LOCK_NAME)}) is "
                                      f"writing this run directory; wait for it to end, or {other}") from None
            raise LrjobInputError(f"{run}: cannot lock the run directory ({e.strerror or e}); "
                                  f"{other}") from None
        lock = run / LOCK_NAME
        try:
            if lock.is_symlink():
                raise LrjobInputError(f"{lock}: is a symbolic link inside the run directory; lrjob "
                                      f"follows no link there: remove it")
            atomic_write_text(lock, f"{os.getpid()}\n")  # a rename: a FIFO or a hard link there is replaced
        except (OSError, LrjobInputError) as e:
            os.close(fd)
            if isinstance(e, LrjobInputError):
                raise
            raise LrjobInputError(f"{lock}: cannot write the lock's pid file ({e.strerror or e}); "
                                  f"remove it, or choose another --output") from None
        return cls(lock, fd)

    def release(self) -> None:
        """Remove the pid file and drop the lock; safe to call twice."""
        if self._fd is None:
            return
        try:
            if not self.path.is_symlink() and self.path.is_file():
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def _holder_pid(path: Path) -> str:
    """The pid in the lock's pid file, or ``?``: read without following a link or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "?"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "?"
        text = os.read(fd, 32).decode(errors="replace").strip()
        return text if text.isdigit() else "?"
    except OSError:
        return "?"
    finally:
        os.close(fd)


def check_no_links(run: str | os.PathLike) -> None:
    """Refuse (one line, exit 2) a run directory holding a symbolic link anywhere inside it:
    a planted link would make the driver write or delete outside the run."""
    for top, dirs, files in os.walk(run, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(top) / name
            if p.is_symlink():
                raise LrjobInputError(f"{p}: is a symbolic link inside the run directory; lrjob follows no "
                                      f"link there: remove it, or start a new run")


def clean_leftovers(run: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer left in ``run`` and its ``checkpoints/``: hidden temporary
    folders and files (``.tmp-model-XXXXXXXX``, ``.tmp-epoch-NNNN-XXXXXXXX``, ``.<file>.XXXXXXXX``)
    and folders moved aside (``.old-model-PID``, ``.old-epoch-NNNN-PID``), by the exact names lrjob
    gives them: nothing else is touched. A complete folder moved aside whose place is empty (a
    writer killed between the two renames of ``_replace_dir``) is put back instead. Call it only
    while holding the run's ``RunLock`` on a folder that holds a run (``run_state``): then no live
    process writes them. Returns what was removed."""
    removed = []
    for sub, pattern in _LEFTOVER_IN.items():
        folder = Path(run) / sub if sub else Path(run)
        if folder.is_symlink() or not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if not pattern.fullmatch(p.name):
                continue
            if _restore_aside(p):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _restore_aside(p: Path) -> bool:
    """Put ``.old-<name>-PID`` back as ``<name>`` when a writer was killed between moving ``<name>``
    aside and renaming its replacement into place (``_replace_dir``): the folder moved aside is
    complete (a ``state.json`` or a ``meta.json`` in it) and nothing holds its name. True when it
    was put back."""
    m = re.fullmatch(r"\.old-(.+)-\d+", p.name)
    if not m or p.is_symlink() or not p.is_dir():
        return False
    final = p.parent / m.group(1)
    if os.path.lexists(final) or not any((p / f).is_file() for f in ("state.json", "meta.json")):
        return False
    os.replace(p, final)
    _fsync_dir(p.parent)
    return True


def run_state(path: str | os.PathLike) -> str:
    """What the existing folder ``path`` holds, judged read-only before anything is locked or
    cleaned (docs/design.md#run-directory): ``"run"`` (a ``job.yaml`` or a checkpoint with a
    ``state.json``), ``"new"`` (empty, or only what lrjob leaves before its first file: the lock's
    pid file, an empty ``checkpoints/``, a temporary ``.job.yaml.XXXXXXXX``) or ``"other"``
    (anything else: not lrjob's, refused untouched)."""
    path = Path(path)
    names = os.listdir(path)
    if "job.yaml" in names:
        return "run"
    ck = path / "checkpoints"
    if "checkpoints" in names and not ck.is_symlink() and ck.is_dir():
        inside = os.listdir(ck)
        if any(_CHECKPOINT_NAME.fullmatch(n) and os.path.lexists(ck / n / "state.json") for n in inside):
            return "run"
        if not inside:
            names.remove("checkpoints")
    if all(n == LOCK_NAME or re.fullmatch(rf"\.(job\.yaml|\.lock)\.{_TMP}", n) for n in names):
        return "new"
    return "other"


def check_writable(path: Path, flag: str = "--output") -> None:
    """Fail early (exit 2) when the run directory (``--output``) or its parent folder
    (``--runs-dir``) cannot be created."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise LrjobInputError(f"{flag} {path}: {probe} is a file, not a directory; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LrjobInputError(f"{flag} {path}: {probe} is not writable; choose a writable directory")
    try:  # os.access says yes to root and on some mounts: try for real, leave nothing
        os.rmdir(tempfile.mkdtemp(prefix=".lrjob-probe-", dir=probe))
    except OSError as e:
        raise LrjobInputError(f"{flag} {path}: {probe} is not writable ({e.strerror or e}); "
                              f"choose a writable directory") from None


def _umask() -> int:
    """The process umask, read from ``/proc/self/status`` (``Umask:``): ``os.umask`` can only read it
    by setting it, which would briefly give 0 to files other threads create meanwhile. Where that
    line is missing, the umask read once at import."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def _read_umask_once() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _read_umask_once()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str | Iterable[str]) -> None:
    """Write ``text`` (a string, or pieces written as they come) to ``path`` through a
    temporary file in the same folder, fsynced, then renamed: readers see the old content
    or the new, never a part. The rename replaces a link at ``path``, never follows it."""
    _atomic_write(path, [text] if isinstance(text, str) else text, "w")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write_text`` for bytes (pictures)."""
    _atomic_write(path, [data], "wb")


def _atomic_write(path: Path, pieces: Iterable, mode: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; others may read a run
        with os.fdopen(fd, mode) as f:
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself is durable: a crash cannot bring the old file back
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _mkdtemp(prefix: str, parent: Path) -> Path:
    """A new hidden folder in ``parent`` with the mode a plain ``mkdir`` gives (``mkdtemp`` makes 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _replace_dir(tmp: Path, final: Path, after_aside=None) -> None:
    """Rename the finished folder ``tmp`` to ``final``; an existing ``final`` is moved aside first
    and removed after."""
    if final.exists() or final.is_symlink():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        if after_aside:
            after_aside()
        os.replace(tmp, final)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, final)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def dumps(obj) -> str:
    """``obj`` as JSON; NumPy scalars and arrays become numbers and lists."""
    return json.dumps(obj, default=_json_default)


def _checkpoint_order(path: Path) -> tuple[int, int]:
    m = _CHECKPOINT_NAME.fullmatch(path.name)
    return int(m.group(1)), int(m.group(2) or 0)


def list_checkpoints(run: Path) -> list[Path]:
    """The complete checkpoint folders (``epoch-NNNN`` or ``epoch-NNNN-step-SSSSSSSS`` with a
    ``state.json``) of the run at ``run``, oldest first in numeric order (epoch 10000 after 9999).
    Symbolic links are not checkpoints."""
    d = Path(run) / "checkpoints"
    if d.is_symlink() or not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _CHECKPOINT_NAME.fullmatch(p.name) and not p.is_symlink()
                   and p.is_dir() and (p / "state.json").is_file() and not (p / "state.json").is_symlink()),
                  key=_checkpoint_order)


# summary.json and env.json hold a few KB (a linear model's coefficients: at most 10,000
# weights); read no more than this of either, whatever the file is (lr_core.files).
MAX_JSON_BYTES = 16 << 20


def _read_json(path: Path) -> dict | None:
    """``path`` as JSON; None when missing, unreadable, too large, too deep or not JSON."""
    try:
        return load_json(path, MAX_JSON_BYTES)
    except (OSError, ValueError):
        return None


# state.json holds the history and a mid-epoch checkpoint's step losses: a few MB for the
# longest runs; a larger one, or one nested past the parser's depth, is a damaged checkpoint.
MAX_STATE_BYTES = 256 << 20


def load_checkpoint(path: Path) -> dict:
    """Read one checkpoint (no pickles: npz with allow_pickle=False and JSON)."""
    state = load_json(path / "state.json", MAX_STATE_BYTES)
    params, opt = _load_npz(path / "params.npz"), _load_npz(path / "optimizer.npz")
    return {"params": params, "optimizer_arrays": opt, "optimizer_meta": state["optimizer_meta"],
            "epochs_done": int(state["epochs_done"]), "spec_digest": state.get("spec_digest"),
            "step": int(state.get("data_cursor", {}).get("step", 0)), "step_losses": state.get("step_losses", []),
            "data_key": state.get("data_key"), "workers": state.get("workers"),
            "history": state.get("history", []), "path": str(path)}


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (no pickles), each member's ``.npy`` header checked before its data
    is read: the bytes its shape and dtype need must be the bytes its zip entry holds, and those
    must fit in the file on disk (a stored entry; a deflated one at most 1032:1, zlib's limit). A
    lying header is a ``ValueError`` here, never a huge allocation."""
    on_disk = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            limit = on_disk if info.compress_type == zipfile.ZIP_STORED else 1032 * info.compress_size
            if info.file_size > limit:
                raise ValueError(f"{info.filename}: its zip entry claims {info.file_size} bytes, "
                                 f"the file holds {on_disk}")
            if info.flag_bits & 0x1:  # zipfile would ask for a password (a RuntimeError)
                raise ValueError(f"{info.filename}: its zip entry is marked encrypted")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(f)
                if dtype.hasobject:
                    continue  # np.load refuses it below (allow_pickle=False)
                need = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if f.tell() + need != info.file_size:
                    raise ValueError(f"{info.filename}: its header says {dtype} {tuple(shape)} ({need} bytes), "
                                     f"the entry holds {info.file_size - f.tell()}")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# what reading a damaged checkpoint raises; zlib.error, lzma.LZMAError: an entry whose compressed data
# is damaged; NotImplementedError: a compression method zipfile cannot read
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, MemoryError, zipfile.BadZipFile,
               zlib.error, lzma.LZMAError, NotImplementedError)


def latest_checkpoint(run: Path, problem=None, skipped: list | None = None) -> dict | None:
    """The newest checkpoint that reads back whole (a damaged one is skipped). With
    ``problem`` (a checkpoint -> reason or None, e.g. ``checkpoint_problem``), also skip the
    ones it finds fault with; each skipped one is appended to ``skipped`` as (path, reason)."""
    for path in reversed(list_checkpoints(run)):
        try:
            ckpt = load_checkpoint(path)
            reason = problem(ckpt) if problem else None
        except _UNREADABLE as e:
            reason = f"unreadable: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
        if reason is None:
            return ckpt
        if skipped is not None:
            skipped.append((path, reason))
    return None


def checkpoint_problem(ckpt: dict, digest: str, params: dict[str, np.ndarray],
                       steps: int | None = None, data_key: str | None = None) -> str | None:
    """Why ``ckpt`` cannot continue a run of spec digest ``digest`` whose model has the
    parameters ``params`` (name -> an array of the right shape and dtype) and ``steps`` steps per
    epoch, or None when it can. A checkpoint of another spec is *not* a problem here (the caller
    refuses it). Its ``state.json`` must agree with itself: a history of ``epochs_done`` epochs,
    ``0 <= step < steps``, one loss per finished step, and the folder name of that epoch and step.
    ``steps`` counts the steps of the data prepared as ``data_key``: a checkpoint of other data is
    not measured by it (the caller refuses that checkpoint)."""
    if not ckpt.get("spec_digest"):
        return "it records no spec_digest, so the spec it belongs to cannot be checked"
    if ckpt["spec_digest"] != digest:
        return None
    done, step = ckpt["epochs_done"], ckpt["step"]
    history, losses = ckpt["history"], ckpt["step_losses"]
    if done < 0:
        return f"its epochs_done {done} is negative"
    if not isinstance(history, list) or len(history) != done:
        return f"its history holds {len(history) if isinstance(history, list) else 'no list of'} epochs, " \
               f"its epochs_done is {done}"
    other_data = bool(data_key and ckpt.get("data_key") and ckpt["data_key"] != data_key)
    if step < 0 or (steps is not None and not other_data and step >= steps):
        return f"its data_cursor.step {step} is not a step of an epoch of {steps} steps"
    if not isinstance(losses, list) or len(losses) != step:
        return f"it holds {len(losses) if isinstance(losses, list) else 'no list of'} step losses, " \
               f"its data_cursor.step is {step}"
    name = f"epoch-{done:04d}" + (f"-step-{step:08d}" if step else "")
    if ckpt.get("path") and Path(ckpt["path"]).name != name:
        return f"its state.json says {name}, the folder is {Path(ckpt['path']).name}"
    got = ckpt["params"]
    if sorted(got) != sorted(params):
        return f"its parameters are {', '.join(sorted(got)) or 'none'}, the model has {', '.join(sorted(params))}"
    for name, want in params.items():
        a = got[name]
        if a.shape != want.shape or a.dtype != want.dtype:
            return f"{name} is {a.dtype} {a.shape}, the model needs {want.dtype} {want.shape}"
        if not np.all(np.isfinite(a)):
            return f"{name} holds NaN or infinite values"
    # gluon.Trainer numbers the parameters in the sorted order of their names
    shapes = [params[name].shape for name in sorted(params)]
    meta, arrays = ckpt["optimizer_meta"], ckpt["optimizer_arrays"]
    if not isinstance(meta, dict) or not isinstance(meta.get("layout", {}), dict):
        return "its optimizer_meta is not a mapping"
    for key, kind in meta.get("layout", {}).items():
        if not str(key).isdigit() or int(key) >= len(shapes):
            return f"its optimizer state names parameter {key!r}, the model has {len(shapes)}"
        if kind == "none":
            continue
        tuple_of = re.fullmatch(r"tuple(\d{1,6})", kind) if isinstance(kind, str) else None
        if kind != "array" and (tuple_of is None or int(tuple_of.group(1)) > len(arrays)):
            return f"its optimizer state has an unknown layout {kind!r}"  # tupleN: N arrays, not more than it holds
        names = [str(key)] if kind == "array" else [f"{key}.{j}" for j in range(int(tuple_of.group(1)))]
        for n in names:
            if n not in arrays or arrays[n].shape != shapes[int(key)]:
                return f"optimizer state {n} is missing or not of shape {shapes[int(key)]}"
    return None


class RunDir:
    """Reads and writes the files of one run. ``create`` makes the folder (the driver);
    ``open`` reads an existing one (every other command)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        # The epoch whose end-of-epoch checkpoint pruning spares (checkpoint.keep_best: the
        # best epoch so far, set by the driver); None: only the newest ``keep`` stay.
        self.best_epoch: int | None = None

    @classmethod
    def create(cls, path: str | os.PathLike, spec=None) -> "RunDir":
        """The run directory at ``path``, created with its ``job.yaml`` (``spec``, when given) and
        then its ``checkpoints/`` folder: ``job.yaml`` first, so a run killed in between is either
        a folder of lrjob's leftovers only (started anew in place) or a run (``run_state``)."""
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        if spec is not None:
            run.write_spec(spec)
        run._inside("checkpoints").mkdir(exist_ok=True)
        return run

    def _inside(self, name: str) -> Path:
        """``path/name`` for writing, after checking that neither it nor a folder between it and the
        run directory is a symbolic link (a link planted after the start is refused here too)."""
        target = self.path
        for part in Path(name).parts:
            target = target / part
            if target.is_symlink():
                raise LrjobInputError(f"{target}: is a symbolic link inside the run directory; lrjob follows "
                                      f"no link there: remove it, or start a new run")
        return target

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDir":
        """An existing run directory; a one-line input error when ``path`` is not a folder."""
        run = cls(path)
        if not run.path.is_dir():
            raise LrjobInputError(f"{path}: no such run directory")
        return run

    # ------------------------------------------------------------------ reading
    @property
    def spec_file(self) -> Path:
        """The path of the run's ``job.yaml`` (it may not exist)."""
        return self.path / "job.yaml"

    def spec(self):
        """The run's resolved job spec (``JobSpec``) from ``job.yaml``, or None without one;
        a damaged file is a one-line ``SpecError``."""
        from .spec import load_spec

        return load_spec(self.spec_file, run_file=True) if self.spec_file.is_file() else None

    def spec_dict(self) -> dict:
        """``job.yaml`` as a plain mapping ({} when absent or not a mapping), unvalidated."""
        from .spec import read_spec_yaml

        doc = read_spec_yaml(self.spec_file) if self.spec_file.is_file() else None
        return doc if isinstance(doc, dict) else {}

    def history(self) -> list[dict]:
        """One dict per finished epoch, from ``metrics.jsonl`` ([] before the first); an unfinished
        last line (a writer killed while appending) is not an epoch."""
        f = self.path / "metrics.jsonl"
        if not f.is_file():
            return []
        # every whole line ends with a newline: text after the last one is a line a crash tore
        whole = f.read_text().rpartition("\n")[0]
        return [json.loads(line) for line in whole.splitlines() if line.strip()]

    def summary(self) -> dict | None:
        """``summary.json``, or None when it is missing or unreadable."""
        return _read_json(self.path / "summary.json")

    def env(self) -> dict | None:
        """``env.json``, or None when it is missing or unreadable."""
        return _read_json(self.path / "env.json")

    @property
    def model_dir(self) -> Path:
        """The path of the exported model, ``model/``."""
        return self.path / "model"

    def model(self):
        """The exported model (``lr_core.export.ExportedModel``)."""
        from lr_core.export import ExportedModel

        return ExportedModel(self.model_dir)

    def checkpoints(self) -> list[Path]:
        """The complete checkpoint folders, oldest first."""
        return list_checkpoints(self.path)

    def latest_checkpoint(self) -> dict | None:
        """The newest checkpoint that reads back whole (a damaged one is skipped)."""
        return latest_checkpoint(self.path)

    def epoch_checkpoint(self, epoch: int) -> dict | None:
        """The checkpoint written at the end of epoch ``epoch`` (1-based), read back whole; None
        when it is missing or unreadable."""
        path = self.path / "checkpoints" / f"epoch-{int(epoch):04d}"
        if path not in list_checkpoints(self.path):
            return None
        try:
            return load_checkpoint(path)
        except _UNREADABLE:
            return None

    # ------------------------------------------------------------------ writing
    def write_spec(self, spec) -> None:
        """Write the resolved spec to ``job.yaml``, atomically."""
        self.write_text("job.yaml", spec.to_yaml())

    def export_model(self, spec, data, params: dict, exported: dict | None = None) -> list[dict]:
        """Export the trained model into ``model/`` with what serving needs to know: the
        MXNet export and ``model.onnx``; ``exported`` names the epoch the parameters are from
        (``{"epoch": k, "selected_by": ...}``). Returns the warnings (``{code, message}``): an
        ONNX export that fails leaves the MXNet model and is a warning, never a failure
        (docs/design.md#onnx-export)."""
        from lr_core.export import export_model, export_onnx

        meta = {"job": spec.name, "source": data.source, "image_shape": list(data.image_shape or []),
                "columns": data.extra.get("columns", []), "label_column": spec.data.label_column,
                "label_map": spec.data.label_map, "standardize": data.stats, "scale": data.scale}
        if exported is not None:
            meta["exported"] = dict(exported)
        final = self._inside("model")
        warnings = []
        # exported into a hidden folder, then renamed: a crash leaves the old model or the new one
        tmp = _mkdtemp(".tmp-model-", self.path)
        try:
            export_model(tmp, spec.loop_config(), params, data.num_features, meta)
            try:
                export_onnx(tmp)
            except Exception as e:  # noqa: BLE001 - the MXNet model stands; the run goes on
                warnings.append({"code": "onnx-export", "message": (
                    f"{final / 'model.onnx'} not written ({str(e).replace(str(tmp), str(final))[:300]}); "
                    f"the MXNet model in {final} is "
                    f"complete; retry with: lrjob export {self.path} --format onnx")})
            for f in tmp.iterdir():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
            _replace_dir(tmp, final)
            _fsync_dir(self.path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return warnings

    def write_json(self, name: str, obj) -> None:
        """Write ``obj`` as indented JSON to the file ``name``, atomically."""
        atomic_write_text(self._inside(name), json.dumps(obj, indent=2, default=_json_default) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """Write ``text`` to the file ``name``, atomically."""
        atomic_write_text(self._inside(name), text)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` to the file ``name``, atomically."""
        atomic_write_bytes(self._inside(name), data)

    def append_metrics(self, metrics: dict) -> None:
        """Add one epoch's metrics as a line at the end of ``metrics.jsonl``, fsynced: one line's
        bytes per epoch, not the whole file (docs/design.md#run-directory). The file is opened
        with ``O_NOFOLLOW`` and must be a regular file with one name (no link, hard link or FIFO
        is written through); a torn last line left by a killed writer is cut off first."""
        path = self._inside("metrics.jsonl")
        line = (json.dumps(metrics, default=_json_default) + "\n").encode()
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise LrjobInputError(f"{path}: is a symbolic link inside the run directory; lrjob follows "
                                      f"no link there: remove it, or start a new run") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise LrjobInputError(f"{path}: is not a regular file of this run alone (a FIFO, a device or a "
                                      f"hard link); remove it, or start a new run")
            if st.st_size:
                tail = os.pread(fd, min(st.st_size, 1 << 16), max(0, st.st_size - (1 << 16)))
                if not tail.endswith(b"\n"):  # torn by a crash: keep the whole lines only
                    cut = tail.rfind(b"\n")
                    if cut < 0 and st.st_size > len(tail):
                        raise LrjobInputError(f"{path}: its last line is longer than 64 KiB and unfinished; "
                                              f"remove it, or start a new run")
                    os.ftruncate(fd, st.st_size - len(tail) + cut + 1)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not st.st_size:
            _fsync_dir(self.path)  # a new file: its name is durable too

    def rewrite_metrics(self, history: list[dict]) -> None:
        """Replace ``metrics.jsonl`` with ``history``, one line per epoch, atomically (resume, restart)."""
        atomic_write_text(self._inside("metrics.jsonl"),
                          "".join(json.dumps(m, default=_json_default) + "\n" for m in history))

    def write_checkpoint(self, state: dict, spec_digest: str, history: list[dict], keep: int,
                         data_key: str | None = None) -> Path:
        """Save ``state`` with ``spec_digest`` and ``history`` as ``checkpoints/epoch-NNNN``: written into a
        hidden temporary folder, fsynced, then renamed (replacing one of the same epoch); prunes the
        ones up to it to the newest ``keep``, never the best epoch's (``best_epoch``,
        ``checkpoint.keep_best``). Returns the final path."""
        epochs_done, step = int(state["epochs_done"]), int(state.get("step", 0))
        root = self._inside("checkpoints")
        root.mkdir(exist_ok=True)
        # epoch-0002 (2 epochs done) < epoch-0002-step-00000500 (500 steps into the 3rd) < epoch-0003
        name = f"epoch-{epochs_done:04d}" + (f"-step-{step:08d}" if step else "")
        final = self._inside(f"checkpoints/{name}")
        tmp = _mkdtemp(f".tmp-{name}-", root)
        try:
            with open(tmp / "params.npz", "wb") as f:
                np.savez(f, **state["params"])
                f.flush()
                os.fsync(f.fileno())
            faults.hit("checkpoint", epoch=epochs_done, stage="params")
            with open(tmp / "optimizer.npz", "wb") as f:
                np.savez(f, **state["optimizer_arrays"])
                f.flush()
                os.fsync(f.fileno())
            meta = {"epochs_done": epochs_done, "spec_digest": spec_digest, "data_key": data_key,
                    # the worker count that trained the state (a continuation changes from it), when given
                    "workers": state.get("workers"),
                    "optimizer_meta": state["optimizer_meta"], "history": history,
                    "data_cursor": {"next_epoch": epochs_done, "step": step,
                                    "note": "epoch order = permutation(seed, epoch)"},
                    # the finished steps' loss sums of the epoch in progress (its train_loss needs them)
                    "step_losses": list(state.get("step_losses", [])) if step else []}
            with open(tmp / "state.json", "w") as f:
                f.write(json.dumps(meta, default=_json_default))
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            faults.hit("checkpoint", epoch=epochs_done, stage="written")
            _replace_dir(tmp, final, lambda: faults.hit("checkpoint", epoch=epochs_done, stage="swapping"))
            _fsync_dir(root)
            faults.hit("checkpoint", epoch=epochs_done, stage="renamed")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        # Only checkpoints up to this one count: a newer one left by an earlier attempt (damaged,
        # skipped on resume) must not push the one just written out.
        upto = [p for p in list_checkpoints(self.path) if _checkpoint_order(p) <= _checkpoint_order(final)
                and _checkpoint_order(p) != (self.best_epoch, 0)]
        for old in upto[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final
