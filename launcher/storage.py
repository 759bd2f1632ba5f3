"""Run directories on shared storage (docs/design.md#storage): ``--output`` or ``--resume`` as a
``pyarrow.fs`` URI (``s3://``, ``gs://``, ``file://``).

    lrjob run jobs/binary_synthetic.yaml --workers 0 \\
        --output 's3://lrjob/runs/demo?endpoint_override=127.0.0.1:9000&scheme=http'

The run is written to a local *staging* run directory, exactly as a local run is
(``launcher/rundir.py``: the lock, atomic writes, no links), under
``<--runs-dir>/.staging/``; ``RemoteRun.sync`` copies it to the URI as it grows, the way Ray
Train's ``RunConfig(storage_path)`` does. Each checkpoint folder is uploaded file by file, its
``manifest.json`` (the name, size and SHA-256 of every file) LAST: a checkpoint without it,
or whose files do not match it, is an upload that did not finish and is never read as
complete. Before the driver starts, ``RemoteRun.stage`` downloads the run's ``job.yaml`` (with
``mlflow.json``, ``summary.json`` and ``env.json``, the record a continued run carries on) and
its complete checkpoints into the staging directory, so the same command again (or
``--resume URI``) continues from the newest complete checkpoint.

The one reader and writer of the remote copy is this module; the driver calls
``open_remote`` before anything is written and ``RemoteRun.sync`` after each epoch and at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import socket
import sys
from pathlib import Path, PurePosixPath

from lr_core import faults
from lr_core.errors import LrjobInputError, LrjobRuntimeError
from lr_core.tables import display, is_uri

__all__ = ["RemoteRun", "StorageError", "is_remote", "open_remote", "without_login", "without_logins", "MANIFEST",
           "STAGING", "STAGED_URI", "staged_uri", "write_staged_uri"]

MANIFEST = "manifest.json"  # in every uploaded checkpoint folder, written last
STAGING = ".staging"        # under --runs-dir: the local copies of remote runs
STAGED_URI = "storage.json"  # in a staging copy: the URI it is uploaded to (never uploaded itself)
_CHECKPOINT = re.compile(r"epoch-\d+(?:-step-\d+)?")
_PROBE = re.compile(r"\.lrjob-probe-[0-9a-f]{8}")  # check_access's object, left by a driver killed in between
# A probe older than this is left over, whoever wrote it (a live check writes and removes it in seconds).
PROBE_STALE_S = 900.0
_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")  # a file a manifest may name
# What is downloaded besides checkpoints: the spec and the MLflow run a tracked resume reopens, read
# up to 1 MiB (a spec file holds at most that: docs/design.md#job-spec), and, beside a job.yaml, the
# record a continued run carries on (docs/design.md#failures-and-restarts), read up to the 16 MiB
# a local run reads of them.
_STAGED = ("job.yaml", "mlflow.json")
_RECORDS = ("summary.json", "env.json")
_MAX_SMALL_FILE = 1 << 20
_MAX_RECORD = 16 << 20  # rundir.MAX_JSON_BYTES
# The files of a run directory that are uploaded at every sync, and those only at the end.
_EVERY_SYNC = ("job.yaml", "env.json", "metrics.jsonl", "summary.json", "mlflow.json")
_AT_END = ("report.html", "curves.png", "confusion.png", "samples.png", "boundary.png")
_HINT = ("check the URI, its endpoint (a server other than AWS: ?endpoint_override=host:port&scheme=http) "
         "and the credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")


class StorageError(LrjobRuntimeError):
    """An upload to the run's storage failed during the run (exit 1); the message names the
    local staging directory, which holds everything."""


def is_remote(path) -> bool:
    """Whether ``path`` (an ``--output`` or ``--resume``) is a URI for ``pyarrow.fs``."""
    return path is not None and is_uri(str(path))


def without_login(uri: str) -> str:
    """``uri`` without a ``user:secret@`` part (also one whose secret holds an unencoded ``/``),
    its query kept (the endpoint a resume needs)."""
    return without_logins(str(uri))


# (The login ends at the host's last '@'; a secret with an unencoded '/' or '?' at the URI's last '@',
# as lr_core.tables.display reads it, unless it is a host:port; launcher/tracking.py's _USERINFO is the same.)
_LOGIN = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/?\s\"']*@|[^/?@:\s\"']*:(?!\d{1,5}[/?])[^\s\"']*@)")


def without_logins(text: str) -> str:
    """``text`` (a command-line argument, say ``--output=s3://user:secret@bucket/run``) with the
    ``user:secret@`` part of every URI in it removed, queries kept."""
    return _LOGIN.sub(r"\1", str(text))


def write_staged_uri(staging: Path, uri: str) -> None:
    """Record in the staging copy ``staging`` the URI it is a copy of (without a login: credentials
    come from the environment), so that ``lrjob run --resume STAGING`` uploads it there."""
    from .rundir import atomic_write_text

    atomic_write_text(Path(staging) / STAGED_URI, json.dumps({"uri": without_login(uri)}) + "\n")


def staged_uri(run_dir) -> str | None:
    """The URI whose staging copy ``run_dir`` is (``write_staged_uri``), else None."""
    try:
        uri = json.loads((Path(run_dir) / STAGED_URI).read_text(encoding="utf-8"))["uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return uri if isinstance(uri, str) and is_uri(uri) else None


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return lines[0][:300] if lines else type(e).__name__


def open_remote(uri: str, flag: str) -> "RemoteRun":
    """The remote run at ``uri`` (``flag`` is ``--output`` or ``--resume``, for messages), after
    checking that it can be written: a bad URI, a missing bucket, an unreachable endpoint or
    refused credentials is a one-line ``LrjobInputError`` naming the URI, before anything is
    written (a probe object is written and removed)."""
    import pyarrow.fs as pfs

    shown = display(uri)
    try:
        fs, base = pfs.FileSystem.from_uri(str(uri))
    except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError, ValueError
        # A login whose secret holds a '/' (as AWS secret keys may) cannot be parsed; display()
        # and without_logins() hide all of it.
        reason = without_logins(_first_line(e).replace(str(uri), shown)).split("?")[0]
        raise LrjobInputError(f"{flag} {shown}: cannot open this URI ({reason}); use s3://bucket/path, "
                              f"gs://bucket/path or file:///path (a server other than AWS: "
                              f"?endpoint_override=host:port&scheme=http)") from None
    base = base.rstrip("/")
    if not base or (fs.type_name != "local" and "/" not in base):
        raise LrjobInputError(f"{flag} {shown}: names no folder inside the bucket; add one, e.g. {shown.rstrip('/')}"
                              f"/{'run' if base or fs.type_name == 'local' else 'bucket/run'}")
    run = RemoteRun(uri, flag, fs, base)
    run.check_access()
    return run


class RemoteRun:
    """The copy of one run directory at a URI: judged and downloaded before the run, synced during it."""

    def __init__(self, uri: str, flag: str, fs, base: str):
        self.uri, self.flag, self.fs, self.base = str(uri), flag, fs, base
        self.shown = display(uri)
        self.staging: Path | None = None
        self.broken = False                   # an upload failed: nothing more is sent
        self._uploaded: dict[str, dict] = {}  # checkpoint name -> its manifest, as the remote holds it
        self._hashed: dict[tuple, dict] = {}   # (name, its files' sizes and times) -> its manifest

    # ------------------------------------------------------------------ checks
    def _where(self, rel: str = "") -> str:
        return f"{self.shown.rstrip('/')}/{rel}" if rel else self.shown

    def check_access(self) -> None:
        """Fail with one line unless an object can be written (and removed) under the URI."""
        import pyarrow.fs as pfs

        if self.fs.type_name == "s3":
            bucket = self.base.split("/", 1)[0]
            try:
                info = self.fs.get_file_info(bucket)
            except Exception as e:  # noqa: BLE001 - unreachable endpoint, refused credentials
                raise LrjobInputError(f"{self.flag} {self.shown}: cannot reach the storage ({_first_line(e)}); "
                                      f"{_HINT}") from None
            if info.type == pfs.FileType.NotFound:
                raise LrjobInputError(f"{self.flag} {self.shown}: bucket {bucket!r} does not exist; create it "
                                      f"first (aws s3 mb s3://{bucket}), or choose another bucket")
        probe = f"{self.base}/.lrjob-probe-{secrets.token_hex(4)}"  # _PROBE
        # who writes it: another driver's _stage removes it only once it is stale (_stale_probe)
        owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
        try:
            self._put(probe, owner)
            faults.hit("probe", stage="written")
            try:
                self.fs.delete_file(probe)
            except FileNotFoundError:
                pass  # the write succeeded; another driver took the probe for a stale one (_stale_probe)
        except Exception as e:  # noqa: BLE001
            raise LrjobInputError(f"{self.flag} {self.shown}: cannot write there ({_first_line(e)}); {_HINT}") \
                from None

    def _list(self) -> dict[str, int]:
        """Every object under the URI: path relative to it -> size."""
        import pyarrow.fs as pfs

        try:
            infos = self.fs.get_file_info(pfs.FileSelector(self.base, recursive=True, allow_not_found=True))
        except Exception as e:  # noqa: BLE001
            raise LrjobInputError(f"{self.flag} {self.shown}: cannot list ({_first_line(e)}); {_HINT}") from None
        return {i.path[len(self.base) + 1:]: i.size for i in infos if i.type == pfs.FileType.File}

    def state(self) -> str:
        """``"run"`` (a ``job.yaml`` or an uploaded checkpoint), ``"new"`` (nothing there) or ``"other"``."""
        files = {p: n for p, n in self._list().items() if not _PROBE.fullmatch(p)}  # a probe left over
        if not files:
            return "new"
        if "job.yaml" in files or any(self._checkpoint_of(p) for p in files):
            return "run"
        return "other"

    @staticmethod
    def _checkpoint_of(rel: str) -> str | None:
        parts = PurePosixPath(rel).parts
        if len(parts) == 3 and parts[0] == "checkpoints" and _CHECKPOINT.fullmatch(parts[1]):
            return parts[1]
        return None

    # ------------------------------------------------------------------ download
    def stage(self, staging: Path) -> list[tuple[str, str]]:
        """Fill the new, empty local run directory ``staging`` with the remote ``job.yaml`` (and, beside
        it, ``mlflow.json``, ``summary.json`` and ``env.json``) and every complete checkpoint (its ``manifest.json`` present and its files matching it). Returns the
        checkpoints skipped, as (URI, reason); each is also named on stderr. A download that fails is a
        one-line ``LrjobInputError`` (nothing has been trained or written yet)."""
        self.staging = staging
        try:
            return self._stage(staging)
        except OSError as e:
            raise LrjobInputError(f"{self.flag} {self.shown}: cannot download the run ({_first_line(e)}); {_HINT}") \
                from None

    def _stage(self, staging: Path) -> list[tuple[str, str]]:
        files = self._list()
        for name in [p for p in files if _PROBE.fullmatch(p)]:
            del files[name]
            if self._stale_probe(name):  # left by a driver killed during its check
                try:
                    self.fs.delete_file(f"{self.base}/{name}")
                except OSError:
                    pass  # removed meanwhile
        for name in _STAGED:
            if name in files:
                (staging / name).write_bytes(self._get(name, _MAX_SMALL_FILE + 1))
        for name in _RECORDS if "job.yaml" in files else ():  # (without one, the folder holds no run)
            if name in files:
                (staging / name).write_bytes(self._get(name, _MAX_RECORD + 1))
        skipped = []
        for name in sorted({c for c in map(self._checkpoint_of, files) if c}):
            try:
                manifest, blobs = self._complete_checkpoint(name, files)
            except ValueError as e:
                where = self._where(f"checkpoints/{name}")
                skipped.append((where, str(e)))
                print(f"lrjob: warning: checkpoint {where} skipped: {e}", file=sys.stderr)
                continue
            folder = staging / "checkpoints" / name
            folder.mkdir(parents=True)
            for f, blob in blobs.items():
                (folder / f).write_bytes(blob)
            self._uploaded[name] = manifest
        return skipped

    def _stale_probe(self, name: str) -> bool:
        """Whether the probe object ``name`` is left over: its writer (host and pid, recorded in it) is
        a process of this host that is gone, or it is older than ``PROBE_STALE_S``. Another driver's
        check in progress (on this host or another) keeps its probe: it removes it itself."""
        import time

        try:
            info = self.fs.get_file_info(f"{self.base}/{name}")
            owner = json.loads(self._get(name, 1000) or b"{}")
        except OSError:
            return False  # removed meanwhile
        except ValueError:
            owner = {}
        mtime = info.mtime.timestamp() if info.mtime is not None else None
        if mtime is not None and time.time() - mtime > PROBE_STALE_S:
            return True
        pid = owner.get("pid") if isinstance(owner, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError, ValueError):
            return False  # alive (another user's), or not a pid
        return False

    def _complete_checkpoint(self, name: str, files: dict[str, int]) -> tuple[dict, dict[str, bytes]]:
        """The manifest and the files of the uploaded checkpoint ``name``, read and checked against
        each other; a ``ValueError`` saying why it is not complete."""
        prefix = f"checkpoints/{name}"
        if f"{prefix}/{MANIFEST}" not in files:
            raise ValueError(f"no {MANIFEST} (its upload did not finish)")
        try:
            manifest = json.loads(self._get(f"{prefix}/{MANIFEST}", _MAX_SMALL_FILE + 1))
            listed = manifest["files"]
            sizes = {f: int(want["size"]) for f, want in listed.items()}
            sums = {f: str(want["sha256"]) for f, want in listed.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"unreadable {MANIFEST} ({_first_line(e)})") from None
        for f, size in sizes.items():
            if not _FILE_NAME.fullmatch(f) or f == MANIFEST:
                raise ValueError(f"its {MANIFEST} names {f[:100]!r}, not a file of a checkpoint")
            if files.get(f"{prefix}/{f}") != size:  # missing, or not the bytes it lists: nothing read
                raise ValueError(f"{f} does not match its {MANIFEST}")
        blobs = {}
        for f in sizes:
            blob = self._get(f"{prefix}/{f}", sizes[f] + 1)
            if len(blob) != sizes[f] or hashlib.sha256(blob).hexdigest() != sums[f]:
                raise ValueError(f"{f} does not match its {MANIFEST}")
            blobs[f] = blob
        return manifest, blobs

    def adopt(self, staging: Path) -> None:
        """Take the kept staging copy ``staging`` (``lrjob run --resume STAGING``) as this run's local
        copy: the complete checkpoints the URI holds count as uploaded (the next ``sync`` sends
        what differs and removes what the copy pruned). Refused in one line when the URI holds a
        checkpoint newer than the copy's newest: the run went on from the URI since."""
        self.staging = staging
        kind = self.state()
        if kind == "other":
            raise LrjobInputError(f"--resume {staging}: its storage {self.shown} is not empty and holds no lrjob "
                                  f"run; nothing was uploaded: move the objects there, or copy this folder elsewhere")
        files = self._list()
        if "job.yaml" in files:
            try:
                theirs = self._get("job.yaml", _MAX_SMALL_FILE + 1)
            except OSError as e:
                raise LrjobInputError(f"--resume {staging}: cannot read {self._where('job.yaml')} "
                                      f"({_first_line(e)}); {_HINT}") from None
            mine = (staging / "job.yaml").read_bytes() if (staging / "job.yaml").is_file() else b""
            if theirs != mine:
                raise LrjobInputError(f"--resume {staging}: {self.shown} holds another run (its job.yaml is not "
                                      f"this copy's); nothing was uploaded: the copy stays here")
        remote = sorted({c for c in map(self._checkpoint_of, files) if c and f"checkpoints/{c}/{MANIFEST}" in files})
        folder = staging / "checkpoints"
        local = sorted(p.name for p in folder.iterdir() if _CHECKPOINT.fullmatch(p.name)) if folder.is_dir() else []
        if remote and (not local or remote[-1] > local[-1]):
            resume = shlex.quote(without_login(self.uri))
            raise LrjobInputError(f"--resume {staging}: {self._where(f'checkpoints/{remote[-1]}')} is newer than "
                                  f"this copy's {local[-1] if local else 'checkpoints (none)'}: the run went on "
                                  f"from its storage; continue it with lrjob run --resume {resume}")
        for name in remote:
            try:
                manifest = json.loads(self._get(f"checkpoints/{name}/{MANIFEST}", _MAX_SMALL_FILE + 1))
            except (OSError, ValueError):
                continue  # unreadable: uploaded again
            self._uploaded[name] = manifest

    def spec_bytes(self) -> bytes:
        """The remote run's ``job.yaml`` (``--resume URI`` without a JOB); a one-line error without one."""
        if "job.yaml" not in self._list():
            raise LrjobInputError(f"{self.flag} {self.shown}: not a run directory (no job.yaml); pass a URI that "
                                  f"lrjob run --output wrote")
        try:
            return self._get("job.yaml", _MAX_SMALL_FILE + 1)
        except OSError as e:
            raise LrjobInputError(f"{self.flag} {self.shown}: cannot read its job.yaml ({_first_line(e)}); {_HINT}") \
                from None

    def _get(self, rel: str, limit: int) -> bytes:
        """At most ``limit`` bytes of the object ``rel``."""
        with self.fs.open_input_stream(f"{self.base}/{rel}") as f:
            return f.read(limit)

    # ------------------------------------------------------------------ upload
    def _put(self, key: str, data: bytes) -> None:
        if self.fs.type_name == "local":
            self.fs.create_dir(str(PurePosixPath(key).parent), recursive=True)
        with self.fs.open_output_stream(key) as f:  # an S3 object appears whole, when the stream closes
            f.write(data)

    def sync(self, run_dir: Path, final: bool = False) -> None:
        """Copy the local run directory ``run_dir`` to the URI: new or changed checkpoints (files, then
        their manifest), checkpoints pruned locally removed (manifest first), then ``job.yaml``,
        ``env.json``, ``metrics.jsonl`` and ``summary.json``; with ``final``, also the model, the
        plots and the report. A failure is a ``StorageError`` naming the staging directory, and
        nothing more is sent."""
        if self.broken:
            return
        rel = ""
        try:
            local = {p.name: p for p in sorted((run_dir / "checkpoints").iterdir())
                     if _CHECKPOINT.fullmatch(p.name) and p.is_dir() and (p / "state.json").is_file()} \
                if (run_dir / "checkpoints").is_dir() else {}
            for name, folder in local.items():
                manifest = self._manifest(name, folder)
                if self._uploaded.get(name) == manifest:
                    continue
                rel = f"checkpoints/{name}"
                self._upload_checkpoint(folder, name, manifest)
            self._hashed = {k: v for k, v in self._hashed.items() if k[0] in local}
            for name in sorted(set(self._uploaded) - set(local)):
                rel = f"checkpoints/{name}"
                self._remove_checkpoint(name)
            names = _EVERY_SYNC + (_AT_END if final else ())
            for name in names:
                if (run_dir / name).is_file():
                    rel = name
                    self._put(f"{self.base}/{name}", (run_dir / name).read_bytes())
            if final and (run_dir / "model").is_dir():
                for f in sorted((run_dir / "model").iterdir()):
                    rel = f"model/{f.name}"
                    self._put(f"{self.base}/model/{f.name}", f.read_bytes())
        except Exception as e:  # noqa: BLE001 - any failure of the storage ends the sync
            self.broken = True
            raise StorageError(f"{self._where(rel)}: upload failed ({_first_line(e)}); nothing is lost: the run is "
                               f"in {run_dir}; once the storage answers, lrjob run --resume {run_dir} uploads it to "
                               f"{self.shown} and continues it") from None

    def _upload_checkpoint(self, folder: Path, name: str, manifest: dict) -> None:
        prefix = f"{self.base}/checkpoints/{name}"
        if name in self._uploaded:  # rewritten: no longer complete while its files change
            self.fs.delete_file(f"{prefix}/{MANIFEST}")
            del self._uploaded[name]
        for f in sorted(manifest["files"]):
            self._put(f"{prefix}/{f}", (folder / f).read_bytes())
        faults.hit("upload", epoch=int(name.split("-")[1]), stage="files")
        self._put(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        self._uploaded[name] = manifest

    def _remove_checkpoint(self, name: str) -> None:
        prefix = f"{self.base}/checkpoints/{name}"
        self.fs.delete_file(f"{prefix}/{MANIFEST}")  # first: no longer complete
        del self._uploaded[name]
        self.fs.delete_dir(prefix)

    def _manifest(self, name: str, folder: Path) -> dict:
        """The name, size and SHA-256 of every file of a local checkpoint folder; hashed again only
        when a file's size or time changed (a checkpoint is rewritten, not edited)."""
        paths = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()]
        key = (name, *((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths))
        if key not in self._hashed:
            files = {}
            for p in paths:
                blob = p.read_bytes()
                files[p.name] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
            self._hashed[key] = {"format": "lrjob-checkpoint-v1", "files": files}
        return self._hashed[key]
