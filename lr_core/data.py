"""Data sources and their checks.

Every source returns a :class:`Dataset` of float32 features and integer labels, already
split into training and validation rows. Bad files raise :class:`DataError` with one
line naming the file, row or column and the fix. Nothing here reads pickles.

Sources (docs/design.md#data): synthetic-binary, synthetic-blobs, mnist, fashion-mnist, digits,
csv, npz. MNIST-style sources read the four standard IDX files (raw or ``.gz``) from
``data.path`` or from the cache directory that ``.ci/install`` fills.

Each source is a :class:`Source` in ``REGISTRY``: the ``data.options`` it takes, the
rules it puts on a job (checked by :func:`check_source_spec`) and its loader, which
:func:`load_dataset` calls by name. Every loader finishes its labels with
:func:`finish_labels`.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .config import MODEL_KINDS
from .errors import DataError, SpecError, clip, shown, suggest
from .tables import open_table, read_all

__all__ = [
    "Dataset", "load_dataset", "SOURCES", "REGISTRY", "Source", "Option", "LoadRequest",
    "check_source_spec", "source_options", "finish_labels", "read_idx", "write_idx",
    "check_features", "check_labels", "apply_label_map", "data_home", "mnist_files", "MNIST_MD5",
    "verify_idx_dir", "MAX_IDX_BYTES", "read_features_file", "holdout_split", "make_request", "feature_stats",
    "array_blocks", "standardizer", "stats_rows", "STATS_BYTES", "BlockSums",
]

# MD5 of the four standard, uncompressed MNIST files.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IDX_NAMES = tuple(MNIST_MD5)
# The data section's defaults (launcher/spec.py's DataSpec takes them from here).
LABEL_COLUMN = "label"
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Dataset:
    """Training and validation rows. ``x_*`` (n, d) float32, or uint8 with ``scale`` (the
    features are then ``x * scale`` in float32: images keep a quarter of the bytes);
    ``y_*`` int64 (n,).

    A prepared dataset (``lr_core.prepared``) holds read-only memory maps of its files
    and ``home``, its directory: pickled (``ray.put``), it travels as that path and the
    receiver maps the same files, so no rows go through the object store.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    source: str
    image_shape: tuple[int, ...] | None = None
    description: str = ""
    val_name: str = "validation"
    extra: dict = field(default_factory=dict)
    scale: float | None = None
    home: str | None = None
    # Standardization (docs/design.md#standardization): {"mean", "std", "constant"} of the
    # training rows (feature_stats), or None; the model sees (features - mean) / std.
    stats: dict | None = None

    def __reduce_ex__(self, protocol):
        if self.home is not None:
            from .prepared import reopen

            return reopen, (self.home, self.extra.get("origin"))
        return super().__reduce_ex__(protocol)

    def features(self, x: np.ndarray) -> np.ndarray:
        """Rows of ``x_train``/``x_val`` as the model sees them: float32, scaled, standardized."""
        x = np.asarray(x)
        x = x.astype(np.float32, copy=False) if self.scale is None else x.astype(np.float32) * np.float32(self.scale)
        if self.stats is not None:
            mean, inv_std = standardizer(self.stats)
            x = (x - mean) * inv_std
        return x

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.x_train.nbytes + self.y_train.nbytes + self.x_val.nbytes + self.y_val.nbytes)


def data_home() -> Path:
    """The cache directory: ``$LRJOB_DATA_HOME``, else ``$XDG_CACHE_HOME/lrjob``, else ``~/.cache/lrjob``."""
    if os.environ.get("LRJOB_DATA_HOME"):
        return Path(os.environ["LRJOB_DATA_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lrjob"


# --------------------------------------------------------------------------- IDX files
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# The most bytes one IDX file may hold once decompressed (the MNIST training images are
# 47 MB): its header's dimensions are checked against this before anything is read, so a
# gzip bomb or a lying header costs nothing (docs/design.md#data).
MAX_IDX_BYTES = 2 << 30


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip). Checks the magic number and the dimensions, then
    reads exactly the bytes they declare (at most ``MAX_IDX_BYTES``): a gzip stream is
    decompressed only that far, and a file longer or shorter than declared is refused."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            return _read_idx_stream(f, path, None if gz else os.fstat(f.fileno()).st_size)
    except OSError as e:
        if isinstance(e, gzip.BadGzipFile) or not e.strerror:
            raise DataError(f"{path}: corrupt or truncated gzip file ({e}); download it again") from None
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from None
    except (EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e}); download it again") from None
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read this IDX file; free memory or use a smaller "
                        f"file") from None


def _read_idx_stream(f, path: Path, file_size: int | None) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
        raise DataError(f"{path}: not an IDX file (magic bytes {head[:4].hex() or 'missing'}, "
                        f"expected 0000 08 01..03); point data.path at the standard MNIST files")
    dtype, ndim = np.dtype(_IDX_DTYPES[head[2]]), head[3]
    header = 4 + 4 * ndim
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(dims_raw)} bytes); download the file again")
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    body = math.prod(dims) * dtype.itemsize
    expected = header + body
    if body > MAX_IDX_BYTES:
        raise DataError(f"{path}: IDX dimensions {dims} declare {expected:,} bytes, more than the "
                        f"{MAX_IDX_BYTES:,} an IDX file may hold; this is not a dataset of the MNIST kind "
                        f"(or its header is damaged)")
    if file_size is not None and file_size != expected:  # a plain file: its size must be the declared one
        raise DataError(f"{path}: truncated or padded IDX file: dimensions {dims} need {expected} bytes, "
                        f"found {file_size}; download the file again")
    data = f.read(body + 1)  # one byte more than declared: a longer stream is padded
    if len(data) != body:
        found = header + len(data) if len(data) < body else f"more than {expected}"
        raise DataError(f"{path}: truncated or padded IDX file: dimensions {dims} need {expected} bytes, "
                        f"found {found}; download the file again")
    return np.frombuffer(data, dtype=dtype, count=math.prod(dims)).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an uint8 array as a raw IDX file (used by the cache builder and tests)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with open(path, "wb") as f:
        f.write(header + array.tobytes())


def mnist_files(directory: str | os.PathLike, source: str = "mnist") -> dict[str, Path]:
    """Find the four standard IDX files (raw or .gz) in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{source}: data directory {directory} does not exist; set data.path to a "
                        f"directory with the four IDX files" + (" or run `make install`" if source == "mnist" else ""))
    found = {}
    for name in IDX_NAMES:
        for candidate in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
            if (directory / candidate).is_file():
                found[name] = directory / candidate
                break
        else:
            raise DataError(f"{source}: {directory} has no {name} (or {name}.gz); it needs the four standard "
                            f"IDX files: {', '.join(IDX_NAMES)}")
    return found


def verify_idx_dir(directory: str | os.PathLike) -> list[str]:
    """Problems with the MNIST cache in ``directory`` (empty list when every MD5 matches)."""
    problems = []
    for name, md5 in MNIST_MD5.items():
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != md5:
            problems.append(f"{path}: MD5 {digest}, expected {md5} (corrupt file)")
    return problems


def _load_idx_source(source: str, path: str | None, raw: bool = False) -> Dataset:
    directory = Path(path).expanduser() if path else data_home() / source
    files = mnist_files(directory, source)
    if not path and source == "mnist":
        problems = verify_idx_dir(directory)
        if problems:
            raise DataError(f"mnist cache: {problems[0]}; run `make install` (or "
                            f"`python -m launcher.datacache ensure`) to rebuild it")
    arrays = {name: read_idx(p) for name, p in files.items()}
    x_tr, y_tr = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    x_te, y_te = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    for xs, ys, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise DataError(f"{source}: {split} images {xs.shape} and labels {ys.shape} do not match; "
                            f"expected (n, rows, cols) images and n labels")
        images = files[f"{split}-images-idx3-ubyte"]
        if len(xs) == 0 or xs[0].size == 0:
            raise DataError(f"{images}: no images (dimensions {xs.shape}); the {split} split needs at least one "
                            f"image of at least one pixel")
        if xs.dtype.kind == "f":  # float IDX images: every pixel must be a number
            check_features(xs.reshape(len(xs), -1), str(images))
    shape = tuple(int(s) for s in x_tr.shape[1:])
    scale = np.float32(1.0 / 255.0)
    if raw:  # the stored bytes; the scale is applied where the features are used
        return Dataset(x_train=x_tr.reshape(len(x_tr), -1), y_train=_idx_labels(y_tr),
                       x_val=x_te.reshape(len(x_te), -1), y_val=_idx_labels(y_te), source=source,
                       image_shape=shape, val_name="test", description=f"{source} from {directory}",
                       scale=float(scale))
    return Dataset(
        x_train=x_tr.reshape(len(x_tr), -1).astype(np.float32) * scale, y_train=_idx_labels(y_tr),
        x_val=x_te.reshape(len(x_te), -1).astype(np.float32) * scale, y_val=_idx_labels(y_te),
        source=source, image_shape=shape, val_name="test",
        description=f"{source} from {directory}")


def _idx_labels(y: np.ndarray) -> np.ndarray:
    """IDX labels as read: integers as int64; float labels (IDX type 0x0D/0x0E) stay float
    for :func:`check_labels`, which refuses 0.5 and NaN (a cast to int64 would make them 0
    and -9223372036854775808)."""
    return y.astype(np.int64) if y.dtype.kind in "iub" else y.astype(np.float64)


# --------------------------------------------------------------------------- checks
def check_features(x: np.ndarray, where: str, num_features: int | None = None,
                   columns: list[str] | None = None, offset: int = 0) -> np.ndarray:
    """Features must be a non-empty 2-D finite float array of at least one column (with
    ``num_features`` columns).
    ``offset``: the number of rows before ``x`` in its file (a block's errors name file rows)."""
    if x.ndim != 2:
        raise DataError(f"{where}: features must be a 2-D table (rows x features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: no rows; the dataset is empty")
    if num_features is not None and x.shape[1] != num_features:
        raise DataError(f"{where}: {x.shape[1]} feature columns, the model expects {num_features} "
                        f"(same columns, in training order)")
    if x.shape[1] == 0:  # a table of labels only (docs/design.md#data)
        raise DataError(f"{where}: no feature columns; give at least one column besides the label")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: features must be numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        col = clip(columns[c], 40) if columns and c < len(columns) else f"column {c + 1}"  # 1-based, as rows are
        raise DataError(f"{where}: row {offset + r + 1}, {col}: value {x[r, c]} is not finite (NaN or inf); "
                        f"clean or impute it first ({int(bad.sum())} such values)")
    return x


def apply_label_map(y: np.ndarray, label_map: Mapping[Any, Any] | None, where: str, offset: int = 0) -> np.ndarray:
    if not label_map:
        return y
    lookup = {str(k): v for k, v in label_map.items()}
    out = np.empty(len(y), dtype=np.float64)
    for i, v in enumerate(y):
        key = _label_key(v)
        if key not in lookup:
            raise DataError(f"{where}: row {offset + i + 1}: label {shown(v)} is not in data.label_map "
                            f"{shown(dict(label_map))}; fix the row, or add the label to the map (before training)")
        out[i] = lookup[key]
    return out


def _label_key(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (np.integer,)):
        return str(int(v))
    return str(v)


def check_labels(y: np.ndarray, kind: str, num_classes: int, where: str, offset: int = 0) -> np.ndarray:
    """Binary labels must be exactly {0, 1}; softmax labels integers in [0, num_classes)."""
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be one value per row, got shape {y.shape}")
    if len(y) == 0:
        raise DataError(f"{where}: no rows; the dataset is empty")
    if y.dtype.kind in "US O":
        try:
            y = y.astype(np.float64)
        except (ValueError, TypeError):
            sample = [clip(v, 40) for v in sorted({str(v) for v in y})[:4]]
            raise DataError(f"{where}: labels must be numbers, found {sample}; map them with "
                            f"data.label_map, e.g. {{{sample[0]!r}: 0, ...}}") from None
    yf = np.asarray(y)  # as stored: an integer label is named exactly, however large
    if not np.isfinite(yf).all():
        r = int(np.argwhere(~np.isfinite(yf))[0][0])
        raise DataError(f"{where}: row {offset + r + 1}: label {y[r]} is not finite; every row needs a label")
    if not np.all(yf == np.round(yf)):
        r = int(np.argwhere(yf != np.round(yf))[0][0])
        raise DataError(f"{where}: row {offset + r + 1}: label {y[r]} is not an integer class")
    # whole numbers now: all in {0, 1} (in [0, num_classes)) exactly when the smallest and the
    # largest are, so valid labels are not sorted; the distinct values are listed for the error only
    if yf.min() < 0 or yf.max() > (1 if kind == "binary" else num_classes - 1):
        values = sorted(int(v) for v in np.unique(yf))
        if kind == "binary":
            listed = values if len(values) <= 6 else values[:6] + ["..."]
            hint = ""
            if len(values) == 2:
                hint = f"; re-encode with data.label_map: {{{values[0]}: 0, {values[1]}: 1}}"
            r = int(np.flatnonzero((yf != 0) & (yf != 1))[0])
            raise DataError(f"{where}: binary labels must be exactly 0 or 1, found {listed} (first at row {offset + r + 1})"
                            f"{hint}")
        bad = [v for v in values if v < 0 or v >= num_classes]
        r = int(np.flatnonzero((yf < 0) | (yf >= num_classes))[0])
        raise DataError(f"{where}: softmax labels must be integers in [0, {num_classes}), found "
                        f"{bad[:5]} (first at row {offset + r + 1}); raise model.num_classes or re-encode with "
                        f"data.label_map")
    return yf.astype(np.int64)


def holdout_rows(n: int, fraction: float, seed: int, where: str) -> tuple[np.ndarray, int]:
    """The hold-out of ``fraction`` of ``n`` rows: the seeded permutation, whose first
    ``n_val`` rows validate, and ``n_val``. The in-memory split and the prepared one both
    use it, so they hold out the same rows."""
    n_val = int(round(n * fraction))
    if fraction > 0:
        n_val = max(n_val, 1)
    if n - n_val < 1:
        raise DataError(f"{where}: {n} rows leave nothing to train on after data.val_fraction={fraction}; "
                        f"lower val_fraction or give data.val_path")
    return np.random.default_rng([seed, 0x5EED]).permutation(n), n_val


def holdout_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, where: str):
    """Seeded, deterministic hold-out of ``fraction`` of the rows."""
    perm, n_val = holdout_rows(len(x), fraction, seed, where)
    tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    return x[tr], y[tr], x[va], y[va]


# --------------------------------------------------------------------------- standardization
STATS_BYTES = 1 << 23  # float64 bytes of one block of feature_stats' sums (8 MB)


def stats_rows(features: int) -> int:
    """Rows per block of ``feature_stats``: a function of the feature count alone, so that
    every caller (in memory, prepared) adds in the same order and gets the same numbers,
    and a block's float64 copy stays near ``STATS_BYTES`` however wide the rows."""
    return max(1, STATS_BYTES // (8 * max(int(features), 1)))


def _block_float64(b: np.ndarray, out: np.ndarray, scale: float | None) -> None:
    """``out[...] = b`` as ``feature_stats`` sees a block: float32(x) * float32(scale) when
    scaled (as the model sees it), then float64."""
    if scale is not None:  # the numbers of a float32 set loaded already scaled (load_dataset in memory)
        out[...] = np.multiply(b, np.float32(scale), dtype=np.float32)
    else:
        out[...] = b


class BlockSums:
    """The first pass of :func:`feature_stats` (the row count and the float64 sums per
    feature) fed rows in pieces of any size, in order, while they are written: the same
    blocks of ``stats_rows(d)`` rows and the same numbers, without reading them again."""

    def __init__(self, features: int, scale: float | None = None):
        self.rows, self.scale = stats_rows(features), scale
        self._buf = np.empty((self.rows, features), dtype=np.float64)
        self._fill, self.n, self.total = 0, 0, None

    def add(self, x: np.ndarray) -> None:
        at = 0
        while at < len(x):
            take = min(self.rows - self._fill, len(x) - at)
            _block_float64(x[at:at + take], self._buf[self._fill:self._fill + take], self.scale)
            self._fill += take
            at += take
            if self._fill == self.rows:
                self._flush()

    def _flush(self) -> None:
        if self._fill:
            s = self._buf[:self._fill].sum(axis=0)
            self.total = s if self.total is None else np.add(self.total, s, out=self.total)
            self.n += self._fill
            self._fill = 0

    def result(self) -> tuple[int, np.ndarray | None]:
        """(rows, sums) of every row added; no more rows can be added (the block buffer is freed)."""
        self._flush()
        self._buf = None
        return self.n, self.total


# The smallest std standardization can use: features are multiplied by 1 / std in float32,
# which overflows below 1 / float32's largest (2.94e-39). A training column whose std is
# smaller counts as constant; an export whose std is smaller is damaged.
MIN_STD = 1.0 / float(np.finfo(np.float32).max)


def feature_stats(blocks: Callable[[], Any], scale: float | None = None,
                  sums: tuple[int, np.ndarray | None] | None = None) -> dict:
    """The mean and standard deviation (population, like scikit-learn's StandardScaler) of
    every feature over the training rows, in float64, in two passes over ``blocks()``
    (an iterable of consecutive row blocks of ``stats_rows(d)`` rows, float32, or uint8 times
    ``scale`` taken in float32 before widening). Computed once where the data is loaded or
    prepared, never per rank, so every world size standardizes with the same numbers (docs/design.md#parity-rule). A feature
    without variance (or with a std below :data:`MIN_STD`) keeps std 1 and is listed in ``constant``. Memory: one float64 copy of
    a block, reused (the squares are taken in place). ``sums``: the first pass, already
    taken by :class:`BlockSums` while the rows were written."""
    buf = None

    def rows():
        nonlocal buf
        for b in blocks():
            b = np.asarray(b)
            if buf is None or buf.shape[0] < len(b) or buf.shape[1:] != b.shape[1:]:
                buf = np.empty(b.shape, dtype=np.float64)
            out = buf[:len(b)]
            _block_float64(b, out, scale)
            yield out

    n, total = sums if sums is not None else (0, None)
    if sums is None:
        for b in rows():
            s = b.sum(axis=0)
            total = s if total is None else np.add(total, s, out=total)
            n += len(b)
    if not n:
        raise DataError("no training rows to standardize")
    mean = total / n
    sq = None
    for b in rows():
        np.subtract(b, mean, out=b)
        np.square(b, out=b)
        d = b.sum(axis=0)
        sq = d if sq is None else np.add(sq, d, out=sq)
    std = np.sqrt(sq / n)
    # A constant float32 column leaves only float64 rounding in its deviations.
    constant = np.flatnonzero(~((std > 1e-12 * np.maximum(np.abs(mean), 1e-300)) & (std >= MIN_STD)))
    std[constant] = 1.0
    return {"mean": mean.tolist(), "std": std.tolist(), "constant": constant.tolist()}


def array_blocks(x: np.ndarray) -> Callable[[], Any]:
    """``feature_stats``'s blocks of an array in memory (``stats_rows`` rows each)."""
    rows = stats_rows(x.shape[1] if x.ndim > 1 else 1)
    return lambda: (x[a:a + rows] for a in range(0, len(x), rows))


def standardizer(stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 1 / std) as float32: standardized features are ``(x - mean) * inv_std`` in
    float32, the same in the training graph, in validation and in an exported model."""
    return (np.asarray(stats["mean"], dtype=np.float64).astype(np.float32),
            (1.0 / np.asarray(stats["std"], dtype=np.float64)).astype(np.float32))


# --------------------------------------------------------------------------- user files
def read_features_file(path: str | os.PathLike, label_column: str | None = LABEL_COLUMN,
                       require_labels: bool = True, features: list[str] | str | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Read a CSV, Parquet, NPY or NPZ table (local or a URI) whole: returns (x, y or None,
    feature column names). Large tables stream through :func:`lr_core.tables.open_table`."""
    table = open_table(path, label_column, require_labels, features)
    x, y = read_all(table)
    return x, y, table.columns


# --------------------------------------------------------------------------- what a loader gets
@dataclass(frozen=True)
class LoadRequest:
    """The job's ``data`` section and model kind, as one source's loader receives them.

    ``options`` holds every option the source declares, defaults filled in and converted
    to the declared type.
    """

    source: str
    kind: str
    num_classes: int
    seed: int
    path: str | None = None
    val_path: str | None = None
    val_fraction: float = VAL_FRACTION
    label_column: str = LABEL_COLUMN
    label_map: Mapping | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] | None = None
    standardize: bool = False  # data.standardize, resolved (docs/design.md#standardization)


def finish_labels(request: LoadRequest, where: str, *labels: np.ndarray, offset: int = 0) -> tuple[np.ndarray, ...]:
    """Finish label arrays the one way every source does: ``data.label_map`` on every
    array, then :func:`check_labels` on every array. ``where`` names the data in errors.

    A source with its own validation rows passes both arrays in one call, so a label the
    map lacks is reported before a bad class. A source without them finishes its labels,
    then holds out rows with :func:`holdout_split` and the request's ``val_fraction``
    and ``seed``.
    """
    if request.label_map:
        labels = tuple(apply_label_map(np.asarray(y, dtype=object), request.label_map, where, offset)
                       for y in labels)
    return tuple(check_labels(np.asarray(y), request.kind, request.num_classes, where, offset) for y in labels)


# --------------------------------------------------------------------------- loaders
def _read_labelled(request: LoadRequest, path: str, num_features: int | None = None):
    """One CSV/NPZ file: labels finished first, then the features checked."""
    x, y, columns = read_features_file(path, request.label_column, features=_features(request))
    where = str(Path(path).expanduser())
    (y,) = finish_labels(request, where, y)
    if len(y) != len(x):
        raise DataError(f"{where}: {len(x)} feature rows but {len(y)} labels; they must match")
    x = check_features(np.asarray(x), where, num_features, columns)
    return x, y, columns


def _features(request: LoadRequest):
    f = request.features
    return None if not f else (f[0] if len(f) == 1 else list(f))


def _load_table(request: LoadRequest) -> Dataset:
    path = request.path
    x, y, columns = _read_labelled(request, path)
    if request.val_path:
        x_va, y_va, _ = _read_labelled(request, request.val_path, x.shape[1])
        x_tr, y_tr = x, y
    else:
        x_tr, y_tr, x_va, y_va = holdout_split(x, y, request.val_fraction, request.seed, str(path))
    return Dataset(x_tr, y_tr, x_va, y_va, source=request.source, description=f"{path}",
                   extra={"columns": columns})


def _load_idx(request: LoadRequest, raw: bool = False) -> Dataset:
    ds = _load_idx_source(request.source, request.path, raw)
    where = f"{request.source} ({request.path or data_home() / request.source})"
    y_tr, y_va = finish_labels(request, where, ds.y_train, ds.y_val)
    return dataclasses.replace(ds, y_train=y_tr, y_val=y_va)


def _load_digits(request: LoadRequest) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: offline

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    (y,) = finish_labels(request, "digits", bunch.target.astype(np.int64))
    x_tr, y_tr, x_va, y_va = holdout_split(x, y, request.val_fraction, request.seed, "digits")
    return Dataset(x_tr, y_tr, x_va, y_va, source=request.source, image_shape=(8, 8),
                   description="scikit-learn 8x8 digits (1797 images)")


def _synthetic(request: LoadRequest, x: np.ndarray, y: np.ndarray, description: str) -> Dataset:
    """The first ``n_train`` generated rows train, the next ``n_val`` validate."""
    n_train = request.options["n_train"]
    y_tr, y_va = finish_labels(request, f"data.source {request.source}", y[:n_train], y[n_train:])
    return Dataset(x[:n_train], y_tr, x[n_train:], y_va, source=request.source, description=description)


def _load_synthetic_binary(request: LoadRequest) -> Dataset:
    o = request.options
    d, boundary = o["n_features"], o["boundary"]
    rng = np.random.default_rng(request.seed)
    x = rng.standard_normal((o["n_train"] + o["n_val"], d)).astype(np.float32)
    y = (x.sum(axis=1) > boundary).astype(np.int64)
    return _synthetic(request, x, y, f"x ~ N(0,1)^{d}, y = sum(x) > {boundary:g}")


def _load_synthetic_blobs(request: LoadRequest) -> Dataset:
    o = request.options
    d, sep = o["n_features"], o["separation"]
    rng = np.random.default_rng(request.seed)
    n = o["n_train"] + o["n_val"]
    y = rng.integers(0, 2, size=n).astype(np.int64)
    direction = np.ones(d) / np.sqrt(d)
    centres = np.stack([-direction * sep / 2, direction * sep / 2])
    x = (centres[y] + rng.standard_normal((n, d))).astype(np.float32)
    return _synthetic(request, x, y, f"two N(c, I) blobs in {d}-D, centres {sep:g} apart")


# --------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Option:
    """One key of ``data.options``: its type, default and sign.

    ``type`` int takes whole numbers, float takes ints and floats; booleans are refused
    (YAML reads ``yes`` as True). ``positive`` refuses values <= 0.
    """

    type: type
    default: int | float
    positive: bool = False
    most: int | None = None   # the upper bound, when there is one

    @property
    def expect(self) -> str:
        """The phrase after "data.options.KEY must be" in an error."""
        if self.type is int:
            return "an integer >= 1" if self.positive else "an integer"
        return "a finite positive number" if self.positive else "a finite number"

    def accepts(self, value: Any) -> bool:
        """Whether ``value``, as the spec gives it, is a valid setting: a float option must
        be finite as a float (``.inf``, ``.nan`` and an integer of 400 digits are not)."""
        kinds = int if self.type is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
        if self.type is float:
            try:
                if not math.isfinite(float(value)):
                    return False
            except OverflowError:
                return False
        return not (self.positive and value <= 0)


# Synthetic sources generate their rows in memory: bounds on the options and on the
# values generated (float32; docs/design.md#data).
MAX_SYNTHETIC_ROWS = 100_000_000
MAX_FEATURES = 1_000_000
MAX_SYNTHETIC_VALUES = 1 << 28   # 1 GiB of float32


@dataclass(frozen=True)
class Source:
    """A data source: its loader and every rule it puts on a job's spec.

    :func:`check_source_spec` enforces the rules, :func:`load_dataset` calls ``load``.
    """

    name: str
    load: Callable[[LoadRequest], Dataset]
    options: Mapping[str, Option] = field(default_factory=dict)  # the data.options it takes
    needs_path: bool = False                  # data.path must name a file
    kinds: tuple[str, ...] = MODEL_KINDS      # the model.kind values its labels suit
    classes: int | None = None                # how many classes its labels have, when fixed
    standardize: bool = False                 # data.standardize's default: images and synthetic data have their scale


# Every source by name: load_dataset and check_source_spec look them up here. The order
# is the order data.source lists its choices in.
REGISTRY: dict[str, Source] = {s.name: s for s in (
    Source("synthetic-binary", _load_synthetic_binary, kinds=("binary",), options={
        "n_train": Option(int, 1000, True, MAX_SYNTHETIC_ROWS), "n_val": Option(int, 100, True, MAX_SYNTHETIC_ROWS),
        "n_features": Option(int, 10, True, MAX_FEATURES), "boundary": Option(float, 3.0)}),
    Source("synthetic-blobs", _load_synthetic_blobs, kinds=("binary",), options={
        "n_train": Option(int, 400, True, MAX_SYNTHETIC_ROWS), "n_val": Option(int, 100, True, MAX_SYNTHETIC_ROWS),
        "n_features": Option(int, 2, True, MAX_FEATURES), "separation": Option(float, 4.0, positive=True)}),
    Source("mnist", _load_idx, classes=10),
    Source("fashion-mnist", _load_idx, classes=10),
    Source("digits", _load_digits, classes=10),
    Source("csv", _load_table, needs_path=True, standardize=True),
    Source("npz", _load_table, needs_path=True, standardize=True),
    Source("parquet", _load_table, needs_path=True, standardize=True),
    Source("npy", _load_table, needs_path=True, standardize=True),
)}
# The names data.source accepts.
SOURCES = tuple(REGISTRY)


def source_options(source: str) -> set[str]:
    """The keys ``data.options`` accepts for ``source``."""
    return set(REGISTRY[source].options) if source in REGISTRY else set()


def _needs_path(source: str) -> str:
    return f"data.path: source {source} needs a file; set data.path"


def check_source_spec(source: str, *, kind: str, num_classes: int, path: str | None,
                      label_map: Mapping | None, options: Mapping) -> None:
    """Check a job's ``data`` and ``model`` sections against the rules ``source`` declares.

    Raises :class:`SpecError` naming the field, what the source needs and the fix.
    """
    src = REGISTRY.get(source)
    if src is None:
        raise SpecError(f"data.source: unknown source {shown(source)}; choose one of {', '.join(REGISTRY)}")
    for key, value in options.items():
        option = src.options.get(key)
        if option is None:
            hint = suggest(str(key), sorted(src.options)) if src.options else f"; source {source} takes no options"
            raise SpecError(f"data.options: unknown option {shown(key)} for source {source}{hint}")
        if not option.accepts(value):
            raise SpecError(f"data.options.{clip(key)} must be {option.expect}, got {shown(value)}")
        if option.most is not None and value > option.most:
            raise SpecError(f"data.options.{key} must be at most {option.most:,} (the upper bound), got "
                            f"{shown(value)}; check for a typo")
    if src.options.keys() >= {"n_train", "n_val", "n_features"}:
        o = {k: options.get(k, src.options[k].default) for k in ("n_train", "n_val", "n_features")}
        values = (o["n_train"] + o["n_val"]) * o["n_features"]
        if values > MAX_SYNTHETIC_VALUES:
            raise SpecError(f"data.options: (n_train + n_val) x n_features = {values:,} values, more than the "
                            f"{MAX_SYNTHETIC_VALUES:,} (1 GiB) a synthetic source generates in memory; lower them")
    if src.needs_path and not path:
        raise SpecError(_needs_path(source))
    if kind not in src.kinds:
        raise SpecError(f"model.kind: source {source} has {'/'.join(src.kinds)} labels; "
                        f"use model.kind: {' or '.join(src.kinds)}")
    if src.classes is not None:
        if kind == "softmax" and num_classes < src.classes:
            raise SpecError(f"model.num_classes: {source} has {src.classes} classes, got {num_classes}; "
                            f"set {src.classes}")
        if kind == "binary" and src.classes > 2 and not label_map:
            raise SpecError(f"model.kind: {source} has {src.classes} classes; use kind: softmax, or map them "
                            f"to 0/1 with data.label_map")


# --------------------------------------------------------------------------- entry point
def make_request(source: str, *, kind: str, num_classes: int, seed: int, path: str | None = None,
                 val_path: str | None = None, val_fraction: float = VAL_FRACTION, label_column: str = LABEL_COLUMN,
                 label_map: Mapping | None = None, options: Mapping | None = None,
                 features: list[str] | None = None, standardize: bool | None = None) -> LoadRequest:
    """The :class:`LoadRequest` of a job's ``data`` section: the source checked, its
    options filled in with their defaults."""
    options = dict(options or {})
    src = REGISTRY.get(source)
    if src is None:
        raise DataError(f"data.source: unknown source {shown(source)}; choose one of {', '.join(REGISTRY)}")
    if src.needs_path and not path:
        raise DataError(_needs_path(source))
    for key, value in options.items():  # the spec checked them; a caller of load_dataset may not have
        if key in src.options and not src.options[key].accepts(value):
            raise DataError(f"data.options.{clip(key)} must be {src.options[key].expect}, got {shown(value)}")
    filled = {key: o.type(options.get(key, o.default)) for key, o in src.options.items()}
    return LoadRequest(source, kind, num_classes, seed, path=path, val_path=val_path, val_fraction=val_fraction,
                       label_column=label_column, label_map=label_map, options=filled,
                       features=tuple(features) if features else None,
                       standardize=src.standardize if standardize is None else bool(standardize))


def load_dataset(source: str, **kwargs) -> Dataset:
    """Load and check one dataset, in memory, as the job spec's ``data`` section describes
    it (keyword arguments: :func:`make_request`'s)."""
    request = make_request(source, **kwargs)
    ds = REGISTRY[source].load(request)
    if request.standardize:
        ds = dataclasses.replace(ds, stats=feature_stats(array_blocks(ds.x_train), ds.scale))
    return ds
