"""Prepared datasets: a job's data converted once into files every worker memory-maps.

``prepare(request)`` reads the source in bounded blocks (tables stream; built-in sources
are small), checks every block the way the in-memory loaders do, and writes a
content-addressed directory (docs/design.md#prepared-data)::

    <cache>/<source>-<key>/
        manifest.json     rows, features, stored dtype, scale, label map, the source's
                          fingerprint, a SHA-256 per shard of every array file, and
                          (data.standardize) the training rows' mean and std per feature
        train-x.bin       features, row-major, in the stored dtype (MNIST stays uint8)
        train-y.bin       int64 labels, finished (label_map applied, classes checked)
        val-x.bin, val-y.bin

``key`` hashes everything that decides the content: the data section, the model's kind
and classes, the seed (the hold-out split) and the fingerprint of the source files (name,
size, modification time), so a changed file prepares anew. A shard is a run of rows of
one array file (about ``SHARD_BYTES``); the files stay whole so that a step gathers its
rows with one ``take`` from one map. The manifest is written last and the directory
renamed into place: a half-written preparation is never found, and a damaged or
truncated shard fails its checksum, so the directory is rebuilt, never trained on.

``open_prepared(path)`` returns a :class:`~lr_core.data.Dataset` of read-only memory
maps; pickled, it is its path (workers map the same files; nothing large is copied).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .data import (REGISTRY, BlockSums, Dataset, LoadRequest, _features, _load_idx, check_features, data_home,
                   feature_stats, finish_labels, holdout_rows, stats_rows)
from .errors import DataError
from .files import missing_folders, remove_empty
from .tables import BLOCK_ROWS, display, fingerprint, is_uri, open_table

__all__ = ["prepare", "open_prepared", "read_rows", "MappedPages", "prepared_dataset", "reopen", "verify", "dataset_key", "FORMAT",
           "SHARD_BYTES", "default_cache", "cache_entries", "clean_cache"]

FORMAT = 1
SHARD_BYTES = 64 << 20
BLOCK_BYTES = 16 << 20   # a conversion block holds about this many bytes of float32 features
SPLIT_BYTES = 2 << 20    # the hold-out split reads the scratch file in pieces of about this many bytes
_STAMP = ".verified"     # the sizes and times of the files when every checksum last held
ARRAYS = ("train-x", "train-y", "val-x", "val-y")
_TABLE_SOURCES = ("csv", "npz", "parquet", "npy")
Progress = Callable[[str, int, int | None], None]  # (what, rows done, rows in all or None)


def default_cache() -> Path:
    """``<data home>/prepared`` (``$LRJOB_DATA_HOME/prepared`` when that is set)."""
    return data_home() / "prepared"


def _source_files(request: LoadRequest, root: Path) -> list:
    """The fingerprints of the source files; files under the cache ``root`` do not count."""
    files = []
    for p in (request.path, request.val_path):
        if p:
            files.append(fingerprint(p, exclude=str(root)))
    if request.source in ("mnist", "fashion-mnist") and not request.path:
        d = data_home() / request.source
        files.append([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(d.glob("*")) if f.is_file()]
                     if d.is_dir() else [])
    return files


def dataset_key(request: LoadRequest, files: list) -> str:
    """The content address: a hash of what decides the prepared content."""
    doc = {"format": FORMAT, "source": request.source, "kind": request.kind, "classes": request.num_classes,
           "seed": request.seed, "path": request.path, "val_path": request.val_path,
           "val_fraction": request.val_fraction if not request.val_path else None,
           "label_column": request.label_column, "features": list(request.features or []),
           "label_map": {str(k): v for k, v in (request.label_map or {}).items()},
           "options": dict(request.options), "files": files}
    if request.standardize:  # only when on: data prepared before standardization keeps its key
        doc["standardize"] = True
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- writing
class _ArrayWriter:
    """Appends row blocks to one raw array file, hashing each shard as it goes (``final``;
    a scratch file that is read back once and removed is neither hashed nor synced)."""

    def __init__(self, path: Path, dtype, width: int | None, final: bool = True):
        self.path, self.dtype, self.width, self.final = path, np.dtype(dtype), width, final
        self.f = open(path, "wb")
        self.rows, self.shards = 0, []
        self._h, self._shard_start = hashlib.sha256(), 0

    def write(self, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype)
        if self.width is None and data.ndim == 2:
            self.width = data.shape[1]
        row_bytes = self.dtype.itemsize * (self.width if data.ndim == 2 else 1)
        per_shard = max(1, SHARD_BYTES // max(row_bytes, 1))
        buf = memoryview(data.reshape(-1).view(np.uint8))
        rows, at = len(data), 0
        while at < rows:
            take = min(rows - at, per_shard - (self.rows - self._shard_start))
            piece = buf[at * row_bytes:(at + take) * row_bytes]
            self.f.write(piece)
            if self.final:
                self._h.update(piece)
            self.rows += take
            at += take
            if self.rows - self._shard_start == per_shard:
                self._close_shard()

    def _close_shard(self) -> None:
        if self.rows > self._shard_start and self.final:
            self.shards.append({"rows": [self._shard_start, self.rows], "sha256": self._h.hexdigest()})
        self._h, self._shard_start = hashlib.sha256(), self.rows

    def close(self) -> dict:
        self._close_shard()
        self.f.flush()
        if self.final:
            os.fsync(self.f.fileno())
        self.f.close()
        shape = [self.rows] + ([self.width] if self.width is not None else [])
        return {"file": self.path.name, "dtype": self.dtype.str, "shape": shape, "shards": self.shards}


def _stream_table(request: LoadRequest, path: str, out: Path, name: str, num_features: int | None,
                  progress: Progress | None, sums: "_Sums | None" = None):
    """Stream one table into array files; returns (entries, columns). ``name`` ``train`` or
    ``val`` writes ``<name>-x.bin``/``<name>-y.bin``. ``all`` (a table that holds its own
    validation rows) splits as it streams when its row count is known up front (Parquet
    and NPY declare it, a local CSV's is counted first: the hold-out is known before the
    first row), else writes the scratch files ``all-*.bin`` that :func:`_split` splits. ``sums`` takes the training rows in
    order (the first pass of the standardization statistics)."""
    table = open_table(path, request.label_column, True, _features(request))
    where = table.where
    keep = None
    # A local CSV declares no rows, but they are counted in one cheap pass over the file
    # (far less than writing every row to scratch and reading it back).
    rows = table.count_rows() if name == "all" else table.rows
    if name == "all" and rows:
        try:
            perm, n_val = holdout_rows(rows, request.val_fraction, request.seed, where)
        except DataError:
            pass  # too few rows: the scratch path reports it after the rows' own checks, as before
        else:
            keep = np.ones(rows, dtype=bool)
            keep[perm[:n_val]] = False
            del perm
    splits = ("train", "val") if keep is not None else (name,)
    writers: dict = {}
    done = 0
    # Blocks of about BLOCK_BYTES whatever the width (a 1000-feature row is 4 KB).
    block = max(1, min(BLOCK_ROWS, BLOCK_BYTES // (4 * max(1, len(table.columns)))))
    declared = "counted before it was read" if table.counted else "its metadata declares"
    try:
        for x, y in table.batches(block):
            at, off = table.block_where, table.block_offset  # the file and row errors name
            (y,) = finish_labels(request, at, y, offset=off)
            if len(y) != len(x):
                raise DataError(f"{at}: {len(x)} feature rows but {len(y)} labels; they must match")
            stored = np.uint8 if np.asarray(x).dtype == np.uint8 else np.float32
            xf = check_features(np.asarray(x), at, num_features, table.columns, offset=off)
            xw = writers.get(splits[0], (None,))[0]
            if xw is None:
                final = name != "all" or keep is not None  # the scratch is split next, then removed
                writers = {s: (_ArrayWriter(out / f"{s}-x.bin", stored, xf.shape[1], final=final),
                               _ArrayWriter(out / f"{s}-y.bin", np.int64, None, final=final)) for s in splits}
            elif xf.shape[1] != xw.width:
                raise DataError(f"{at}: row {off + 1}: {xf.shape[1]} feature columns, earlier rows have "
                                f"{xw.width}; every row needs the same features")
            elif np.dtype(stored) != xw.dtype:
                raise DataError(f"{at}: row {off + 1}: features of type {np.dtype(stored)}, earlier rows "
                                f"{xw.dtype}; give every file the same column types")
            xs = x if stored == np.uint8 else xf
            if keep is not None:
                if done + len(xs) > len(keep):
                    raise DataError(f"{where}: more rows than the {len(keep)} {declared}; the file is "
                                    f"damaged or changed while read: write it again")
                k = keep[done:done + len(xs)]
                parts = {"train": (xs[k], y[k]), "val": (xs[~k], y[~k])}
            else:
                parts = {name: (xs, y)}
            for split, (px, py) in parts.items():
                writers[split][0].write(px)
                writers[split][1].write(py)
                if split == "train" and sums is not None:
                    sums.add(px)
            done += len(x)
            if progress:
                progress(f"reading {where}", done, rows)
        if not writers:
            raise DataError(f"{where}: no rows; the dataset is empty")
        if keep is not None and done != len(keep):
            raise DataError(f"{where}: {done} rows, fewer than the {len(keep)} {declared}; the file is "
                            f"damaged or changed while read: write it again")
        entries = {}
        for split, (xw, yw) in writers.items():
            entries[f"{split}-x"], entries[f"{split}-y"] = xw.close(), yw.close()
        return entries, table.columns
    finally:
        for pair in writers.values():
            for w in pair:
                if not w.f.closed:
                    w.f.close()


def _split(request: LoadRequest, out: Path, xe: dict, ye: dict, where: str, progress: Progress | None,
           sums: "_Sums | None" = None):
    """Hold out ``val_fraction`` of the rows of the ``all-*`` files, exactly as
    ``holdout_split`` does in memory; returns the four array entries. ``sums`` takes the
    training rows in order."""
    n, d = xe["shape"][0], xe["shape"][1]
    perm, n_val = holdout_rows(n, request.val_fraction, request.seed, where)
    keep = np.zeros(n, dtype=bool)
    keep[perm[n_val:]] = True
    del perm
    x_dtype = np.dtype(xe["dtype"])
    writers = {s: (_ArrayWriter(out / f"{s}-x.bin", x_dtype, d), _ArrayWriter(out / f"{s}-y.bin", np.int64, None))
               for s in ("train", "val")}
    step = max(1, SPLIT_BYTES // max(x_dtype.itemsize * d, 1))
    # Plain reads, not a memory map: mapped pages of the whole file would count in this
    # process's resident memory until it ends.
    with open(out / xe["file"], "rb") as fx, open(out / ye["file"], "rb") as fy:
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            x = np.fromfile(fx, dtype=x_dtype, count=(hi - lo) * d).reshape(hi - lo, d)
            y = np.fromfile(fy, dtype=np.int64, count=hi - lo)
            k = keep[lo:hi]
            for split, mask in (("train", k), ("val", ~k)):
                xw, yw = writers[split]
                xs = x[mask]
                xw.write(xs)
                yw.write(y[mask])
                if split == "train" and sums is not None:
                    sums.add(xs)
            if progress:
                progress("splitting", hi, n)
    entries = {}
    for split, (xw, yw) in writers.items():
        entries[f"{split}-x"], entries[f"{split}-y"] = xw.close(), yw.close()
    os.remove(out / xe["file"])
    os.remove(out / ye["file"])
    return entries


def _write_dataset(ds: Dataset, out: Path) -> dict:
    entries = {}
    for split in ("train", "val"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        xw = _ArrayWriter(out / f"{split}-x.bin", x.dtype if x.dtype == np.uint8 else np.float32, x.shape[1])
        yw = _ArrayWriter(out / f"{split}-y.bin", np.int64, None)
        for lo in range(0, len(x), BLOCK_ROWS):
            xw.write(x[lo:lo + BLOCK_ROWS])
            yw.write(y[lo:lo + BLOCK_ROWS])
        entries[f"{split}-x"], entries[f"{split}-y"] = xw.close(), yw.close()
    return entries


def _build(request: LoadRequest, out: Path, progress: Progress | None) -> dict:
    """Write the arrays of ``request`` into ``out``; returns the manifest's content part."""
    meta = {"image_shape": None, "val_name": "validation", "scale": None, "columns": []}
    sums = None
    if request.source in _TABLE_SOURCES:
        sums = _Sums() if request.standardize else None  # tables carry no scale
        entries, columns = _stream_table(request, request.path, out, "all" if not request.val_path else "train",
                                         None, progress, sums)
        where = display(request.path)
        if request.val_path:
            val, _ = _stream_table(request, request.val_path, out, "val", entries["train-x"]["shape"][1], progress)
            entries.update(val)
        elif "all-x" in entries:
            entries = _split(request, out, entries["all-x"], entries["all-y"], where, progress, sums)
        meta.update(columns=columns, description=where)
    else:
        if request.source in ("mnist", "fashion-mnist"):
            ds = _load_idx(request, raw=True)
        else:
            ds = REGISTRY[request.source].load(request)
        entries = _write_dataset(ds, out)
        meta.update(image_shape=list(ds.image_shape) if ds.image_shape else None, val_name=ds.val_name,
                    scale=ds.scale, columns=list(ds.extra.get("columns") or []), description=ds.description)
    if request.standardize:
        meta["stats"] = _train_stats(out, entries["train-x"], meta["scale"], sums.result() if sums else None)
    return {"arrays": entries, **meta}


class _Sums:
    """A :class:`BlockSums` made when the first training rows arrive (their width is
    known then); ``result()`` of none is ``None`` (the statistics read the file)."""

    def __init__(self):
        self._sums = None

    def add(self, x: np.ndarray) -> None:
        if self._sums is None:
            self._sums = BlockSums(x.shape[1])
        self._sums.add(x)

    def result(self):
        return self._sums.result() if self._sums is not None else None


def _train_stats(out: Path, entry: dict, scale: float | None, sums=None) -> dict:
    """``feature_stats`` of the written training features, read back in plain reads of
    ``stats_rows(d)`` rows (the blocks ``load_dataset`` sums in memory: the same numbers);
    ``sums``: the first pass, taken while the rows were written (then read once, not twice)."""
    dtype, (n, d) = np.dtype(entry["dtype"]), entry["shape"]
    step = stats_rows(d)

    def blocks():
        with open(out / entry["file"], "rb") as f:
            for lo in range(0, n, step):
                rows = min(step, n - lo)
                yield np.fromfile(f, dtype=dtype, count=rows * d).reshape(rows, d)

    return feature_stats(blocks, scale, sums)


def prepare(request: LoadRequest, cache: str | os.PathLike | None = None, progress: Progress | None = None,
            log: Callable[[str], None] | None = None, checksums: bool = True) -> Path:
    """The prepared directory of ``request`` under ``cache``: reused when present and
    intact (``checksums``: every shard's SHA-256 checked, else the sizes), else built (and
    a damaged one replaced). Raises :class:`DataError` for bad data; nothing half-written
    is left behind."""
    if cache is not None and is_uri(str(cache)):
        raise DataError(f"data.cache: {cache}: must be a directory every node can see (a local or shared "
                        f"file system); the source itself may be a URI")
    root = Path(cache).expanduser() if cache else default_cache()
    files = _source_files(request, root)
    key = dataset_key(request, files)
    final = root / f"{request.source}-{key}"
    if final.is_dir():
        problems = verify(final, checksums)
        if not problems:
            return final
        if log:
            log(f"prepared data {final}: {problems[0]}; preparing it again")
        _remove(final)
    made = missing_folders(root)  # deepest first: removed again on failure
    try:
        for attempt in (1, 2):
            root.mkdir(parents=True, exist_ok=True)
            _sweep(root)
            try:
                tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{request.source}-{key}-{_HOST}-{os.getpid()}-", dir=root))
                break
            except FileNotFoundError:  # another preparation that failed removed the empty folder meanwhile
                if attempt == 2:
                    raise
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a shared cache is read by others
    except OSError as e:
        remove_empty(made)
        raise DataError(f"data.cache: cannot write {root} ({e.strerror or e}); set data.cache (or "
                        f"LRJOB_DATA_HOME) to a writable directory") from None
    try:
        t0 = time.perf_counter()
        content = _build(request, tmp, progress)
        manifest = {"format": FORMAT, "key": key, "source": request.source, "kind": request.kind,
                    "num_classes": request.num_classes, "label_map": request.label_map,
                    "fingerprint": files, "prepared_seconds": round(time.perf_counter() - t0, 3), **content}
        _write_json(tmp / "manifest.json", manifest)
        _write_stamp(tmp)  # every shard was hashed as it was written
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final.is_dir() and not verify(final)):  # another process won the race: use its copy
                raise
            _remove(tmp)
    except BaseException:
        _remove(tmp)
        remove_empty(made)  # bad data leaves nothing behind
        raise
    return final


_HOST = socket.gethostname().replace("-", "_")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sweep(root: Path) -> None:
    """Remove the temporary folders of preparations that died on this host (killed, out
    of memory): their process is gone. Another host's are left alone."""
    for p in root.glob(".tmp-*"):
        parts = p.name.split("-")
        try:
            host, pid = parts[-3], int(parts[-2])
        except (IndexError, ValueError):
            continue
        if host == _HOST and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".del-*"):
        shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _remove(path: Path) -> None:
    """Remove a directory: renamed aside first, so a reader never sees it half-deleted."""
    if not path.exists():
        return
    aside = path.with_name(f".del-{path.name}-{os.getpid()}")
    try:
        os.rename(path, aside)
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


# --------------------------------------------------------------------------- reading
def _manifest(path: Path) -> dict:
    try:
        with open(path / "manifest.json") as f:
            m = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: not a prepared dataset (no manifest.json); run `lrjob prepare JOB`") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}/manifest.json: unreadable ({e}); remove the directory and run "
                        f"`lrjob prepare JOB`") from None
    if m.get("format") != FORMAT:
        raise DataError(f"{path}: prepared with format {m.get('format')}, this lrjob reads {FORMAT}; "
                        f"run `lrjob prepare JOB` again")
    return m


def _iter_shards(path: Path, entry: dict) -> Iterator[tuple[int, int, str, bytes]]:
    dtype = np.dtype(entry["dtype"])
    row_bytes = dtype.itemsize * (entry["shape"][1] if len(entry["shape"]) == 2 else 1)
    with open(path / entry["file"], "rb") as f:
        for shard in entry["shards"]:
            a, b = shard["rows"]
            f.seek(a * row_bytes)
            yield a, b, shard["sha256"], f.read((b - a) * row_bytes)


def _stats(path: Path) -> dict:
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.iterdir())
            if f.is_file() and not f.name.startswith(".")}


def _write_stamp(path: Path) -> None:
    try:
        _write_json(path / _STAMP, _stats(path))
    except OSError:
        pass  # a read-only cache: the next use hashes again


def verify(path: str | os.PathLike, checksums: bool = True) -> list[str]:
    """What is wrong with a prepared directory (empty when intact): the manifest, every
    file's size, and (``checksums``) the SHA-256 of every shard. The hashing is skipped
    when no file's size or modification time changed since every checksum last held."""
    path = Path(path)
    try:
        m = _manifest(path)
    except DataError as e:
        return [str(e)]
    if checksums:
        try:
            checksums = json.loads((path / _STAMP).read_text()) != _stats(path)
        except (OSError, ValueError):
            pass
    problems = []
    for name in ARRAYS:
        entry = m["arrays"].get(name)
        if entry is None:
            problems.append(f"{name}: missing from the manifest")
            continue
        dtype = np.dtype(entry["dtype"])
        size = int(np.prod(entry["shape"])) * dtype.itemsize
        file = path / entry["file"]
        actual = file.stat().st_size if file.is_file() else None
        if actual != size:
            problems.append(f"{entry['file']}: {'missing' if actual is None else f'{actual} bytes'}, "
                            f"expected {size} (truncated or half-written)")
            continue
        if checksums:
            for a, b, digest, data in _iter_shards(path, entry):
                if hashlib.sha256(data).hexdigest() != digest:
                    problems.append(f"{entry['file']}: rows {a}..{b - 1} fail their checksum (damaged)")
                    break
    if checksums and not problems:
        _write_stamp(path)
    return problems


def prepared_dataset(request: LoadRequest, cache: str | os.PathLike | None = None,
                     progress: Progress | None = None, log: Callable[[str], None] | None = None,
                     checksums: bool = True) -> Dataset:
    """:func:`prepare`, then :func:`open_prepared`; the dataset also carries its origin,
    so a node that does not see the folder prepares its own copy (:func:`reopen`)."""
    home = prepare(request, cache, progress, log, checksums)
    ds = open_prepared(home)
    digests = _digests(_manifest(home))
    return dataclasses.replace(ds, extra={**ds.extra, "origin": (request, None if cache is None else str(cache),
                                                                  digests)})


def _digests(manifest: dict) -> list[str]:
    return [s["sha256"] for name in ARRAYS for s in manifest["arrays"][name]["shards"]]


def reopen(home: str, origin=None) -> Dataset:
    """A pickled prepared dataset arriving in another process: the same folder when this
    node sees it; else, with its origin, this node's own preparation, accepted only when
    every shard's checksum equals the original's (the same rows, the same order)."""
    if (Path(home) / "manifest.json").is_file() or origin is None:
        ds = open_prepared(home, check=False)
        if origin is not None and _digests(_manifest(Path(home))) != origin[2]:
            raise DataError(f"{socket.gethostname()}: {home} differs from the driver's copy (prepared again "
                            f"since?); run the job again")
        return ds
    request, cache, digests = origin
    try:
        local = prepare(request, cache)
    except DataError as e:
        raise DataError(f"{socket.gethostname()}: preparing this node's copy: {e}") from None
    if _digests(_manifest(local)) != digests:
        raise DataError(f"{socket.gethostname()}: the data prepared here ({local}) differs from the driver's "
                        f"({home}); every node must read the same source: put data.cache on storage every "
                        f"node sees, or give every node the same files")
    ds = open_prepared(local, check=False)
    return dataclasses.replace(ds, extra={**ds.extra, "origin": origin})


READ_WHOLE_BYTES = 1 << 30  # features mapped whole at most this large, whatever the free memory


def _reads_whole(x: np.ndarray) -> bool:
    """Whether training reads ``x`` ahead whole and gathers from the map: it fits in a
    quarter of the free memory and in ``READ_WHOLE_BYTES``. A larger set is read row by row
    (:func:`read_rows`), so no process maps gigabytes of it: its pages would count in the
    process's resident and private memory, on every worker of a node."""
    return x.nbytes < min(_free_memory() // 4, READ_WHOLE_BYTES)


def _advise(x: np.ndarray) -> None:
    """Tell the kernel how training reads the features: a set that fits in a quarter of
    the free memory is read ahead whole (one sequential pass, then every step hits the
    page cache); a larger one is read row by row (MADV_RANDOM: a step's random rows must
    not each pull megabytes of read-ahead, which thrashes when memory is short)."""
    import mmap

    m = getattr(x, "_mmap", None)
    if m is None or not hasattr(m, "madvise"):
        return
    try:
        m.madvise(mmap.MADV_WILLNEED if _reads_whole(x) else mmap.MADV_RANDOM)
    except (OSError, ValueError):
        pass


RESIDENT_BYTES = 64 << 20  # pages of a large mapped set a process keeps mapped between releases
_FOLIO = 2 << 20           # a page fault may map the whole (large) folio around the row: up to a PMD


def read_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` as a new array. A memory-mapped ``x`` is read with ``pread``, in file
    order, without mapping its pages: on Linux 6 a fault maps the whole large folio around
    a row (up to 2 MiB), so rows gathered through the map from across a large file would
    put the whole file in this process's resident memory. Only a whole map is read from
    its file: a view of one (``x[a:b]``) keeps the map's ``offset`` although its first row
    is elsewhere in the file, so it is indexed (docs/design.md#prepared-data)."""
    rows = np.asarray(rows, dtype=np.int64)
    filename = getattr(x, "filename", None)
    if (not isinstance(x, np.memmap) or not filename or x.ndim < 1 or not x.flags.c_contiguous
            or x.base is not x._mmap):
        return np.asarray(x[rows])
    out = np.empty((len(rows),) + x.shape[1:], dtype=x.dtype)
    stride = x.strides[0]
    flat = out.reshape(len(rows), -1).view(np.uint8) if len(rows) else out
    base = int(getattr(x, "offset", 0) or 0)
    fd = os.open(filename, os.O_RDONLY)
    try:
        for i in np.argsort(rows, kind="stable"):
            r = int(rows[i])
            if not 0 <= r < x.shape[0]:
                raise IndexError(f"row {r} is outside 0..{x.shape[0] - 1}")
            got = os.preadv(fd, [memoryview(flat[i])], base + r * stride)
            if got != stride:
                raise DataError(f"{filename}: row {r} is cut short ({got} of {stride} bytes); the prepared "
                                f"files changed while in use: run `lrjob prepare JOB` again")
    finally:
        os.close(fd)
    return out


class MappedPages:
    """Keeps this process's share of a large memory-mapped array near ``RESIDENT_BYTES``.

    Pages a process has read from a shared file mapping stay in its page tables, so its
    resident and private memory (RSS, USS) grow to the whole set over an epoch, although
    the kernel could drop them at any time. On Linux 6 a fault maps the whole large folio
    around the row (measured here: 64 random 4 KiB rows mapped 108 MiB), so a row counts
    as ``_FOLIO`` bytes; after ``RESIDENT_BYTES`` of them, ``MADV_DONTNEED`` unmaps what
    was read: the data stays in the page cache, a later read maps it again. Arrays that
    are read whole (:func:`_reads_whole`) or not mapped are left alone.
    """

    def __init__(self, x: np.ndarray):
        import mmap

        m = getattr(x, "_mmap", None)
        self._m = m if m is not None and hasattr(m, "madvise") and x.size and not _reads_whole(x) else None
        row = x.strides[0] if x.ndim else x.itemsize
        # a row maps its own bytes and one page more, or the folio around it
        self.budget_rows = max(1, RESIDENT_BYTES // max(row + mmap.PAGESIZE, _FOLIO))
        self._rows = 0
        self.releases = 0

    @property
    def active(self) -> bool:
        return self._m is not None

    def read(self, rows: int) -> None:
        """Count ``rows`` more rows read; release the mapped pages when over budget."""
        if self._m is None:
            return
        self._rows += rows
        if self._rows >= self.budget_rows:
            self.release()

    def release(self) -> None:
        import mmap

        if self._m is None:
            return
        try:
            self._m.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            self._m = None  # not possible here: keep the pages, as before
            return
        self._rows = 0
        self.releases += 1


def _free_memory() -> int:
    """Bytes this process may still fill: MemAvailable, or less under a cgroup limit."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    for limit, usage in _cgroup_memory_files():
        try:
            cap = int(open(limit).read().split()[0]) - int(open(usage).read().split()[0])
            free = cap if free is None else min(free, cap)
        except (OSError, ValueError, IndexError):
            continue
    return free if free is not None else 1 << 62


def _cgroup_memory_files() -> list[tuple[str, str]]:
    """(limit, usage) files of this process's memory cgroup, v1 or v2."""
    out = []
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # cgroup v2
            out.append((f"/sys/fs/cgroup{rel}/memory.max", f"/sys/fs/cgroup{rel}/memory.current"))
        elif "memory" in controllers.split(","):
            out.append((f"/sys/fs/cgroup/memory{rel}/memory.limit_in_bytes",
                        f"/sys/fs/cgroup/memory{rel}/memory.usage_in_bytes"))
    return out


def open_prepared(path: str | os.PathLike, check: bool = True) -> Dataset:
    """The prepared dataset at ``path`` as read-only memory maps (``check``: sizes first)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no prepared data on {socket.gethostname()}; data.cache must be storage "
                        f"every node sees at the same path, or run `lrjob prepare JOB` on this node")
    m = _manifest(path)
    if check:
        bad = verify(path, checksums=False)
        if bad:
            raise DataError(f"{path}: {bad[0]}; run `lrjob prepare JOB` to rebuild it")

    def array(name):
        e = m["arrays"][name]
        shape = tuple(e["shape"])
        if shape[0] == 0:
            return np.zeros(shape, dtype=np.dtype(e["dtype"]))
        return np.memmap(path / e["file"], dtype=np.dtype(e["dtype"]), mode="r", shape=shape)

    try:
        arrays = {name: array(name) for name in ARRAYS}
        _advise(arrays["train-x"])
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot map the prepared files ({e}); is the directory visible on this node? "
                        f"Put data.cache on storage every node sees") from None
    return Dataset(arrays["train-x"], arrays["train-y"], arrays["val-x"], arrays["val-y"], source=m["source"],
                   image_shape=tuple(m["image_shape"]) if m.get("image_shape") else None,
                   description=m.get("description", ""), val_name=m.get("val_name", "validation"),
                   extra={"columns": m.get("columns") or [], "prepared": str(path)}, scale=m.get("scale"),
                   home=str(path), stats=m.get("stats"))


# --------------------------------------------------------------------------- the cache
def cache_entries(cache: str | os.PathLike | None = None) -> list[dict]:
    """Every prepared folder under ``cache``: name, source, rows, bytes, when it was made,
    and what it was prepared from (oldest first)."""
    root = Path(cache).expanduser() if cache else default_cache()
    out = []
    for p in sorted(root.glob("*"), key=lambda p: p.stat().st_mtime if p.exists() else 0):
        if not p.is_dir() or p.name.startswith("."):
            continue
        try:
            m = _manifest(p)
            rows = [m["arrays"]["train-x"]["shape"][0], m["arrays"]["val-x"]["shape"][0]]
        except (DataError, KeyError, TypeError):
            m, rows = {}, None
        out.append({"path": str(p), "source": m.get("source"), "rows": rows,
                    "bytes": sum(f.stat().st_size for f in p.iterdir() if f.is_file()),
                    "modified": p.stat().st_mtime, "from": m.get("description")})
    return out


def clean_cache(cache: str | os.PathLike | None = None, keep: set[str] = frozenset()) -> list[str]:
    """Remove every prepared folder under ``cache`` but those in ``keep``, and temporary
    folders of preparations that died on this host; returns the removed paths. A run that
    is using a removed folder keeps its open maps; the next run prepares again."""
    root = Path(cache).expanduser() if cache else default_cache()
    if not root.is_dir():
        return []
    _sweep(root)
    removed = []
    for entry in cache_entries(root):
        if entry["path"] not in keep:
            _remove(Path(entry["path"]))
            removed.append(entry["path"])
    return removed
