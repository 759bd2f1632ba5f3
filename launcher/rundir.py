"""The run directory (docs/design.md#run-directory): ``RunDir`` is its one writer and its
one reader. Only the driver writes it; every command that reads a run opens it here.

    runs/<name>-<UTC timestamp>/
      job.yaml  env.json  metrics.jsonl  summary.json
      checkpoints/epoch-NNNN/   (params.npz, optimizer.npz, state.json; atomic)
      model/                    (exported symbol + params + meta.json)

Checkpoints are written into a hidden temporary folder, fsynced, then renamed: a crash
at any moment leaves the old or the new checkpoint, never a torn one.

    run = RunDir.open("runs/binary_synthetic-20261125T120000Z")
    run.spec(), run.history(), run.summary(), run.latest_checkpoint(), run.model()
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from lr_core import faults
from lr_core.errors import LrjobInputError

__all__ = ["RunDir", "new_run_path", "check_writable", "atomic_write_text", "list_checkpoints",
           "load_checkpoint", "latest_checkpoint"]


def utc_stamp() -> str:
    """The current UTC time as ``YYYYMMDDTHHMMSSZ``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def new_run_path(name: str, base: str | os.PathLike = "runs") -> Path:
    """A path for a new run: ``<base>/<name>-<UTC stamp>``, with ``-2``, ``-3``, ... appended while
    that path exists."""
    base = Path(base)
    path = base / f"{name}-{utc_stamp()}"
    i = 1
    while path.exists():
        i += 1
        path = base / f"{name}-{utc_stamp()}-{i}"
    return path


def check_writable(path: Path) -> None:
    """Fail early (exit 2) when the run directory cannot be created."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise LrjobInputError(f"--output {path}: {probe} is a file, not a directory; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LrjobInputError(f"--output {path}: {probe} is not writable; choose a writable directory")
    try:  # os.access says yes to root and on some mounts: try for real, leave nothing
        os.rmdir(tempfile.mkdtemp(prefix=".lrjob-probe-", dir=probe))
    except OSError as e:
        raise LrjobInputError(f"--output {path}: {probe} is not writable ({e.strerror or e}); "
                              f"choose a writable directory") from None
    if path.exists() and any(path.iterdir()):
        raise LrjobInputError(f"--output {path}: exists and is not empty; choose a new path "
                              f"(or --resume {path} to continue that run)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    or the new, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; others may read a run
        with os.fdopen(fd, "w") as f:
            for piece in ([text] if isinstance(text, str) else text):
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def dumps(obj) -> str:
    """``obj`` as JSON; NumPy scalars and arrays become numbers and lists."""
    return json.dumps(obj, default=_json_default)


def list_checkpoints(run: Path) -> list[Path]:
    """The complete checkpoint folders (``epoch-NNNN`` with a ``state.json``) of the run at ``run``,
    oldest first."""
    d = Path(run) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("epoch-")
                  and (p / "state.json").is_file())


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_checkpoint(path: Path) -> dict:
    """Read one checkpoint (no pickles: npz with allow_pickle=False and JSON)."""
    state = json.loads((path / "state.json").read_text())
    with np.load(path / "params.npz", allow_pickle=False) as z:
        params = {k: z[k] for k in z.files}
    with np.load(path / "optimizer.npz", allow_pickle=False) as z:
        opt = {k: z[k] for k in z.files}
    return {"params": params, "optimizer_arrays": opt, "optimizer_meta": state["optimizer_meta"],
            "epochs_done": int(state["epochs_done"]), "spec_digest": state.get("spec_digest"),
            "step": int(state.get("data_cursor", {}).get("step", 0)), "step_losses": state.get("step_losses", []),
            "data_key": state.get("data_key"),
            "history": state.get("history", []), "path": str(path)}


def latest_checkpoint(run: Path) -> dict | None:
    """The newest checkpoint that reads back whole (a damaged one is skipped)."""
    for path in reversed(list_checkpoints(run)):
        try:
            return load_checkpoint(path)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            continue
    return None


class RunDir:
    """Reads and writes the files of one run. ``create`` makes the folder (the driver);
    ``open`` reads an existing one (every other command)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | os.PathLike) -> "RunDir":
        """The run directory at ``path``, created with its ``checkpoints/`` folder."""
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / "checkpoints").mkdir(exist_ok=True)
        return run

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

        return load_spec(self.spec_file) if self.spec_file.is_file() else None

    def spec_dict(self) -> dict:
        """``job.yaml`` as a plain mapping ({} when absent or not a mapping), unvalidated."""
        from .spec import read_spec_yaml

        doc = read_spec_yaml(self.spec_file) if self.spec_file.is_file() else None
        return doc if isinstance(doc, dict) else {}

    def history(self) -> list[dict]:
        """One dict per finished epoch, from ``metrics.jsonl`` ([] before the first)."""
        f = self.path / "metrics.jsonl"
        if not f.is_file():
            return []
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]

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

    # ------------------------------------------------------------------ writing
    def write_spec(self, spec) -> None:
        """Write the resolved spec to ``job.yaml``, atomically."""
        self.write_text("job.yaml", spec.to_yaml())

    def export_model(self, spec, data, params: dict) -> None:
        """Export the trained model into ``model/`` with what serving needs to know."""
        from lr_core.export import export_model

        meta = {"job": spec.name, "source": data.source, "image_shape": list(data.image_shape or []),
                "columns": data.extra.get("columns", []), "label_column": spec.data.label_column,
                "label_map": spec.data.label_map, "standardize": data.stats}
        export_model(self.model_dir, spec.loop_config(), params, data.num_features, meta)

    def write_json(self, name: str, obj) -> None:
        """Write ``obj`` as indented JSON to the file ``name``, atomically."""
        atomic_write_text(self.path / name, json.dumps(obj, indent=2, default=_json_default) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """Write ``text`` to the file ``name``, atomically."""
        atomic_write_text(self.path / name, text)

    def append_metrics(self, metrics: dict) -> None:
        """Append one epoch's metrics as a line of ``metrics.jsonl``, fsynced."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite_metrics(self, history: list[dict]) -> None:
        """Replace ``metrics.jsonl`` with ``history``, one line per epoch, atomically (resume, restart)."""
        atomic_write_text(self.path / "metrics.jsonl",
                          "".join(json.dumps(m, default=_json_default) + "\n" for m in history))

    def write_checkpoint(self, state: dict, spec_digest: str, history: list[dict], keep: int,
                         data_key: str | None = None) -> Path:
        """Save ``state`` with ``spec_digest`` and ``history`` as ``checkpoints/epoch-NNNN``: written into a
        hidden temporary folder, fsynced, then renamed (replacing one of the same epoch); prunes to
        the newest ``keep``. Returns the final path."""
        epochs_done, step = int(state["epochs_done"]), int(state.get("step", 0))
        root = self.path / "checkpoints"
        root.mkdir(exist_ok=True)
        # epoch-0002 (2 epochs done) < epoch-0002-step-00000500 (500 steps into the 3rd) < epoch-0003
        name = f"epoch-{epochs_done:04d}" + (f"-step-{step:08d}" if step else "")
        final = root / name
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
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
            if final.exists():
                old = root / f".old-{final.name}-{os.getpid()}"
                os.replace(final, old)
                faults.hit("checkpoint", epoch=epochs_done, stage="swapping")
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(root)
            faults.hit("checkpoint", epoch=epochs_done, stage="renamed")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        for old in list_checkpoints(self.path)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final
