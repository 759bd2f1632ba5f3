"""``lr_core.tables``' NumPy readers and ``display`` where `make mutants` found the fast
tests silent: the exact words of every refusal of an .npy header or .npz member (a
message is what the user reads), the bounds at their value and one past it, an .npy
that shrinks after it was opened, an .npz member read in more than one piece, a
Fortran-order member, and URIs whose logins, ports, keys and queries look alike
(docs/design.md#data). The files are small on disk: a lying header rather than the data it
declares; the largest, a member of 16 MiB of repeating bytes, compresses to under 200 KB."""
from __future__ import annotations

import gzip
import io
import struct
import zipfile

import numpy as np
import pytest
from login_uris import LOGIN_URIS

from lr_core import tables
from lr_core.errors import DataError
from lr_core.tables import display, open_table, read_all


def _err(fn, *a, **kw) -> str:
    with pytest.raises(DataError) as err:
        fn(*a, **kw)
    text = str(err.value)
    assert "\n" not in text and err.value.__cause__ is None
    return text


def _npy_header(shape, descr="<f8") -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False, "shape": shape})
    return b.getvalue()


def _member_size(p, name="x") -> int:
    with zipfile.ZipFile(p) as z:
        return z.getinfo(name + ".npy").file_size


# --------------------------------------------------------------------------- display
@pytest.mark.parametrize("uri,shown", LOGIN_URIS + [  # and these, for display alone
    ("s3://KEY:S/E?C@bucket/k", "s3://bucket/k"),
    ("s3://u@bucket/k", "s3://bucket/k"),
    ("s3://@bucket/k", "s3://bucket/k"),
    ("s3://u:p@bucket", "s3://bucket"),
    ("s3://u:p@bucket?x=1", "s3://bucket"),
    # an '@' in a key or a query is no login
    ("s3://bucket?who=a@b", "s3://bucket"),
    ("s3://?a@b", "s3://"),
    # a host:port before the first '/' or '?' is no login, whatever follows it
    ("hdfs://nn:8020/a/b@c", "hdfs://nn:8020/a/b@c"),
    ("hdfs://nn:8020?u=a@b", "hdfs://nn:8020"),
    ("http://host:99?a:b?c@x", "http://host:99"),
    # more than five digits is no port: hidden up to the last '@' (more than a login, never less)
    ("http://h:123456/x@y/z", "http://y/z"),
    ("s3://a:b:c/d@e/f", "s3://e/f"),
])
def test_display_hides_the_whole_login_and_nothing_that_only_looks_like_one(uri, shown):
    assert display(uri) == shown


# --------------------------------------------------------------------------- .npy headers
@pytest.mark.parametrize("descr,shape,says", [
    pytest.param("|V0", (3, 2), "dtype |V0 is an item size of 0", id="void-0"),
    pytest.param("|S0", (3, 2), "dtype |S0 is an item size of 0", id="bytes-0"),
    pytest.param(("<f4", (1000,)), (3, 2), "dtype ('<f4', (1000,)) is a sub-array dtype", id="sub-array"),
    pytest.param([("a", "<f4"), ("b", "<i4")], (3, 2), "dtype [('a', '<f4'), ('b', '<i4')] is a structured dtype",
                 id="structured"),
    # a dtype's text is cut to 60 characters, the cut said within them
    pytest.param([(f"f{i}", "<f4") for i in range(20)], (3, 2),
                 "dtype [('f0', '<f4'), ('f1', '<f4'), ('f2', '<... (310 characters) is a structured dtype",
                 id="structured-long"),
])
def test_a_dtype_that_is_not_one_number_a_cell_is_refused_by_name(tmp_path, descr, shape, says):
    nbytes = int(np.prod(shape)) * np.dtype(descr).itemsize  # what the size check computes: it passes
    p = tmp_path / "odd.npy"
    p.write_bytes(_npy_header(shape, descr) + bytes(nbytes))
    fix = "; save a plain array of numbers (one per cell) with np.save"
    assert _err(open_table, p, require_labels=False) == f"{p}: {says}{fix}"
    z = tmp_path / "odd.npz"  # the same array as an .npz member
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("x.npy", _npy_header(shape, descr) + bytes(nbytes))
    assert _err(open_table, z, require_labels=False) == f"{z}: array 'x': {says}{fix}"


def test_negative_wide_truncated_and_padded_headers_are_refused_with_their_numbers(tmp_path):
    p = tmp_path / "x.npy"
    p.write_bytes(_npy_header((-3, -2), "<f4"))
    assert _err(open_table, p, require_labels=False) == (
        f"{p}: the header declares shape (-3, -2), with a negative dimension; the file is damaged: write it "
        f"again with np.save")
    p.write_bytes(_npy_header((2, 1_000_001)) + bytes(16))
    assert _err(open_table, p, require_labels=False) == (
        f"{p}: 1,000,001 feature columns (shape (2, 1000001)), more than the 1,000,000 a table may have; "
        f"check the array's orientation (rows x features)")
    # exactly MAX_FEATURES columns is allowed (no rows: nothing to store)
    z = tmp_path / "wide.npz"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("x.npy", _npy_header((0, 1_000_000), "|u1"))
    assert open_table(z, require_labels=False).rows == 0
    # labels (1-D) cut short: the row they end in, not only "the sizes differ"
    np.save(tmp_path / "x.npy", np.zeros((5, 2)))
    (tmp_path / "y.npy").write_bytes(_npy_header((5,), "<i8") + bytes(8 * 3 + 4))
    assert _err(open_table, tmp_path) == (f"{tmp_path}/y.npy: truncated .npy file: 5 rows declared, the data ends "
                                          f"in row 4; write it again")
    # more data than declared
    p.write_bytes(_npy_header((2, 2)) + bytes(40))
    assert _err(open_table, p, require_labels=False) == (
        f"{p}: the header declares shape (2, 2) of float64 (32 bytes) but the file holds 40 bytes of data; the "
        f"file is damaged or truncated: write it again with np.save")


@pytest.mark.parametrize("dtype,shape,keep,block,row", [
    pytest.param(np.float64, (7, 3), 24 * 5 + 10, 2, 6, id="float64-rows"),  # rows 1-5 whole, 6 begun
    pytest.param(np.uint8, (10, 1), 7, 4, 8, id="one-byte-rows"),
])
def test_an_npy_cut_short_after_it_was_opened_names_the_row_its_data_ends_in(tmp_path, dtype, shape, keep, block,
                                                                             row):
    p = tmp_path / "x.npy"
    np.save(p, np.arange(np.prod(shape)).astype(dtype).reshape(shape))
    table = open_table(p, require_labels=False)  # the sizes agree when it opens
    header = len(_npy_header(shape, np.dtype(dtype).str))
    with open(p, "r+b") as f:
        f.truncate(header + keep)
    blocks = table.batches(block)
    assert _err(lambda: list(blocks)) == (f"{p}: truncated .npy file: {shape[0]} rows declared, the data ends in row "
                                          f"{row}; write it again")


# --------------------------------------------------------------------------- .npz members
def test_an_encrypted_member_is_refused_by_name(tmp_path):
    p = tmp_path / "locked.npz"
    np.savez(p, x=np.ones((2, 2)))
    raw = bytearray(p.read_bytes())
    for sig, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the local and the central header's flag bits
        raw[raw.find(sig) + flags] |= 1
    p.write_bytes(bytes(raw))
    assert _err(open_table, p) == f"{p}: array 'x' is encrypted; save it again with np.savez(path, x=..., y=...)"


def test_a_member_of_other_flag_bits_is_read(tmp_path):
    # bits 1 and 2 give a deflate member's compression level (here: maximum); only bit 0 is encryption
    p = tmp_path / "best.npz"
    np.savez_compressed(p, x=np.arange(4.0).reshape(2, 2))
    raw = bytearray(p.read_bytes())
    for sig, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        raw[raw.find(sig) + flags] |= 0x2
    p.write_bytes(bytes(raw))
    with zipfile.ZipFile(p) as z:
        assert z.getinfo("x.npy").flag_bits & 0x7 == 0x2
    assert read_all(open_table(p, require_labels=False))[0].tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_a_member_of_python_objects_is_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([[1, None]], dtype=object))
    assert _err(open_table, p, require_labels=False) == (
        f"{p}: not a readable .npz file (it holds Python objects); save with np.savez(path, x=..., y=...)")


def test_a_member_whose_header_declares_more_than_it_holds_is_named(tmp_path):
    p = tmp_path / "lie.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:  # 10 x 2 float64 declared, one row held
        z.writestr("x.npy", _npy_header((10, 2)) + bytes(16))
    assert _err(open_table, p, require_labels=False) == (
        f"{p}: array 'x': truncated .npy file: 10 rows declared, the data ends in row 2; write it again")


def test_a_member_shorter_than_its_zip_entry_says_ends_early(tmp_path):
    # The zip's size of the member (central directory and local header) says 80 bytes of data,
    # as its .npy header does; the compressed stream holds 40 (its CRC is theirs, so zipfile
    # finds nothing wrong and returns fewer bytes than asked).
    p = tmp_path / "short.npz"
    header = _npy_header((5, 2))
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header + bytes(40))
    raw = bytearray(p.read_bytes())
    for sig, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # the uncompressed size
        struct.pack_into("<I", raw, raw.find(sig) + at, len(header) + 80)
    p.write_bytes(bytes(raw))
    assert _member_size(p) == len(header) + 80
    assert _err(open_table, p, require_labels=False) == (
        f"{p}: not a readable .npz file (array 'x' ends early); save with np.savez(path, x=..., y=...)")


def test_an_npz_member_at_its_size_bounds_and_one_past_them(tmp_path, monkeypatch):
    # the member's decompressed size (zip header) against MAX_NPZ_BYTES: equal is read
    p = tmp_path / "f8.npz"
    np.savez(p, x=np.arange(8.0).reshape(4, 2))
    size = _member_size(p)
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", size)
    assert read_all(open_table(p, require_labels=False))[0].shape == (4, 2)
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", size - 1)
    assert _err(open_table, p, require_labels=False) == (
        f"{p}: array 'x' takes {size:,} bytes decompressed, more than the {size - 1:,} an .npz may hold (it is "
        f"read whole); save large data as x.npy and y.npy in a folder, read in blocks")
    # its values as float32 (4 bytes each, a uint8 member takes a quarter of that) against the cap: equal is read
    u = tmp_path / "u1.npz"
    np.savez(u, x=np.ones((64, 1), np.uint8))
    assert _member_size(u) < 256
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", 256)
    assert read_all(open_table(u, require_labels=False))[0].shape == (64, 1)
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", 255)
    assert _err(open_table, u, require_labels=False) == (
        f"{u}: array 'x' holds 64 values, 256 bytes as float32, more than the 255 left of the 255 an .npz may "
        f"take (it is read whole); save large data as x.npy and y.npy in a folder, read in blocks")


def test_labels_get_what_the_features_left_of_the_cap_and_their_rows_are_checked_first(tmp_path, monkeypatch):
    p = tmp_path / "both.npz"
    np.savez(p, x=np.ones((64, 1), np.uint8), y=np.ones(64, np.uint8))  # 256 bytes as float32 each
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", 512)
    x, y = read_all(open_table(p))
    assert x.shape == (64, 1) and y.tolist() == [1] * 64
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", 400)  # x fits alone; 144 are left for y
    assert _err(open_table, p) == (
        f"{p}: array 'y' holds 64 values, 256 bytes as float32, more than the 144 left of the 400 an .npz may "
        f"take (it is read whole); save large data as x.npy and y.npy in a folder, read in blocks")
    # y of the wrong shape is refused for its shape before its size is weighed (it would not fit either)
    np.savez(p, x=np.ones((3, 2), np.uint8), y=np.ones((3, 100), np.uint8))
    monkeypatch.setattr(tables, "MAX_NPZ_BYTES", 512)
    assert _member_size(p, "y") <= 512
    assert _err(open_table, p) == f"{p}: array 'y' must hold one label per row of x (3), got shape (3, 100)"


def test_a_member_larger_than_one_read_is_read_whole_in_order(tmp_path):
    # 4 KiB more than the 16 MiB read at a time: two reads; no byte is its neighbour's, and the
    # last rows are not zero (what a fresh allocation of that size holds)
    x = np.resize(np.arange(1, 252, dtype=np.uint8), ((16 << 10) + 1, 1024))
    p = tmp_path / "big.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, x)
    assert p.stat().st_size < 200_000 and _member_size(p) - x.nbytes < 200
    got, y = read_all(open_table(p, require_labels=False))
    assert y is None and got.dtype == np.uint8 and np.array_equal(got, x)


def test_a_fortran_order_member_keeps_its_values(tmp_path):
    p = tmp_path / "f.npz"
    x = np.asfortranarray(np.arange(6.0).reshape(3, 2))
    np.savez(p, x=x, y=np.array([0, 1, 1]))
    with zipfile.ZipFile(p) as z, z.open("x.npy") as f:
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f)[1]  # stored in Fortran order
    got, y = read_all(open_table(p))
    assert got.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]] and y.tolist() == [0, 1, 1]


# --------------------------------------------------------------------------- .npz tables
def test_the_arrays_a_refused_npz_holds_are_listed_up_to_eight(tmp_path):
    p = tmp_path / "many.npz"
    np.savez(p, **{f"a{i}": np.zeros(1) for i in range(9)})
    found = "['a0', 'a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7']"
    assert _err(open_table, p) == f"{p}: no array 'x' (found {found}); save with np.savez(path, x=..., y=...)"
    np.savez(p, x=np.zeros((1, 1)), **{f"a{i}": np.zeros(1) for i in range(8)})
    found = "['x', 'a0', 'a1', 'a2', 'a3', 'a4', 'a5', 'a6']"
    assert _err(open_table, p) == f"{p}: no array 'y' (found {found}); save with np.savez(path, x=..., y=...)"


def test_an_npz_that_memory_cannot_hold_is_named_so(tmp_path, monkeypatch):
    # The allocation of the member fails (a machine with less memory than the cap): NumPy is
    # made to raise it, the rest is the real reader.
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((2, 2)), y=np.zeros(2))

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(tables.np, "empty", out_of_memory)
    assert _err(open_table, p) == (f"{p}: not enough memory to read this .npz (it is read whole); save large data "
                                   f"as x.npy and y.npy in a folder, read in blocks")


def test_a_table_that_memory_cannot_hold_is_named_so():
    def blocks(_rows):
        yield np.zeros((1, 1), np.float32), None
        raise MemoryError

    table = tables.Table("big.csv", ["a"], None, blocks, has_labels=False)
    assert _err(read_all, table) == ("big.csv: not enough memory to hold the whole table; free memory, or give the "
                                     "data as Parquet or x.npy/y.npy, which training reads in blocks")


# --------------------------------------------------------------------------- compressed CSV
def test_only_an_uncompressed_local_csv_has_its_rows_counted_before_it_is_read(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n")
    t = open_table(p)
    assert t.count_rows() == 3 and t.counted
    g = tmp_path / "d.csv.gz"
    g.write_bytes(gzip.compress(p.read_bytes()))
    t = open_table(g)
    assert t.count_rows() is None and not t.counted and sum(len(x) for x, _ in t.batches()) == 3
    assert tables._compressed(str(g)) and not tables._compressed(str(p)) and not tables._compressed(str(tmp_path))
