"""``lr_core.prepared``, where `make mutants` found the fast tests silent.

How much memory this process may still fill (it decides whether a prepared set is read
ahead or mapped page by page): MemAvailable, or less under a cgroup v1 or v2 memory limit.
The /proc and /sys files are real files the test writes, read through
``lr_core.prepared``'s own ``open`` pointed at them.

How a table is converted (docs/design.md "Prepared data"): the blocks it is read in, the
scratch file of a CSV whose rows are not counted ahead and the pieces it is split in, the
dtypes and standardization statistics that come out (the in-memory loader's), which files
are synced, and that a refused table leaves no file open."""
import builtins
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lr_core import prepared, tables
from lr_core.data import load_dataset, make_request, write_idx
from lr_core.errors import DataError
from lr_core.prepared import open_prepared, prepare, verify


@pytest.fixture
def files(tmp_path, monkeypatch):
    """``files({"/proc/meminfo": "...", ...})``: those paths read the given text; any other
    /proc or /sys path is missing."""
    def install(contents: dict[str, str]):
        real = {}
        for i, (path, text) in enumerate(contents.items()):
            real[path] = tmp_path / f"f{i}"
            real[path].write_text(text)

        def fake_open(path, *a, **kw):
            p = str(path)
            if p.startswith(("/proc/", "/sys/")):
                if p not in real:
                    raise FileNotFoundError(p)
                return builtins.open(real[p], *a, **kw)
            return builtins.open(path, *a, **kw)
        monkeypatch.setattr(prepared, "open", fake_open, raising=False)
    return install


MEMINFO = "MemTotal:       2000 kB\nMemFree:         100 kB\nMemAvailable:    500 kB\nBuffers: 7 kB\n"


def test_mem_available_in_bytes(files):
    files({"/proc/meminfo": MEMINFO})
    assert prepared._free_memory() == 500 * 1024


def test_nothing_known_is_unlimited(files):
    files({})
    assert prepared._cgroup_memory_files() == []
    assert prepared._free_memory() == 1 << 62


def test_a_meminfo_without_mem_available_leaves_the_cgroup_limit(files):
    files({"/proc/meminfo": "MemTotal: 2000 kB\n", "/proc/self/cgroup": "0::/job\n",
           "/sys/fs/cgroup/job/memory.max": "409600\n", "/sys/fs/cgroup/job/memory.current": "102400\n"})
    assert prepared._free_memory() == 409600 - 102400


def test_cgroup_v2_limit_minus_usage_when_smaller(files):
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": "0::/a/b\n",
           "/sys/fs/cgroup/a/b/memory.max": "300000 \n", "/sys/fs/cgroup/a/b/memory.current": "100000\n"})
    assert prepared._cgroup_memory_files() == [("/sys/fs/cgroup/a/b/memory.max", "/sys/fs/cgroup/a/b/memory.current")]
    assert prepared._free_memory() == 200000
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": "0::/a/b\n",
           "/sys/fs/cgroup/a/b/memory.max": "9000000\n", "/sys/fs/cgroup/a/b/memory.current": "100000\n"})
    assert prepared._free_memory() == 500 * 1024           # MemAvailable is the smaller


def test_cgroup_v1_memory_controller_among_others(files):
    cgroup = "12:cpu,cpuacct:/x\n4:blkio,memory:/grp:1\n3:net_cls:/y\n"   # a ':' inside the path
    base = "/sys/fs/cgroup/memory/grp:1"
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": cgroup,
           f"{base}/memory.limit_in_bytes": "250000\n", f"{base}/memory.usage_in_bytes": "50000\n"})
    assert prepared._cgroup_memory_files() == [(f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes")]
    assert prepared._free_memory() == 200000


def test_an_unlimited_or_unreadable_cgroup_is_skipped_and_the_next_one_read(files):
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": "0::/a\n5:memory:/b\n",
           "/sys/fs/cgroup/a/memory.max": "max\n", "/sys/fs/cgroup/a/memory.current": "100\n",
           "/sys/fs/cgroup/memory/b/memory.limit_in_bytes": "150000\n",
           "/sys/fs/cgroup/memory/b/memory.usage_in_bytes": "50000\n"})
    assert prepared._free_memory() == 100000
    files({"/proc/meminfo": MEMINFO, "/proc/self/cgroup": "0::/a\n"})         # no such files: skipped
    assert prepared._free_memory() == 500 * 1024


def test_the_smallest_of_several_limits(files):
    files({"/proc/self/cgroup": "0::/a\n5:memory:/b\n",
           "/sys/fs/cgroup/a/memory.max": "100000\n", "/sys/fs/cgroup/a/memory.current": "10000\n",
           "/sys/fs/cgroup/memory/b/memory.limit_in_bytes": "300000\n",
           "/sys/fs/cgroup/memory/b/memory.usage_in_bytes": "10000\n"})
    assert prepared._free_memory() == 90000


# --------------------------------------------------------------------------- converting a table
# Small real files through prepare(): the pieces a table is read and split in, the dtypes and
# statistics that come out, what is synced and what stays open.
def _req(source, path, **kw):
    return make_request(source, kind="binary", num_classes=2, seed=7, path=str(path), **kw)


def _x(n, d):
    """Values float32 does not hold exactly (steps of 0.1), of both signs."""
    return (np.arange(n * d).reshape(n, d) * 0.1 - 1.5) * np.array([1.0, -3.0, 7.0][:d])


def _write_csv(path, n=23, d=3, quoted=False):
    """A CSV of ``n`` rows; ``quoted``: the last label in quotes, so its rows cannot be counted
    ahead (a quoted value may hold a line end) and they go through the scratch file."""
    x, y = _x(n, d), np.arange(n) % 2
    rows = [",".join([*(repr(float(v)) for v in r), str(c)]) for r, c in zip(x, y)]
    if quoted:
        rows[-1] = rows[-1].rpartition(",")[0] + f',"{y[-1]}"'
    path.write_text(",".join([*"abc"[:d], "label"]) + "\n" + "\n".join(rows) + "\n")
    return path


def _manifest(home):
    return json.loads((home / "manifest.json").read_text())


def _same_as_memory(ds, mem):
    for name in ("x_train", "y_train", "x_val", "y_val"):
        got, want = getattr(ds, name), getattr(mem, name)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), name


def test_a_table_not_counted_ahead_is_split_from_its_scratch_file_in_pieces(tmp_path, monkeypatch):
    """A CSV with a quote in it is not counted before it is read: its rows go to a scratch file,
    which is split in pieces of SPLIT_BYTES (here one row each) into float32 features and int64
    labels, the hold-out of the in-memory loader. The training rows are summed for the
    statistics while they are split, so train-x.bin is read back once (the second pass); only
    the four arrays, the manifest and the stamp are synced, never the scratch."""
    monkeypatch.setattr(prepared, "SPLIT_BYTES", 12)  # one row of 3 float32
    path = _write_csv(tmp_path / "q.csv", quoted=True)
    real_fsync, real_fromfile = os.fsync, np.fromfile
    synced, reads, seen = [], [], []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(np, "fromfile", lambda f, *a, **k: reads.append(os.path.basename(f.name))
                        or real_fromfile(f, *a, **k))
    home = prepare(_req("csv", path), tmp_path / "cache", progress=lambda *a: seen.append(a))
    monkeypatch.undo()
    assert seen == [(f"reading {path}", 23, None)] + [("splitting", i, 23) for i in range(1, 24)]
    assert reads == ["all-x.bin", "all-y.bin"] * 23 + ["train-x.bin"]
    assert sorted(synced) == [".verified", "manifest.json", "train-x.bin", "train-y.bin", "val-x.bin", "val-y.bin"]
    m = _manifest(home)
    assert {k: (e["dtype"], e["shape"]) for k, e in m["arrays"].items()} == {
        "train-x": ("<f4", [21, 3]), "train-y": ("<i8", [21]), "val-x": ("<f4", [2, 3]), "val-y": ("<i8", [2])}
    ds, mem = open_prepared(home), load_dataset("csv", kind="binary", num_classes=2, seed=7, path=str(path))
    _same_as_memory(ds, mem)
    assert ds.stats == mem.stats and m["stats"] == mem.stats


def test_without_standardize_nothing_is_summed(tmp_path, monkeypatch):
    """data.standardize off: no statistics, and no sums taken while the rows are written (a
    table split as it streams, or from its scratch file)."""
    monkeypatch.setattr(prepared, "BlockSums", lambda *a: pytest.fail("rows summed without data.standardize"))
    for quoted in (False, True):
        path = _write_csv(tmp_path / f"{quoted}.csv", quoted=quoted)
        home = prepare(_req("csv", path, standardize=False), tmp_path / "cache")
        assert "stats" not in _manifest(home) and open_prepared(home).stats is None
        _same_as_memory(open_prepared(home), load_dataset("csv", kind="binary", num_classes=2, seed=7,
                                                          path=str(path), standardize=False))


def test_a_standardized_image_set_takes_its_statistics_of_the_scaled_pixels(tmp_path):
    """MNIST is stored as uint8 with the scale 1/255; its statistics are those of the scaled
    pixels, the in-memory loader's numbers (no sums are taken while a built-in source is written)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 6)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 2, 3)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    kw = dict(kind="softmax", num_classes=10, seed=3, path=str(tmp_path), standardize=True)
    ds = open_prepared(prepare(make_request("mnist", **kw), tmp_path / "cache"))
    mem = load_dataset("mnist", **kw)
    assert ds.x_train.dtype == np.uint8 and ds.stats == mem.stats
    assert 0 < max(mem.stats["mean"]) < 1  # of the scaled pixels


def test_the_statistics_of_float64_features_are_those_of_their_float32_values(tmp_path):
    """An .npz holds float64 features: they are stored as float32, and the sums taken while
    they are written are of those float32 values (as in memory), not of the float64 ones."""
    np.savez(tmp_path / "d.npz", x=_x(30, 3), y=np.arange(30) % 2)
    for kw in ({}, {"val_fraction": 0.0}):
        ds = open_prepared(prepare(_req("npz", tmp_path / "d.npz", **kw), tmp_path / "cache"))
        mem = load_dataset("npz", kind="binary", num_classes=2, seed=7, path=str(tmp_path / "d.npz"), **kw)
        _same_as_memory(ds, mem)
        assert ds.stats == mem.stats


def test_a_training_file_with_a_validation_file_is_not_counted_first(tmp_path, monkeypatch):
    """With data.val_path nothing is held out, so neither file is counted before it is read
    (the progress has no total), and both are hashed shard by shard (a damaged byte is found)."""
    monkeypatch.setattr(tables, "_count_csv_rows", lambda *a: pytest.fail("counted ahead"))
    train, val = _write_csv(tmp_path / "t.csv"), _write_csv(tmp_path / "v.csv", n=5)
    seen = []
    home = prepare(_req("csv", train, val_path=str(val)), tmp_path / "cache", progress=lambda *a: seen.append(a))
    assert seen == [(f"reading {train}", 23, None), (f"reading {val}", 5, None)]
    m = _manifest(home)
    assert [s["rows"] for name in prepared.ARRAYS for s in m["arrays"][name]["shards"]] == [[0, 23], [0, 23],
                                                                                            [0, 5], [0, 5]]
    with open(home / "val-x.bin", "r+b") as f:
        f.seek(7)
        b = f.read(1)
        f.seek(7)
        f.write(bytes([b[0] ^ 1]))
    assert verify(home) == ["val-x.bin: rows 0..4 fail their checksum (damaged)"]


@pytest.mark.parametrize("d,block_bytes,block_rows,ends", [
    (1, 20, 1000, [5, 10, 12]),    # 5 rows of one 4-byte feature
    (3, 60, 1000, [5, 10, 12]),    # 5 rows of three
    (1, 16 << 20, 1, list(range(1, 13))),   # BLOCK_ROWS bounds it
])
def test_a_table_is_converted_in_blocks_of_about_block_bytes(tmp_path, monkeypatch, d, block_bytes, block_rows, ends):
    """A table is read in blocks of about BLOCK_BYTES of float32 features whatever its width,
    at most BLOCK_ROWS rows (the progress reports every block)."""
    monkeypatch.setattr(prepared, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(prepared, "BLOCK_ROWS", block_rows)
    x = _x(12, d)
    pq.write_table(pa.table({**{f"f{j}": x[:, j] for j in range(d)}, "label": np.arange(12) % 2}),
                   tmp_path / "t.parquet")
    seen = []
    home = prepare(_req("parquet", tmp_path / "t.parquet", val_fraction=0.0), tmp_path / "cache",
                   progress=lambda *a: seen.append(a))
    assert seen == [(f"reading {tmp_path / 't.parquet'}", e, 12) for e in ends]
    assert np.array_equal(open_prepared(home).x_train, x.astype(np.float32))


def _open_files_under(root):
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            out.append(target)
    return out


@pytest.mark.parametrize("quoted", [False, True])
def test_a_refused_table_leaves_no_file_open(tmp_path, monkeypatch, quoted):
    """A bad value in a later block: one line naming the row, nothing left in the cache, and
    no array file held open (while the error, and with it the reader's frame, is still held)."""
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 5)
    path = _write_csv(tmp_path / "d.csv", quoted=quoted)
    path.write_text(path.read_text().replace(repr(float(_x(23, 3)[12, 1])), "inf", 1))  # row 13, column b
    with pytest.raises(DataError) as e:
        prepare(_req("csv", path), tmp_path / "cache")
    assert str(e.value) == (f"{path}: row 13, b: value inf is not finite (NaN or inf); clean or impute it first "
                            f"(1 such values)")
    assert not (tmp_path / "cache").exists()  # the folder the failed preparation made is removed
    assert _open_files_under(tmp_path / "cache") == []


def test_sums_of_no_rows_are_none():
    """_Sums.result() before any row: None (the statistics then read the file)."""
    assert prepared._Sums().result() is None
    s = prepared._Sums()
    s.add(np.array([[1.0, 2.0], [3.0, 5.0]], np.float32))
    n, total = s.result()
    assert n == 2 and total.tolist() == [4.0, 7.0]


@pytest.mark.parametrize("quoted", [False, True])
def test_a_table_of_labels_only_is_refused_in_one_line(tmp_path, quoted):
    """A CSV with the label column alone (nothing to fit; its prepared feature files would be
    empty, which no map can hold): the same one-line error prepared and in memory."""
    path = tmp_path / "labels.csv"
    path.write_text("label\n" + "0\n1\n" * 5 + ('"1"\n' if quoted else ""))
    want = f"{path}: no feature columns; give at least one column besides the label"
    with pytest.raises(DataError) as e:
        prepare(_req("csv", path), tmp_path / "cache")
    assert str(e.value) == want and not (tmp_path / "cache").exists()
    with pytest.raises(DataError) as e:
        load_dataset("csv", kind="binary", num_classes=2, seed=7, path=str(path))
    assert str(e.value) == want


# --------------------------------------------------------------------------- reading a prepared set
def test_a_set_is_read_whole_only_below_a_quarter_of_the_free_memory(monkeypatch):
    """A quarter of the free memory, in whole bytes: 2,880 bytes of features are read ahead
    with 4 * 2,880 + 4 bytes free, not with 4 * 2,880 + 1 (a quarter of which is 2,880.25)."""
    x = np.zeros((180, 4), np.float32)
    for free, whole in ((4 * 2880 + 4, True), (4 * 2880 + 3, False), (4 * 2880 + 1, False), (4 * 2880, False)):
        monkeypatch.setattr(prepared, "_free_memory", lambda: free)
        assert prepared._reads_whole(x) is whole, free


class _MapWithoutMadvise(np.ndarray):
    """An array whose map has no madvise (mmap on a system without madvise(2), e.g. Windows)."""


def test_advice_is_given_to_maps_only(monkeypatch):
    """_advise of an array that maps no file (a plain array, as open_prepared makes of a split
    of no rows), or whose map cannot take advice, does nothing and raises nothing."""
    assert prepared._advise(np.zeros((0, 4), np.float32)) is None
    assert prepared._advise(np.ones((3, 4), np.float32)) is None
    x = np.ones((3, 4), np.float32).view(_MapWithoutMadvise)
    x._mmap = object()
    monkeypatch.setattr(prepared, "_free_memory", lambda: 0)
    assert prepared._advise(x) is None
    pages = prepared.MappedPages(x)
    pages.read(10 ** 6)
    assert not pages.active and pages.releases == 0


def test_read_rows_takes_any_sequence_of_row_numbers(tmp_path):
    """Rows as a list (also an empty one, which NumPy would make float64) or as int32: the
    same rows, from a plain array and from a map."""
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    x.tofile(tmp_path / "x.bin")
    m = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=(10, 4))
    for a in (x, m):
        for rows in ([], [7, 0, 7], np.array([9, 2], np.int32)):
            got = prepared.read_rows(a, rows)
            assert got.shape == (len(rows), 4) and got.dtype == np.float32 and not isinstance(got, np.memmap)
            assert np.array_equal(got, x[np.asarray(rows, dtype=np.int64)])


def _sparse_map(path, rows, width):
    """A read-only float32 map of ``rows`` x ``width`` zeros in a sparse file (no disk used)."""
    with open(path, "wb") as f:
        f.truncate(rows * width * 4)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(rows, width))


def test_mapped_pages_release_after_budget_rows_and_count_releases(tmp_path, monkeypatch):
    """A row counts as a 2 MiB folio (or its own bytes and a page, when wider); after
    budget_rows rows the pages are released and the count starts again."""
    import mmap

    monkeypatch.setattr(prepared, "_free_memory", lambda: 0)  # nothing is read whole
    monkeypatch.setattr(prepared, "RESIDENT_BYTES", 6 << 20)
    pages = prepared.MappedPages(_sparse_map(tmp_path / "x.bin", 10, 1024))
    assert pages.active and pages.budget_rows == 3 and pages.releases == 0
    for rows, releases in ((1, 0), (1, 0), (1, 1), (2, 1), (1, 2), (5, 3), (2, 3)):
        pages.read(rows)
        assert pages.releases == releases, (rows, releases)
    pages.release()
    assert pages.releases == 4
    wide = 3 << 20  # bytes of a row wider than a folio
    monkeypatch.setattr(prepared, "RESIDENT_BYTES", 6 * (wide + mmap.PAGESIZE) - 1)
    assert prepared.MappedPages(_sparse_map(tmp_path / "w.bin", 3, wide // 4)).budget_rows == 5
    monkeypatch.setattr(prepared, "RESIDENT_BYTES", 1 << 20)  # less than a folio: a row at least
    assert prepared.MappedPages(_sparse_map(tmp_path / "y.bin", 3, 4)).budget_rows == 1


def test_mapped_pages_leave_alone_what_is_read_whole_or_not_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "_free_memory", lambda: 0)
    x = _sparse_map(tmp_path / "x.bin", 10, 1024)
    for inactive in (np.ones((10, 1024), np.float32), x[:0].copy(), np.zeros((0, 1024), np.float32),
                     np.array(1.0, np.float32)):  # a 0-d array: a row is its item
        pages = prepared.MappedPages(inactive)
        pages.read(1000)
        pages.release()
        assert not pages.active and pages.releases == 0
        assert pages.budget_rows == prepared.RESIDENT_BYTES // (2 << 20)
    monkeypatch.setattr(prepared, "_free_memory", lambda: 1 << 40)  # read whole: its pages stay
    pages = prepared.MappedPages(x)
    pages.read(1000)
    assert not pages.active and pages.releases == 0


@pytest.mark.parametrize("error", [OSError, ValueError])
def test_pages_that_cannot_be_released_are_kept(tmp_path, monkeypatch, error):
    """madvise refused (an old kernel, a closed map): the pages stay mapped, as before the
    budget, and no release is counted or tried again."""
    monkeypatch.setattr(prepared, "_free_memory", lambda: 0)
    monkeypatch.setattr(prepared, "RESIDENT_BYTES", 4 << 20)
    pages = prepared.MappedPages(_sparse_map(tmp_path / "x.bin", 10, 1024))
    tried = []

    class Refusing:
        def madvise(self, flag):
            tried.append(flag)
            raise error("no")

    pages._m = Refusing()
    pages.read(2)
    assert tried and not pages.active and pages.releases == 0
    pages.read(2)
    pages.release()
    assert len(tried) == 1 and pages.releases == 0


def _resident_bytes_of(path) -> int | None:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps); None when it
    maps no part of it (so ``== 0`` cannot pass on a path smaps shows otherwise)."""
    total, inside, found = 0, False, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = line.rstrip().endswith(" " + os.path.realpath(path))
                found |= inside
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total if found else None


def test_read_rows_of_a_slice_of_a_map_are_the_slices_rows(tmp_path):
    """NumPy keeps the map's offset on a slice of it: read from the file at that offset, its
    row 0 would be the map's."""
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    x.tofile(tmp_path / "x.bin")
    m = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=(10, 4))
    assert m[3:].offset == m.offset == 0
    assert np.array_equal(prepared.read_rows(m[3:], [4, 0, 5]), x[[7, 3, 8]])
    assert np.array_equal(prepared.read_rows(m[3:5], [1]), x[[4]])


def test_read_rows_of_views_labels_and_offsets(tmp_path):
    """Whatever the map: a column view (not C-contiguous), a map of a file opened by
    descriptor (no file name), a map of 1-D labels (read without mapping a page), a map after
    a header (``offset``), and an array that only carries a ``filename`` (indexed, not read
    from that file)."""
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    x.tofile(tmp_path / "x.bin")
    m = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=(10, 4))
    rows = [4, 0, 5]
    assert np.array_equal(prepared.read_rows(m[:, ::2], rows), x[:, ::2][rows])
    with open(os.open(tmp_path / "x.bin", os.O_RDONLY), "rb") as f:  # f.name is the descriptor
        by_fd = np.memmap(f, dtype=np.float32, mode="r", shape=(10, 4))
        assert by_fd.filename is None and np.array_equal(prepared.read_rows(by_fd, rows), x[rows])
    y = np.arange(100, 1100, dtype=np.int64)
    y.tofile(tmp_path / "y.bin")
    my = np.memmap(tmp_path / "y.bin", dtype=np.int64, mode="r", shape=(1000,))
    got = prepared.read_rows(my, [999, 0, 512])
    assert got.tolist() == [1099, 100, 612] and got.dtype == np.int64
    assert _resident_bytes_of(tmp_path / "y.bin") == 0
    (tmp_path / "h.bin").write_bytes(b"HEADER16........" + x.tobytes())
    mh = np.memmap(tmp_path / "h.bin", dtype=np.float32, mode="r", shape=(10, 4), offset=16)
    assert np.array_equal(prepared.read_rows(mh, rows), x[rows])
    named = (x + 1000).view(_Named)
    named.filename = str(tmp_path / "x.bin")
    assert np.array_equal(prepared.read_rows(named, rows), x[rows] + 1000)


class _Named(np.ndarray):
    """An array that is not a map but has a ``filename``."""


def test_read_rows_errors_name_the_row(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    x.tofile(tmp_path / "x.bin")
    m = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=(10, 4))
    for r in (10, -1):
        with pytest.raises(IndexError) as e:
            prepared.read_rows(m, [0, r])
        assert str(e.value) == f"row {r} is outside 0..9"
    os.truncate(tmp_path / "x.bin", 4 * 16 + 6)  # rows 4.. cut (the map's pages are never touched)
    assert prepared.read_rows(m, [3]).tolist() == [x[3].tolist()]
    with pytest.raises(DataError) as e:
        prepared.read_rows(m, [1, 4])
    assert str(e.value) == (f"{tmp_path / 'x.bin'}: row 4 is cut short (6 of 16 bytes); the prepared files changed "
                            f"while in use: run `lrjob prepare JOB` again")


def test_cache_entries_are_oldest_first_whatever_order_the_folder_lists_them_in(tmp_path):
    """The entries come in the order of their folders' times, not in the order the file
    system lists the folders: here the times run against that order."""
    cache = tmp_path / "cache"
    for name in "abcdef":
        (cache / f"csv-{name}").mkdir(parents=True)
    listed = list(cache.glob("*"))  # the file system's own order
    for t, p in enumerate(reversed(listed), 1):
        os.utime(p, (1000 * t, 1000 * t))
    assert [e["path"] for e in prepared.cache_entries(cache)] == [str(p) for p in reversed(listed)]


def test_read_rows_of_a_whole_column_major_map(tmp_path):
    """A whole map in Fortran order is not C-contiguous: its rows are not runs of bytes in the
    file, so it is indexed, not read row by row."""
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.asfortranarray(x).T.tofile(tmp_path / "f.bin")  # the file holds x column by column
    m = np.memmap(tmp_path / "f.bin", dtype=np.float32, mode="r", shape=(10, 4), order="F")
    assert np.array_equal(m, x) and not m.flags.c_contiguous and m.base is m._mmap
    assert np.array_equal(prepared.read_rows(m, [4, 0, 5]), x[[4, 0, 5]])


def test_the_manifest_records_how_long_the_preparation_took(tmp_path):
    """prepared_seconds is the time the build took: at least 0, at most the time the whole
    prepare() call took (to its 3 decimals)."""
    path = _write_csv(tmp_path / "d.csv", n=5)
    t0 = time.perf_counter()
    home = prepare(_req("csv", path), tmp_path / "cache")
    took = time.perf_counter() - t0
    seconds = _manifest(home)["prepared_seconds"]
    assert 0 <= seconds <= took + 0.0005, (seconds, took)


def test_a_table_whose_blocks_hold_fewer_than_block_rows_rows_is_prepared(tmp_path):
    """A block holds at most BLOCK_BYTES of float32 features: 70 columns make that fewer than
    BLOCK_ROWS rows, a whole number of them (a table is sliced in rows)."""
    n, d = 9, 70
    assert prepared.BLOCK_BYTES // (4 * (d + 1)) < tables.BLOCK_ROWS
    x = np.arange(n * d).reshape(n, d) * 0.5
    path = tmp_path / "wide.csv"
    path.write_text(",".join([*(f"c{i}" for i in range(d)), "label"]) + "\n"
                    + "".join(",".join([*(repr(float(v)) for v in r), str(i % 2)]) + "\n" for i, r in enumerate(x)))
    home = prepare(_req("csv", path), tmp_path / "cache")
    _same_as_memory(open_prepared(home), load_dataset("csv", kind="binary", num_classes=2, seed=7, path=str(path)))
