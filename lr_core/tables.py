"""User tables, read in bounded blocks: CSV, Parquet, NPY and NPZ, local or on object storage.

A path is a local file or a URI that ``pyarrow.fs`` resolves (``s3://``, ``gs://``,
``hdfs://``, ``file://``); an S3-compatible server other than AWS takes
``?endpoint_override=host:port&scheme=http`` in the URI, or ``AWS_ENDPOINT_URL``.
:func:`open_table` returns a :class:`Table`: the feature column names and
:meth:`Table.batches`, which yields ``(x, y)`` blocks of at most ``block_rows`` rows (``x``
float32 or the file's own integer dtype, ``y`` the raw label values or ``None``), so a
file larger than memory streams through. Bad files raise :class:`DataError` with one line
naming the file, line, row or column and the fix (docs/design.md#data).

Formats, by the path's ending: ``.csv`` (also ``.csv.gz``: parsed by pyarrow in whole-line chunks, one per core,
typed float32 features), ``.parquet``/``.pq``, a directory of Parquet files or a
glob (``data/*.parquet``), ``.npy`` (features only), a directory with ``x.npy`` and ``y.npy``
(both read block by block) and ``.npz``
(arrays ``x`` and ``y``; read whole: use NPY or Parquet for large data).
"""
from __future__ import annotations

import codecs
import csv
import fnmatch
import io
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Callable, Iterator

import numpy as np

from .errors import DataError, clip, near, shown

__all__ = ["Table", "open_table", "resolve", "display", "read_all", "text_column", "is_uri", "BLOCK_ROWS",
           "fingerprint", "MAX_FEATURES", "MAX_NPZ_BYTES"]

BLOCK_ROWS = 65536          # rows per block a table yields
_CSV_CHUNK_BYTES = 2 << 20  # CSV is parsed in whole-line chunks of about this many bytes
_CSV_THREADS = 4            # at most this many chunks at once (and no more than the cores)
_BLOCK_BYTES = 64 << 20     # an .npy block holds at most this many bytes (fewer rows when rows are wide)
# Bounds on what a file may declare, checked before anything is allocated (docs/design.md#data).
MAX_FEATURES = 1_000_000    # columns of a table
MAX_NPZ_BYTES = 512 << 20   # an .npz's arrays, decompressed and as float32, x and y together (read whole)


def is_uri(path: str) -> bool:
    """Whether ``path`` names a URI (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def display(path: str | os.PathLike) -> str:
    """``path`` as messages and files show it: a URI without its query (endpoint options)
    and without any ``user:secret@`` part (also one whose secret holds an unencoded ``/``,
    ``?`` or ``@``)."""
    text = str(path)
    if not is_uri(text):
        return os.path.abspath(os.path.expanduser(text))
    scheme, rest = text.split("://", 1)
    head = rest.partition("@")[0]
    cut = min([i for i in (head.find("/"), head.find("?")) if i >= 0], default=-1)
    if "@" in rest and cut < 0:  # user[:secret]@host: the login ends at the host's last '@'
        rest = rest[rest.partition("/")[0].rfind("@") + 1:]
    elif "@" in rest and ":" in head[:cut] and not re.fullmatch(r"[^:]*:\d{1,5}", head[:cut]):
        # a secret with an unencoded '/' or '?' (s3://KEY:SE/CRET@bucket/x): hide up to the last
        # '@' (more than the login at worst, never part of it); a host:port before the '/'
        # (hdfs://nn:8020/data/user@corp/x.csv) is no login
        rest = rest[rest.rfind("@") + 1:]
    return f"{scheme}://{rest.partition('?')[0]}"


def resolve(path: str | os.PathLike):
    """``(filesystem, path inside it, name for messages)`` of a local path or a URI."""
    import pyarrow.fs as pfs

    text = str(path)
    if not is_uri(text):
        local = os.path.abspath(os.path.expanduser(text))
        return pfs.LocalFileSystem(), local, local
    try:
        fs, inner = pfs.FileSystem.from_uri(text)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError / ValueError
        reason = re.sub(r"://[^/@\s]*@", "://", _first_line(e)).split("?")[0]  # no user:secret@, no query
        raise DataError(f"{display(text)}: cannot open this URI ({reason}); check its "
                        f"scheme (s3://, gs://, hdfs://, file://), its options (a server other than AWS: "
                        f"?endpoint_override=host:port&scheme=http) and the credentials in the environment"
                        ) from None
    return fs, inner, display(text)


def _first_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return lines[0][:300] if lines else type(e).__name__


@dataclass
class Table:
    """One readable table: ``columns`` (feature names), ``rows`` when known, ``batches()``."""

    where: str
    columns: list[str]
    rows: int | None
    _batches: Callable[[int], Iterator[tuple]] = field(repr=False)
    has_labels: bool = True
    # The rows counted by a cheap pass over the file, for a table that does not declare
    # them (a local CSV): None when they cannot be counted exactly that way.
    _count: Callable[[], int | None] | None = field(default=None, repr=False)
    counted: bool = False  # rows is such a count
    # Where the block last yielded comes from: the file (one of a directory's parts) and
    # the number of that file's rows before it. Errors about a block name these.
    block_where: str = ""
    block_offset: int = 0

    def count_rows(self) -> int | None:
        """``rows`` when the table declares them, else its rows counted before it is read
        (a local, uncompressed CSV without quotes), else ``None``."""
        if self.rows is None and self._count is not None:
            self.rows = self._count()
            self.counted, self._count = self.rows is not None, None
        return self.rows

    def batches(self, block_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """``(x, y)`` blocks in file order, at most ``block_rows`` (default ``BLOCK_ROWS``) rows each."""
        done = 0
        for block in self._batches(block_rows or BLOCK_ROWS):
            x, y = block[0], block[1]
            self.block_where, self.block_offset = (block[2], block[3]) if len(block) == 4 else (self.where, done)
            done += len(x)
            yield x, y


def _info(fs, inner: str, where: str):
    import pyarrow.fs as pfs

    try:
        info = fs.get_file_info(inner)
    except Exception as e:  # noqa: BLE001 - e.g. no credentials, unreachable endpoint
        raise DataError(f"{where}: cannot reach ({_first_line(e)}); check the URI, its endpoint (a server other "
                        f"than AWS: ?endpoint_override=host:port&scheme=http) and the credentials") from None
    if info.type == pfs.FileType.NotFound:
        raise DataError(f"{where}: file not found; check data.path / data.val_path")
    return info


def fingerprint(path: str | os.PathLike, exclude: str | None = None) -> list:
    """What identifies the current content of ``path`` cheaply: for every file behind it
    (a directory or glob has several), its name, size and modification time. Files under
    the local folder ``exclude`` (a cache kept inside the data's folder) do not count."""
    import pyarrow.fs as pfs

    fs, inner, where = resolve(path)
    try:
        if _has_glob(inner):
            infos = _glob(fs, inner, where)
        else:
            info = _info(fs, inner, where)
            infos = [info]
            if info.type == pfs.FileType.Directory:
                infos = sorted((i for i in fs.get_file_info(pfs.FileSelector(inner, recursive=True))
                                if i.type == pfs.FileType.File), key=lambda i: i.path)
    except DataError:
        return [[where, "unreadable"]]  # the reader reports the problem in its own words
    skip = os.path.join(os.path.abspath(exclude), "") if exclude and not is_uri(str(path)) else None
    return [[i.path, i.size, i.mtime_ns] for i in infos if not (skip and i.path.startswith(skip))]


def _has_glob(p: str) -> bool:
    return any(c in p for c in "*?[")


def _glob(fs, pattern: str, where: str) -> list:
    import pyarrow.fs as pfs

    prefix = pattern.split("*")[0].split("?")[0].split("[")[0]  # up to the first wildcard
    base = str(PurePosixPath(prefix)) if prefix.endswith("/") else str(PurePosixPath(prefix).parent)
    try:
        infos = fs.get_file_info(pfs.FileSelector(base, recursive=True))
    except FileNotFoundError:
        infos = []
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{where}: cannot list ({_first_line(e)}); check the URI and the credentials") from None
    depth = pattern.count("/")  # a * stays inside one folder, as in a shell
    found = sorted((i for i in infos if i.type == pfs.FileType.File and i.path.count("/") == depth
                    and fnmatch.fnmatch(i.path, pattern)), key=lambda i: i.path)
    if not found:
        raise DataError(f"{where}: no file matches this pattern; check data.path")
    return found


def _dir_files(fs, inner: str, where: str) -> list:
    import pyarrow.fs as pfs

    infos = fs.get_file_info(pfs.FileSelector(inner, recursive=True))
    files = sorted((i for i in infos if i.type == pfs.FileType.File and i.path.lower().endswith((".parquet", ".pq"))),
                   key=lambda i: i.path)
    if not files:
        found = sorted(PurePosixPath(i.path).name for i in infos if i.type == pfs.FileType.File)[:5]
        raise DataError(f"{where}: a directory needs .parquet files, or x.npy and y.npy (found: "
                        f"{', '.join(found) or 'nothing'}); or point data.path at a .csv, .parquet or .npz file")
    return files


def open_table(path: str | os.PathLike, label_column: str | None = "label", require_labels: bool = True,
               features: list[str] | str | None = None) -> Table:
    """Open a CSV, Parquet (file, directory or glob), NPY or NPZ table for block reading.

    ``features``: the feature columns of a Parquet or CSV table (a list of names, or one
    name of a list column); by default every column but ``label_column``.
    """
    import pyarrow.fs as pfs

    fs, inner, where = resolve(path)
    if _has_glob(inner):
        return _parquet_table(fs, [i.path for i in _glob(fs, inner, where)], where, label_column,
                              require_labels, features)
    info = _info(fs, inner, where)
    name = inner.lower()
    if info.type == pfs.FileType.Directory:
        if fs.get_file_info(inner + "/x.npy").type == pfs.FileType.File:
            if require_labels and fs.get_file_info(inner + "/y.npy").type != pfs.FileType.File:
                raise DataError(f"{where}: has x.npy but no y.npy; save the labels with np.save(y.npy, y)")
            return (_npy_pair_table(fs, inner, where) if require_labels else _npy_table(fs, inner + "/x.npy", where))
        return _parquet_table(fs, [i.path for i in _dir_files(fs, inner, where)], where, label_column,
                              require_labels, features)
    if name.endswith((".parquet", ".pq")):
        return _parquet_table(fs, [inner], where, label_column, require_labels, features)
    if name.endswith(".npz"):
        return _npz_table(fs, inner, where, require_labels)
    if name.endswith(".npy"):
        if require_labels:
            raise DataError(f"{where}: .npy holds features only; training needs a directory with x.npy and "
                            f"y.npy, an .npz with arrays x and y, or a table with a label column")
        return _npy_table(fs, inner, where)
    return _csv_table(fs, inner, where, label_column, require_labels, features)


def text_column(path: str | os.PathLike, column: str, block_rows: int | None = None) -> Iterator[list[str]]:
    """The cells of one named column of a CSV or Parquet table as text, in blocks of at
    most ``block_rows`` rows, in file order: an id that ``predict`` passes through as it
    is written (``007`` stays ``007``), never read as a number. Raises ``DataError`` for a
    missing column, or a file without column names (NPY, NPZ, a CSV without a header)."""
    import pyarrow.fs as pfs

    block_rows = block_rows or BLOCK_ROWS
    fs, inner, where = resolve(path)
    if _has_glob(inner):
        files = [i.path for i in _glob(fs, inner, where)]
    elif _info(fs, inner, where).type == pfs.FileType.Directory:
        if fs.get_file_info(inner + "/x.npy").type == pfs.FileType.File:
            files = None
        else:
            files = [i.path for i in _dir_files(fs, inner, where)]
    elif inner.lower().endswith((".parquet", ".pq")):
        files = [inner]
    elif inner.lower().endswith((".npy", ".npz")):
        files = None
    else:
        yield from _csv_text_column(fs, inner, where, column, block_rows)
        return
    if files is None:
        raise DataError(f"{where}: an NPY or NPZ file names no columns, so it has no id column {shown(column)}; "
                        f"drop the id option (rows are then numbered), or give a CSV or Parquet file")
    import pyarrow.parquet as pq

    for f in files:
        pf = pq.ParquetFile(f, filesystem=fs)
        if column not in pf.schema_arrow.names:
            names = pf.schema_arrow.names
            raise DataError(f"{where}: no column {shown(column)} for the id (columns: "
                            f"{', '.join(clip(n, 40) for n in names[:8])}{', ...' if len(names) > 8 else ''})"
                            f"{_near_id(column, names)}")
        done = 0
        for batch in pf.iter_batches(batch_size=block_rows, columns=[column]):
            cells = batch.column(0)
            if cells.null_count:
                # an empty id would join nothing back: a row without its key is the file's to fix
                row = done + cells.is_null().to_pylist().index(True) + 1
                raise DataError(f"{f if len(files) > 1 else where}: row {row}: the id column {shown(column)} is null; "
                                f"every row needs an id: fill it in, or drop the id option (rows are then numbered)")
            done += len(cells)
            yield [str(v) for v in cells.to_pylist()]


def _near_id(column: str, names: list[str]) -> str:
    """"; did you mean 'customer_id'?" for a near column name (case aside; ID and id: the first in
    the file's order), else ""."""
    found = near(column, names)
    return f"; did you mean {found!r}?" if found else ""


def _csv_text_column(fs, inner: str, where: str, column: str, block_rows: int) -> Iterator[list[str]]:
    first, _ = _csv_head(fs, inner, where)
    header = [c.strip() for c in first] if first and not any(_is_number(c) for c in first) else None
    if header is None or column not in header:
        what = (f"columns: {', '.join(clip(h, 40) for h in header[:8])}{', ...' if len(header) > 8 else ''}"
                if header else "no header row")
        near = _near_id(column, header or [])
        raise DataError(f"{where}: no column {shown(column)} for the id ({what})"
                        + (near or "; name the id column in the header"))
    j = header.index(column)
    with _open_stream(fs, inner, where) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        records = _records(text)
        next(records)  # the header
        block = []
        try:
            for _, row in records:
                block.append(row[j].strip() if j < len(row) else "")
                if len(block) == block_rows:
                    yield block
                    block = []
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{where}: malformed CSV ({e})") from None
        if block:
            yield block


def read_all(table: Table) -> tuple[np.ndarray, np.ndarray | None]:
    """Every block of ``table`` in one ``(x, y)`` pair (in memory)."""
    xs, ys = [], []
    try:
        for x, y in table.batches():
            xs.append(x)
            if y is not None:
                ys.append(y)
        if not xs:
            return np.zeros((0, len(table.columns)), dtype=np.float32), (np.zeros(0) if table.has_labels else None)
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        y = (np.concatenate(ys) if len(ys) > 1 else ys[0]) if ys else None
    except MemoryError:
        xs = ys = None  # noqa: F841 - let the blocks go before the message is built
        raise DataError(f"{table.where}: not enough memory to hold the whole table; free memory, or give "
                        f"the data as Parquet or x.npy/y.npy, which training reads in blocks") from None
    return x, y


# --------------------------------------------------------------------------- CSV
def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _open_stream(fs, inner: str, where: str):
    try:
        return fs.open_input_stream(inner, compression="detect")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{where}: cannot read ({_first_line(e)}); check the path and its permissions") from None


def _records(text):
    """``(first line number, cells)`` of every non-empty CSV record of a text stream."""
    reader = csv.reader(text)
    last = 0
    for row in reader:
        if row and any(c.strip() for c in row):
            yield last + 1, row
        last = reader.line_num


def _first_line_too_long(head: bytes, lines: int) -> bool:
    """Whether the first record, ``lines`` physical lines of ``head`` (the file's first
    ``_HEAD_BYTES + 2`` bytes or all of it), is longer than ``_HEAD_BYTES`` without its line end,
    or goes on past ``head`` (docs/design.md#data)."""
    ends = [m.start() for _, m in zip(range(lines), _LINE_END.finditer(head))]
    if len(ends) < lines:  # no line end: the record goes on to the end of what was read
        return len(head) > _HEAD_BYTES
    end = ends[-1] - (head[ends[-1] - 1:ends[-1]] == b"\r")
    return end > _HEAD_BYTES


def _csv_head(fs, inner: str, where: str) -> tuple[list[str] | None, int]:
    """The first non-empty record of the CSV as cells (None for an empty file), and the
    number of physical lines up to its end."""
    with _open_stream(fs, inner, where) as f:
        head = f.read(_HEAD_BYTES + 2)  # room for the line end (\r\n) of a first line of _HEAD_BYTES
    # a BOM is not a cell; it is dropped here, not by the "utf-8-sig" codec, whose error offsets
    # would count from after it
    body = head[len(codecs.BOM_UTF8):] if head.startswith(codecs.BOM_UTF8) else head
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        # only a character cut by the end of a full window is no error (the rows' parse reads
        # it whole); any other byte that is not UTF-8 is the file's, even one in the window's
        # last bytes, where a header would otherwise be read cut short (docs/design.md#data)
        if e.reason != "unexpected end of data" or e.end < len(body) or len(head) < _HEAD_BYTES + 2:
            raise DataError(f"{where}: not a text CSV file ({e.reason}); save it as UTF-8 CSV") from None
        text = body[:e.start].decode("utf-8")
    try:
        reader = csv.reader(io.StringIO(text))
        for row in reader:
            if row and any(c.strip() for c in row):
                # a first record the full window does not end is cut: its cells, and the
                # offset of the rows after it, would be wrong (docs/design.md#data)
                if _first_line_too_long(head, reader.line_num):
                    raise DataError(f"{where}: the first line is longer than 1 MiB (the most a CSV's header or first "
                                    f"row may be); save a table this wide as Parquet or NPY")
                return row, reader.line_num
    except csv.Error as e:
        raise DataError(f"{where}: malformed CSV ({e})") from None
    return None, 0


def _csv_table(fs, inner: str, where: str, label_column: str | None, require_labels: bool,
               features: list[str] | str | None) -> Table:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.fs as pfs

    first, first_end = _csv_head(fs, inner, where)
    if first is None:
        raise DataError(f"{where}: empty file; the dataset needs a header and at least one row")
    # A header row has no number in it; a data row with a bad cell is reported as such.
    header = [c.strip() for c in first] if not any(_is_number(c) for c in first) else None
    width = len(first)
    label_idx = None
    if label_column is not None and header is not None and label_column in header:
        label_idx = header.index(label_column)
    elif require_labels:
        if header is None:
            raise DataError(f"{where}: no header row, so label column {label_column!r} cannot be found; "
                            f"add a header naming the columns")
        raise DataError(f"{where}: no column {label_column!r} (columns: {', '.join(clip(h, 40) for h in header[:8])}"
                        f"{', ...' if len(header) > 8 else ''}); set data.label_column")
    feat_idx = [j for j in range(width) if j != label_idx]
    if features is not None:
        wanted = [features] if isinstance(features, str) else list(features)
        _not_the_label(wanted, label_column if label_idx is not None else None, where)
        missing = [c for c in wanted if header is None or c not in header]
        if missing:
            raise DataError(f"{where}: no column {shown(missing[0])} for data.features (columns: "
                            f"{', '.join(clip(h, 40) for h in (header or [])[:8])}); fix data.features")
        feat_idx = [header.index(c) for c in wanted]
    columns = [header[j] for j in feat_idx] if header else [f"column {j + 1}" for j in feat_idx]
    internal = [f"c{j}" for j in range(width)]
    types = {internal[j]: pa.float32() for j in feat_idx}
    include = [internal[j] for j in feat_idx] + ([internal[label_idx]] if label_idx is not None else [])

    def options(label_type):
        if label_idx is not None:
            types[internal[label_idx]] = label_type
        return pcsv.ConvertOptions(column_types=dict(types), null_values=[], strings_can_be_null=False,
                                   include_columns=include)

    # Labels are parsed as numbers (float64, as _labels makes them from text, with the same
    # parser); a chunk with a label that is not a number is parsed again with the labels as
    # text, and so are the chunks after it. Explicit types: a chunk's guess cannot refuse a
    # later chunk's values.
    as_number, as_text = options(pa.float64()), options(pa.string())
    labels_as_numbers = [label_idx is not None]  # shared by the parse threads
    # The rows start after the header (or at the first data row): a byte offset, found in
    # the head that _csv_head read, counting physical lines as csv.reader does.
    start = _line_offset(fs, inner, where, first_end if header else first_end - 1)
    read = pcsv.ReadOptions(column_names=internal, use_threads=False)
    names = [internal[j] for j in feat_idx]

    def parse(chunk: memoryview):
        # In a worker thread: pyarrow parses without the GIL, so chunks parse in parallel.
        _refuse_wide_lines(chunk, width)
        buf = pa.py_buffer(chunk)
        part = None
        if labels_as_numbers[0]:
            try:
                part = pcsv.read_csv(buf, read_options=read, convert_options=as_number)
            except pa.ArrowInvalid:
                labels_as_numbers[0] = False  # a text label; or a bad cell, which fails again below
        if part is None:
            part = pcsv.read_csv(buf, read_options=read, convert_options=as_text)
        x = np.empty((part.num_rows, len(names)), dtype=np.float32)  # rows x features, one copy
        for j, c in enumerate(names):
            x[:, j] = _plain(part.column(c))
        y = _labels(part.column(internal[label_idx])) if label_idx is not None else None
        return x, y

    def batches(block_rows: int):
        rows = 0
        try:
            for x, y in _parallel_chunks(fs, inner, where, start, parse):
                rows += len(x)
                for lo in range(0, len(x), block_rows):
                    yield x[lo:lo + block_rows], (None if y is None else y[lo:lo + block_rows])
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            # pyarrow names neither the line nor the column's header: find the first bad
            # row again with the exact reader, and report it the one way every reader does.
            _diagnose_csv(fs, inner, where, header, width, feat_idx, columns)
            raise DataError(f"{where}: malformed CSV ({_first_line(e)})") from None
        if not rows:
            raise DataError(f"{where}: no data rows after the header; the dataset is empty")

    count = None
    if isinstance(fs, pfs.LocalFileSystem) and not _compressed(inner):
        count = lambda: _count_csv_rows(inner, start)  # noqa: E731
    return Table(where, columns, None, batches, has_labels=label_idx is not None, _count=count)


def _compressed(inner: str) -> bool:
    """Whether ``_open_stream`` decompresses the file (its name ends .gz, .bz2, .zst, ...)."""
    import pyarrow as pa

    try:
        return pa.Codec.detect(inner) is not None
    except (TypeError, ValueError):  # pyarrow 17: a TypeError for a name of no codec
        return False


_COUNT_BYTES = 4 << 20  # the row count reads a local CSV in pieces of this many bytes


def _count_csv_rows(path: str, start: int) -> int | None:
    """The rows that the parse of a local CSV from byte ``start`` yields (``start`` just
    after a line end or at the file's start), found without parsing: the non-empty lines
    (pyarrow skips empty ones; a line ends at \\n, \\r or \\r\\n, so the \\n of \\r\\n ends an
    empty line), the last one, without a line end, only when it holds more than
    whitespace (as :func:`_parallel_chunks` reads it). ``None`` when the file holds a
    quote, since a quoted value may hold a line end, or cannot be read: the caller then
    counts the rows as it reads them."""
    prev_end, tail_text, rows = True, False, 0
    buf = bytearray(_COUNT_BYTES)  # one buffer, read into again and again
    try:
        with open(path, "rb") as f:
            f.seek(start)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                if buf.find(b'"', 0, n) >= 0:
                    return None
                raw = np.frombuffer(buf, dtype=np.uint8, count=n)
                ends = raw == 10
                if buf.find(b"\r", 0, n) >= 0:
                    ends |= raw == 13
                # a line end right after another (or after the line end before `start`)
                # ends an empty line
                empty = np.count_nonzero(ends[1:] & ends[:-1]) + (prev_end and ends[0])
                rows += int(np.count_nonzero(ends)) - int(empty)
                last = max(buf.rfind(b"\n", 0, n), buf.rfind(b"\r", 0, n))
                tail_text = bool(buf[last + 1:n].strip()) or (tail_text and last < 0)
                prev_end = bool(ends[-1])
    except OSError:
        return None
    return rows + tail_text


# the line ends csv.reader counts in _csv_head's head (io.StringIO splits at \n only; a \r outside
# quotes there is malformed CSV, so a \r not followed by \n is inside a quoted value)
_LINE_END = re.compile(rb"\n")
# a CSV's header (or first row) is at most _HEAD_BYTES long without its line end (docs/design.md#data)
_HEAD_BYTES = 1 << 20
# numpy's dtype of each fixed-width Arrow number type that _plain reads from its buffer
_PLAIN = {"int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8", "uint8": "u1", "uint16": "u2",
          "uint32": "u4", "uint64": "u8", "float": "f4", "double": "f8"}


def _plain(col) -> np.ndarray:
    """An Arrow column (``Array`` or ``ChunkedArray``) as a NumPy array. Numbers without
    nulls are read from their Arrow buffers (zero-copy for one chunk): pyarrow 17's own
    ``to_numpy`` imports pandas on its first call, 0.3 s and about 40 MB that a reader never
    needs. Anything else (bool, nulls, text) takes ``to_numpy``."""
    import pyarrow as pa

    code = _PLAIN.get(str(col.type))
    if code is None or col.null_count:
        return col.to_numpy(zero_copy_only=False)
    dtype = np.dtype(code)
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = [np.frombuffer(c.buffers()[1], dtype=dtype, count=len(c), offset=c.offset * dtype.itemsize)
             for c in chunks if len(c)]
    if not parts:
        return np.zeros(0, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _refuse_wide_lines(chunk, width: int) -> None:
    """Raise ``pyarrow.ArrowInvalid`` (so the caller's exact reader names the line) when a
    line of ``chunk`` has more than ``width`` cells: pyarrow 17's CSV parser overflows its
    heap on such a row (apache/arrow#45497) instead of refusing it (docs/design.md#data).

    A chunk with at most ``width - 1`` commas in all has no such line. Otherwise every
    line's commas are counted at once (numpy, no Python loop per line); a total against
    ``lines x (width - 1)`` would not do, since empty and short lines leave room for one
    long line, and pyarrow overflows on that line before it reaches the short ones. A
    quoted comma makes a count an upper bound, so a line whose count exceeds the width
    and that holds a quote is parsed exactly."""
    budget = width - 1
    raw = np.frombuffer(chunk, dtype=np.uint8)
    commas = raw == ord(",")
    if np.count_nonzero(commas) <= budget:
        return
    ends = raw == ord("\n")
    if _holds_cr(chunk, raw):
        ends |= raw == ord("\r")
    starts = np.flatnonzero(ends)
    starts += 1
    starts = np.concatenate([[0], starts[starts < len(raw)]])
    bounds = np.append(starts, len(raw))
    # commas from each start to the next, added as uint8: into uint8 when no line is longer
    # than 255 bytes (so none holds more commas than uint8 counts), else into uint32 (from
    # bool into int64 the same sum took six times as long as into uint8)
    short = int(np.diff(bounds).max()) <= 255
    per_line = np.add.reduceat(commas.view(np.uint8), starts, dtype=np.uint8 if short else np.uint32)
    wide = np.flatnonzero(per_line > budget)
    if not len(wide):
        return
    import pyarrow as pa

    for k in wide:
        line = bytes(chunk[bounds[k]:bounds[k + 1]]).rstrip(b"\r\n")
        if b'"' not in line or len(next(csv.reader([line.decode("utf-8", "replace")]), [])) > width:
            raise pa.ArrowInvalid("a line has more columns than the first")


def _holds_cr(chunk, raw: np.ndarray) -> bool:
    """Whether ``chunk`` (``raw`` its bytes as uint8) may hold a ``\\r``. A memoryview's
    whole bytes object (the chunk and the start of the next line, as _parallel_chunks cuts
    it) is searched with one ``memchr`` when it is at most twice the chunk, which can only
    say yes more often; else NumPy looks at every byte."""
    obj = chunk.obj if isinstance(chunk, memoryview) else chunk
    if isinstance(obj, (bytes, bytearray)) and len(obj) <= 2 * len(raw):
        return b"\r" in obj
    return bool((raw == ord("\r")).any())


def _line_offset(fs, inner: str, where: str, lines: int) -> int:
    """The byte offset just past the first ``lines`` physical lines of the file."""
    if lines <= 0:
        return 0
    with _open_stream(fs, inner, where) as f:
        head = f.read(_HEAD_BYTES + 2)  # _csv_head found the header's line end inside this window
    for k, m in enumerate(_LINE_END.finditer(head), 1):
        if k == lines:
            return m.end()
    return len(head)


def _cores() -> int:
    """The cores this process may run on. Not ``pyarrow.cpu_count()``: Arrow sizes it from
    ``OMP_NUM_THREADS``, which lrjob sets to 1 for MXNet, and the CSV chunks would then
    parse one at a time (measured: 0.82 s instead of 0.61 s to prepare a 1M x 20 CSV)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def _parallel_chunks(fs, inner: str, where: str, start: int, parse: Callable[[bytes], tuple]):
    """``parse`` of each whole-line chunk of about ``_CSV_CHUNK_BYTES`` from byte ``start``,
    in file order, with up to one chunk per core being parsed while the next is read.

    pyarrow's own streaming reader parses one block at a time and reads several blocks
    ahead (about 200 MB at 8 MB blocks); this keeps ``threads + 1`` small chunks in memory
    and uses every core. A record is never split: a chunk ends at a line end, as pyarrow
    itself assumes (no line breaks inside quoted values)."""
    import pyarrow as pa
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, min(_CSV_THREADS, _cores()))
    with _open_stream(fs, inner, where) as f, ThreadPoolExecutor(threads) as pool:
        pending: list = []
        f.read(start)  # the header lines
        rest = b""
        try:
            while True:
                # the cut-off end of the last chunk, then the next bytes read straight after it
                # (one copy of them, not a read and then a concatenation)
                data = bytearray(len(rest) + _CSV_CHUNK_BYTES)
                data[:len(rest)] = rest
                got = f.readinto(memoryview(data)[len(rest):])
                end = len(rest) + got
                if not got:
                    if rest.strip():
                        pending.append(pool.submit(parse, memoryview(rest)))
                    break
                nl = data.rfind(b"\n", 0, end)
                cut = max(nl, data.rfind(b"\r", nl + 1, end)) + 1  # a \r after the last \n (not all 2 MB again)
                if not cut:  # one line longer than a chunk: read on
                    rest = bytes(data[:end])
                    continue
                rest = bytes(data[cut:end])
                pending.append(pool.submit(parse, memoryview(data)[:cut]))  # a view: no copy
                while len(pending) > threads:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for p in pending:
                p.cancel()


def _not_the_label(features: list[str], label_column: str | None, where: str) -> None:
    if label_column is not None and label_column in features:
        raise DataError(f"{where}: data.features names the label column {label_column!r}; a model must not "
                        f"see its own label: remove it from data.features")


def _labels(col) -> np.ndarray:
    """A label column as float64 when every value is a number, else an object array."""
    import pyarrow as pa

    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
        return _plain(col).astype(np.float64)
    if (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and not col.null_count:
        import pyarrow.compute as pc

        try:  # numbers written as text (a CSV's labels): converted in C, not value by value
            return _plain(pc.cast(pc.utf8_trim_whitespace(col), pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # some label is not a number: the exact path below keeps it as text
    raw = [("" if v is None else str(v)).strip() for v in col.to_pylist()]
    out = np.array([float(v) if _is_number(v) else v for v in raw], dtype=object)
    if all(isinstance(v, float) for v in out):
        out = out.astype(np.float64)
    return out


def _diagnose_csv(fs, inner: str, where: str, header, width: int, feat_idx: list[int], columns: list[str]) -> None:
    """Raise the precise error for the first bad line of a CSV that pyarrow refused."""
    try:
        with _open_stream(fs, inner, where) as f:
            text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
            rows = _records(text)
            if header is not None:
                next(rows, None)
            for line, r in rows:
                if len(r) != width:
                    raise DataError(f"{where}: line {line} has {len(r)} columns, expected {width}; fix the row")
                for k, j in enumerate(feat_idx):
                    cell = r[j].strip()
                    if not _is_number(cell):
                        raise DataError(f"{where}: line {line}, column {shown(columns[k])}: {shown(cell)} is not a "
                                        f"number; features must be numeric")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not a text CSV file ({e.reason}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"{where}: malformed CSV ({e})") from None


# --------------------------------------------------------------------------- Parquet
def _parquet_table(fs, files: list[str], where: str, label_column: str | None, require_labels: bool,
                   features: list[str] | str | None) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(files[0], filesystem=fs)
    except Exception as e:  # noqa: BLE001 - ArrowInvalid for a file that is not Parquet
        raise DataError(f"{where}: not a readable Parquet file ({_first_line(e)}); write it with "
                        f"pyarrow.parquet.write_table or pandas.DataFrame.to_parquet") from None
    names = list(schema.names)
    has_label = label_column is not None and label_column in names
    if require_labels and not has_label:
        raise DataError(f"{where}: no column {label_column!r} (columns: {', '.join(clip(n, 40) for n in names[:8])}"
                        f"{', ...' if len(names) > 8 else ''}); set data.label_column")
    if features is None:
        feats = [n for n in names if n != label_column]
    else:
        feats = [features] if isinstance(features, str) else list(features)
        _not_the_label(feats, label_column if has_label else None, where)
        for c in feats:
            if c not in names:
                raise DataError(f"{where}: no column {shown(c)} for data.features (columns: "
                                f"{', '.join(clip(n, 40) for n in names[:8])}"
                                f"{', ...' if len(names) > 8 else ''}); fix data.features")
    list_col = None
    if len(feats) == 1 and _is_list(schema.field(feats[0]).type):
        list_col = feats[0]
    for c in feats:
        t = schema.field(c).type
        if c != list_col and not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise DataError(f"{where}: column {c!r} has type {t}, features must be numeric; convert it, or "
                            f"leave it out with data.features")
    columns = feats if list_col is None else []
    read_cols = feats + ([label_column] if has_label else [])
    rows = 0
    for f in files:
        try:
            rows += pq.ParquetFile(f, filesystem=fs).metadata.num_rows
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{where}: {f}: not a readable Parquet file ({_first_line(e)})") from None

    scheme = where.split("://", 1)[0] + "://" if is_uri(where) else ""

    def batches(block_rows: int):
        width = None  # a list column's length in the first row: every block must keep it
        for f in files:
            name = where if len(files) == 1 else scheme + f  # errors name the part file
            done = 0
            try:
                pf = pq.ParquetFile(f, filesystem=fs)
                for batch in pf.iter_batches(batch_size=block_rows, columns=read_cols):
                    if list_col is not None:
                        x = _list_block(batch.column(list_col), name, list_col, done)
                        width = x.shape[1] if width is None else width
                        if x.shape[1] != width:
                            raise DataError(f"{name}: row {done + 1}, column {list_col!r}: {x.shape[1]} values, "
                                            f"the first row has {width}; every row needs the same number of "
                                            f"features")
                    else:
                        x = np.column_stack([_numeric(batch.column(c), name, c, done) for c in feats])
                    y = _labels(batch.column(label_column)) if has_label else None
                    yield x, y, name, done
                    done += batch.num_rows
            except DataError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged file, a schema that differs
                raise DataError(f"{name}: cannot read ({_first_line(e)}); every file needs the same "
                                f"columns") from None

    if list_col is not None:
        first = next(batches(1), (np.zeros((0, 0)), None))[0]
        columns = [f"{list_col}[{i}]" for i in range(first.shape[1])]
    return Table(where, columns, rows, batches, has_labels=has_label)


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _numeric(col, where: str, name: str, offset: int) -> np.ndarray:
    if col.null_count:
        r = int(np.flatnonzero(~np.asarray(col.is_valid()))[0])
        raise DataError(f"{where}: row {offset + r + 1}, column {name!r}: missing value; fill or drop it first")
    return _feature_dtype(_plain(col))


def _list_block(col, where: str, name: str, offset: int) -> np.ndarray:
    import pyarrow as pa

    n = len(col)
    if col.null_count:
        r = int(np.flatnonzero(~np.asarray(col.is_valid()))[0])
        raise DataError(f"{where}: row {offset + r + 1}, column {name!r}: missing value; fill or drop it first")
    if pa.types.is_fixed_size_list(col.type):
        d = col.type.list_size
    else:
        lengths = np.diff(_plain(col.offsets))
        if n and (lengths != lengths[0]).any():
            r = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(f"{where}: row {offset + r + 1}, column {name!r}: {lengths[r]} values, the first row "
                            f"has {lengths[0]}; every row needs the same number of features")
        d = int(lengths[0]) if n else 0
    values = _plain(col.flatten())
    if values.dtype.kind not in "uif":
        raise DataError(f"{where}: column {name!r} holds {values.dtype} values; features must be numeric")
    return _feature_dtype(values.reshape(n, d))


# --------------------------------------------------------------------------- NumPy files
def _rows_per_block(block_rows: int, row_bytes: int) -> int:
    """``block_rows``, fewer when rows are wide: a block holds at most ``_BLOCK_BYTES``."""
    return max(1, min(block_rows, _BLOCK_BYTES // max(row_bytes, 1)))


def _npy_reader(fs, inner: str, where: str, ndim: int):
    """``(shape, row bytes, blocks(block_rows))`` of a .npy file, read block by block (never
    whole), ``block_rows`` rows a block: the caller caps it (:func:`_rows_per_block`), once
    for x.npy and y.npy together, so their blocks stay paired."""
    def header(f):
        try:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format._read_array_header(f, version)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{where}: not a readable .npy array ({_first_line(e)})") from None
        if dtype.hasobject:
            raise DataError(f"{where}: not a readable .npy array (it holds Python objects); save numbers with np.save")
        if len(shape) != ndim or (fortran and ndim > 1):
            what = "features must be a 2-D C-order array (rows x features)" if ndim == 2 else \
                "labels must be a 1-D array, one per row"
            raise DataError(f"{where}: {what}, got shape {shape}")
        return shape, dtype

    try:
        with fs.open_input_file(inner) as f:
            shape, dtype = header(f)
            data_start, size = f.tell(), f.size()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{where}: cannot read ({_first_line(e)}); check the path and its permissions") from None
    _check_shape(where, shape, dtype, size - data_start)

    row_bytes = dtype.itemsize * (shape[1] if ndim == 2 else 1)

    def blocks(block_rows: int):
        with fs.open_input_file(inner) as f:
            header(f)
            for lo in range(0, shape[0], block_rows):
                n = min(block_rows, shape[0] - lo)
                buf = f.read(n * row_bytes)
                if len(buf) != n * row_bytes:
                    raise DataError(f"{where}: truncated .npy file: {shape[0]} rows declared, the data ends "
                                    f"in row {lo + len(buf) // max(row_bytes, 1) + 1}; write it again")
                yield np.frombuffer(buf, dtype=dtype).reshape((n,) + tuple(shape[1:]))

    return shape, row_bytes, blocks


def _npy_table(fs, inner: str, where: str) -> Table:
    shape, row_bytes, blocks = _npy_reader(fs, inner, where, 2)

    def batches(block_rows: int):
        for x in blocks(_rows_per_block(block_rows, row_bytes)):
            yield _feature_dtype(x), None

    return Table(where, [f"column {j + 1}" for j in range(shape[1])], shape[0], batches, has_labels=False)


def _npy_pair_table(fs, inner: str, where: str) -> Table:
    """A directory with ``x.npy`` (features) and ``y.npy`` (labels)."""
    xshape, xrow_bytes, xblocks = _npy_reader(fs, inner + "/x.npy", where + "/x.npy", 2)
    yshape, _, yblocks = _npy_reader(fs, inner + "/y.npy", where + "/y.npy", 1)
    if yshape[0] != xshape[0]:
        raise DataError(f"{where}: x.npy has {xshape[0]} rows, y.npy {yshape[0]} labels; they must match")

    def batches(block_rows: int):
        rows = _rows_per_block(block_rows, xrow_bytes)  # x's rows are the wide ones: one cap for both
        for x, y in zip(xblocks(rows), yblocks(rows)):
            yield _feature_dtype(x), y

    return Table(where, [f"column {j + 1}" for j in range(xshape[1])], xshape[0], batches)


def _feature_dtype(x: np.ndarray) -> np.ndarray:
    """uint8 stays uint8 (images: a quarter of the bytes); other numbers become float32."""
    if x.dtype == np.uint8 or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        return x
    return x.astype(np.float32)


def _check_shape(where: str, shape: tuple, dtype: np.dtype, data_bytes: int | None) -> None:
    """An array header's ``shape`` and ``dtype`` against the bytes behind it (``data_bytes``),
    before anything is allocated: a header that declares more (or less) than the file holds
    is damaged or hostile; a table wider than ``MAX_FEATURES`` columns is refused; so are
    negative dimensions and dtypes that are not one plain number or text per cell (item
    size 0, structured, sub-array), which pass a size check and fail later."""
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: the header declares shape {shape}, with a negative dimension; the file is "
                        f"damaged: write it again with np.save")
    if dtype.names is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        what = ("a structured dtype" if dtype.names is not None else
                "a sub-array dtype" if dtype.subdtype is not None else "an item size of 0")
        raise DataError(f"{where}: dtype {clip(str(dtype), 60)} is {what}; save a plain array of numbers "
                        f"(one per cell) with np.save")
    if len(shape) == 2 and shape[1] > MAX_FEATURES:
        raise DataError(f"{where}: {shape[1]:,} feature columns (shape {shape}), more than the {MAX_FEATURES:,} "
                        f"a table may have; check the array's orientation (rows x features)")
    declared = math.prod(shape) * dtype.itemsize
    if data_bytes is not None and declared > data_bytes and len(shape) in (1, 2) and shape[0]:
        row_bytes = declared // shape[0]
        raise DataError(f"{where}: truncated .npy file: {shape[0]} rows declared, the data ends in row "
                        f"{data_bytes // max(row_bytes, 1) + 1}; write it again")
    if data_bytes is not None and declared != data_bytes:
        raise DataError(f"{where}: the header declares shape {shape} of {dtype} ({declared:,} bytes) but the file "
                        f"holds {data_bytes:,} bytes of data; the file is damaged or truncated: write it again "
                        f"with np.save")


def _npz_member(z: zipfile.ZipFile, name: str, where: str, budget: int | None = None,
                rows: int | None = None) -> np.ndarray:
    """Array ``name`` of an open .npz, its sizes checked before it is decompressed: the zip
    header's size against ``MAX_NPZ_BYTES``, the array header's shape against that size,
    its values as float32 (what they become: 4 bytes each, whatever the stored dtype)
    against ``budget`` and, for labels, its rows against ``rows`` (the features')."""
    info = z.getinfo(name + ".npy")
    if info.flag_bits & 0x1:  # zipfile would ask for a password (a RuntimeError)
        raise DataError(f"{where}: array {name!r} is encrypted; save it again with np.savez(path, x=..., y=...)")
    if info.file_size > MAX_NPZ_BYTES:
        raise DataError(f"{where}: array {name!r} takes {info.file_size:,} bytes decompressed, more than the "
                        f"{MAX_NPZ_BYTES:,} an .npz may hold (it is read whole); save large data as x.npy "
                        f"and y.npy in a folder, read in blocks")
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format._read_array_header(f, version)
        if dtype.hasobject:
            raise ValueError("it holds Python objects")
        nbytes = info.file_size - f.tell()
        _check_shape(f"{where}: array {name!r}", shape, dtype, nbytes)
        if rows is not None and (len(shape) != 1 or shape[0] != rows):
            raise DataError(f"{where}: array {name!r} must hold one label per row of x ({rows}), got shape {shape}")
        as_float32 = math.prod(shape) * 4
        budget = MAX_NPZ_BYTES if budget is None else budget
        if as_float32 > budget:
            raise DataError(f"{where}: array {name!r} holds {math.prod(shape):,} values, {as_float32:,} bytes as "
                            f"float32, more than the {budget:,} left of the {MAX_NPZ_BYTES:,} an .npz may take "
                            f"(it is read whole); save large data as x.npy and y.npy in a folder, read in blocks")
        out = np.empty(math.prod(shape), dtype=dtype)  # its size is now known to be the member's
        raw = out.view(np.uint8)
        for lo in range(0, nbytes, 16 << 20):
            chunk = f.read(min(16 << 20, nbytes - lo))
            if len(chunk) != min(16 << 20, nbytes - lo):
                raise EOFError(f"array {name!r} ends early")
            raw[lo:lo + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
    return out.reshape(shape, order="F" if fortran else "C")


def _zip(f) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(f)
    except Exception:  # noqa: BLE001 - BadZipFile, or pyarrow's ArrowInvalid seeking before the start
        raise ValueError("not a zip archive") from None


def _npz_table(fs, inner: str, where: str, require_labels: bool) -> Table:
    try:
        with fs.open_input_file(inner) as f, _zip(f) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            if "x" not in names:
                raise DataError(f"{where}: no array 'x' (found {names[:8]}); save with np.savez(path, x=..., y=...)")
            x = _npz_member(z, "x", where)
            # x and y together, as float32, within MAX_NPZ_BYTES; y's rows checked before it is read.
            y = (_npz_member(z, "y", where, MAX_NPZ_BYTES - x.size * 4, rows=len(x) if x.ndim == 2 else None)
                 if "y" in names else None)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{where}: not enough memory to read this .npz (it is read whole); save large data "
                        f"as x.npy and y.npy in a folder, read in blocks") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as e:
        raise DataError(f"{where}: not a readable .npz file ({_first_line(e)}); "
                        f"save with np.savez(path, x=..., y=...)") from None
    if require_labels and y is None:
        raise DataError(f"{where}: no array 'y' (found {names[:8]}); save with np.savez(path, x=..., y=...)")
    if x.ndim != 2:
        raise DataError(f"{where}: array 'x' must be 2-D (rows x features), got shape {x.shape}")
    # y is 1-D with len(x) labels here: _npz_member refused any other shape before reading it

    def batches(block_rows: int):
        for lo in range(0, len(x), block_rows):
            yield x[lo:lo + block_rows], (None if y is None else y[lo:lo + block_rows])

    return Table(where, [], len(x), batches, has_labels=y is not None)
