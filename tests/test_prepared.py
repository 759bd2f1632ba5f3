"""Prepared datasets (lr_core/prepared.py): converted once in bounded blocks, content
addressed, checked shard by shard, memory-mapped by workers, and equal to the in-memory
data, so training from them gives exactly the in-memory result."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

import pyarrow as pa  # noqa: E402  (requirements.txt; .ci/install installs it: missing is a failure)
import pyarrow.parquet as pq  # noqa: E402

from lr_core import prepared, tables  # noqa: E402
from lr_core.config import LoopConfig  # noqa: E402
from lr_core.data import load_dataset, make_request, write_idx  # noqa: E402
from lr_core.errors import DataError  # noqa: E402
from lr_core.loop import fit  # noqa: E402
from lr_core.prepared import open_prepared, prepare, verify  # noqa: E402


def _csv(path, n=200, d=4, seed=0, bad_row=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).round(4)
    y = (x.sum(axis=1) > 0).astype(int)
    lines = [",".join([f"f{j}" for j in range(d)] + ["label"])]
    lines += [",".join([str(v) for v in row] + [str(c)]) for row, c in zip(x, y)]
    if bad_row is not None:
        lines[bad_row + 1] = ",".join(["1"] * (d - 1) + ["zzz", "0"])
    path.write_text("\n".join(lines) + "\n")
    return path


def _req(source="csv", **kw):
    kw.setdefault("kind", "binary")
    kw.setdefault("num_classes", 2)
    kw.setdefault("seed", 7)
    return make_request(source, **kw)


def _idx_folder(tmp_path, n_train, shape):
    """The four MNIST-style IDX files: ``n_train`` training and 30 test images of ``shape``."""
    rng = np.random.default_rng(0)
    src = tmp_path / "idx"
    src.mkdir()
    for split, n in (("train", n_train), ("t10k", 30)):
        write_idx(src / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, *shape)))
        write_idx(src / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return src


def _same(a, b):
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_prepared_csv_equals_the_in_memory_split(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 17)  # many blocks, a short last one
    path = _csv(tmp_path / "d.csv")
    home = prepare(_req(path=str(path)), tmp_path / "cache")
    ds = open_prepared(home)
    _same(ds, load_dataset("csv", kind="binary", num_classes=2, seed=7, path=str(path)))
    assert isinstance(ds.x_train, np.memmap) and ds.extra["columns"] == ["f0", "f1", "f2", "f3"]
    m = json.loads((home / "manifest.json").read_text())
    assert m["arrays"]["train-x"]["shape"] == [180, 4] and m["arrays"]["val-x"]["shape"] == [20, 4]


def test_prepared_mnist_keeps_uint8_and_trains_exactly_like_memory(tmp_path):
    src = _idx_folder(tmp_path, 120, (4, 4))
    kw = dict(kind="softmax", num_classes=10, seed=3, path=str(src))
    home = prepare(make_request("mnist", **kw), tmp_path / "cache")
    ds, mem = open_prepared(home), load_dataset("mnist", **kw)
    assert ds.x_train.dtype == np.uint8 and ds.scale == pytest.approx(1 / 255)
    assert np.array_equal(ds.features(ds.x_train), mem.x_train) and ds.image_shape == (4, 4)
    cfg = LoopConfig(kind="softmax", num_classes=10, epochs=2, batch_size=16, learning_rate=0.5, seed=3)
    a, ha = fit(cfg, ds)
    b, hb = fit(cfg, mem)
    for name, v in a.get_params().items():
        assert np.array_equal(v, b.get_params()[name]), name
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]


def test_parquet_with_validation_file_and_a_pickle_that_is_a_path(tmp_path):
    rng = np.random.default_rng(1)
    for name, n in (("train", 64), ("val", 16)):
        pq.write_table(pa.table({"v": rng.standard_normal((n, 3)).tolist(), "label": rng.integers(0, 2, n)}),
                       tmp_path / f"{name}.parquet")
    req = _req("parquet", path=str(tmp_path / "train.parquet"), val_path=str(tmp_path / "val.parquet"),
               features=["v"])
    ds = open_prepared(prepare(req, tmp_path / "cache"))
    assert ds.x_train.shape == (64, 3) and ds.x_val.shape == (16, 3)
    blob = pickle.dumps(ds, protocol=5)
    assert len(blob) < 1000  # the path, not the rows
    back = pickle.loads(blob)
    assert isinstance(back.x_train, np.memmap) and np.array_equal(back.x_train, ds.x_train)


def test_reused_while_unchanged_and_prepared_again_when_the_source_changes(tmp_path):
    path = _csv(tmp_path / "d.csv")
    first = prepare(_req(path=str(path)), tmp_path / "cache")
    stamp = (first / "train-x.bin").stat().st_mtime_ns
    assert prepare(_req(path=str(path)), tmp_path / "cache") == first
    assert (first / "train-x.bin").stat().st_mtime_ns == stamp  # not rewritten
    _csv(path, seed=1)
    second = prepare(_req(path=str(path)), tmp_path / "cache")
    assert second != first and not np.array_equal(open_prepared(second).x_train, open_prepared(first).x_train)
    assert prepare(_req(path=str(path), seed=8), tmp_path / "cache") != second  # another split


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_a_damaged_preparation_is_detected_and_rebuilt(tmp_path, damage):
    path = _csv(tmp_path / "d.csv")
    home = prepare(_req(path=str(path)), tmp_path / "cache")
    good = np.array(open_prepared(home).x_train)
    target = home / "train-x.bin"
    if damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[100] ^= 0xFF
        target.write_bytes(bytes(raw))
        assert verify(home) == ["train-x.bin: rows 0..179 fail their checksum (damaged)"]
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-8])
        assert "expected 2880 (truncated or half-written)" in verify(home)[0]
        with pytest.raises(DataError, match="truncated or half-written"):
            open_prepared(home)
    else:
        (home / "manifest.json").unlink()
        assert "no manifest.json" in verify(home)[0]
    notes = []
    again = prepare(_req(path=str(path)), tmp_path / "cache", log=notes.append)
    assert again == home and verify(home) == [] and np.array_equal(open_prepared(home).x_train, good)
    assert len(notes) == 1 and "preparing it again" in notes[0]


def test_checksums_cover_every_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "SHARD_BYTES", 160)  # 10 rows of 4 float32
    path = _csv(tmp_path / "d.csv")
    home = prepare(_req(path=str(path)), tmp_path / "cache")
    shards = json.loads((home / "manifest.json").read_text())["arrays"]["train-x"]["shards"]
    assert [s["rows"] for s in shards][:2] == [[0, 10], [10, 20]] and shards[-1]["rows"][1] == 180
    raw = bytearray((home / "train-x.bin").read_bytes())
    raw[-1] ^= 1  # the last shard only
    (home / "train-x.bin").write_bytes(bytes(raw))
    assert verify(home) == ["train-x.bin: rows 170..179 fail their checksum (damaged)"]


def test_bad_data_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 16)
    path = _csv(tmp_path / "d.csv", bad_row=150)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"line 152, column 'f3': 'zzz' is not a number"):
        prepare(_req(path=str(path)), cache / "a" / "b")
    assert not cache.exists(), "the folders the failed preparation made are removed"
    cache.mkdir()
    bad_label = _csv(tmp_path / "e.csv")
    bad_label.write_text(bad_label.read_text().replace(",1\n", ",5\n", 1))
    with pytest.raises(DataError, match=r"binary labels must be exactly 0 or 1, found \[0, 1, 5\] \(first at row"):
        prepare(_req(path=str(bad_label)), cache)
    assert list(cache.iterdir()) == [], "a folder that was there is kept, empty"


def test_a_cache_folder_removed_by_another_failed_preparation_is_made_again(tmp_path, monkeypatch):
    """Two preparations into one new cache: one fails and removes the empty folder between the
    other's mkdir and mkdtemp. The other makes it again and completes (it said the cache could
    not be written)."""
    real, calls = prepared.tempfile.mkdtemp, []

    def racing(*a, dir=None, **k):
        calls.append(dir)
        if len(calls) == 1:
            os.rmdir(dir)  # what the failed preparation's clean-up does to the empty folder
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(prepared.tempfile, "mkdtemp", racing)
    home = prepare(_req(path=str(_csv(tmp_path / "d.csv"))), tmp_path / "cache")
    assert len(calls) == 2 and home.parent == tmp_path / "cache" and verify(home) == []


def test_label_errors_name_the_file_row_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 16)
    path = _csv(tmp_path / "d.csv")
    lines = path.read_text().splitlines()
    lines[101] = lines[101].rsplit(",", 1)[0] + ",7"  # data row 101
    path.write_text("\n".join(lines) + "\n")
    text = _err(prepare, _req(path=str(path)), tmp_path / "cache")
    assert text.startswith(f"{path}: ") and "(first at row 101)" in text


def test_credentials_and_endpoint_options_never_reach_messages_or_files(tmp_path):
    from lr_core.tables import display

    uri = "s3://KEY:SECRET@bucket/dir/t.parquet?endpoint_override=127.0.0.1:1&scheme=http&access_key=SECRET"
    assert display(uri) == "s3://bucket/dir/t.parquet"
    with pytest.raises(DataError) as err:
        prepare(_req("parquet", path=uri), tmp_path / "cache")
    assert "SECRET" not in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("s3://bucket/dir/t.parquet: cannot")


def test_the_cache_must_be_a_directory(tmp_path):
    path = _csv(tmp_path / "d.csv")
    with pytest.raises(DataError, match="data.cache: s3://b/c: must be a directory every node can see"):
        prepare(_req(path=str(path)), "s3://b/c")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="data.cache: cannot write"):
        prepare(_req(path=str(path)), blocker / "sub")


def test_two_preparers_of_one_dataset_agree(tmp_path, monkeypatch):
    """Another process renames its copy into place first: ours is dropped, theirs is used."""
    import shutil

    path = _csv(tmp_path / "d.csv")
    cache = tmp_path / "cache"
    real_rename = os.rename

    def other_process_first(src, dst):
        if ".tmp-" in str(src) and ".del-" not in str(dst):
            shutil.copytree(src, dst)  # the other preparer's finished copy
            raise OSError(39, "Directory not empty")
        return real_rename(src, dst)

    monkeypatch.setattr(prepared.os, "rename", other_process_first)
    home = prepare(_req(path=str(path)), cache)
    assert [p.name for p in cache.iterdir()] == [home.name] and verify(home) == []


def test_a_node_without_the_folder_prepares_its_own_copy_and_checks_it(tmp_path):
    """A worker on another node unpickles the dataset: the folder is not there, so it
    prepares its own from the source, accepted only if every shard matches the driver's."""
    import shutil

    from lr_core.prepared import prepared_dataset

    path = _csv(tmp_path / "d.csv")
    ds = prepared_dataset(_req(path=str(path)), tmp_path / "cache")
    blob = pickle.dumps(ds, protocol=5)
    want = np.array(ds.x_train)
    shutil.rmtree(ds.home)  # as seen from a node without the driver's cache
    back = pickle.loads(blob)
    assert np.array_equal(back.x_train, want) and back.home == ds.home
    shutil.rmtree(ds.home)
    _csv(path, seed=9)  # this node's copy of the source differs
    os.utime(path, ns=(0, 0))
    with pytest.raises(DataError, match=r"differs from the driver's .* every node must read the same source"):
        pickle.loads(blob)
    ds2 = open_prepared(prepare(_req(path=str(path)), tmp_path / "cache"))
    shutil.rmtree(ds2.home)
    with pytest.raises(DataError, match="no prepared data on .*data.cache must be storage every node sees"):
        pickle.loads(pickle.dumps(ds2))  # without an origin it cannot prepare


def test_a_run_maps_the_prepared_files_and_records_them(tmp_path):
    """The driver never loads the training rows: it maps the prepared folder, and the run
    says which one in env.json."""
    from launcher.driver import Driver
    from launcher.spec import load_spec

    path = _csv(tmp_path / "d.csv")
    job = tmp_path / "job.yaml"
    job.write_text("name: csvjob\nmodel: {kind: binary}\ndata: {source: csv, path: d.csv, cache: cache}\n"
                   "train: {epochs: 1}\nresources: {workers: 0}\n")
    spec = load_spec(job)
    driver = Driver(spec, tmp_path / "run")
    assert isinstance(driver.data.x_train, np.memmap) and driver.data.home is not None
    driver.run()
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["data"] == {"prepared": driver.data.home, "train_rows": 180, "val_rows": 20, "dtype": "float32"}
    assert env["data"]["prepared"].startswith(str(tmp_path / "cache"))


def test_horovodrun_ranks_compare_their_prepared_copies(tmp_path):
    """Under horovodrun each rank maps its own node's folder: one allreduce of the shards'
    checksums proves every rank holds rank 0's rows, else every rank stops."""
    import hashlib

    from launcher.driver import _same_data_on_every_rank
    from lr_core.prepared import prepared_dataset

    ds = prepared_dataset(_req(path=str(_csv(tmp_path / "d.csv"))), tmp_path / "cache")
    other = prepared_dataset(_req(path=str(_csv(tmp_path / "e.csv", seed=5))), tmp_path / "cache")

    class TwoRanks:  # rank 1 of 2; rank 0 holds ``first``
        size, rank = 2, 1

        def __init__(self, first):
            digest = hashlib.sha256("".join(first.extra["origin"][2]).encode()).digest()
            self.row0 = np.frombuffer(digest, dtype=np.uint8).astype(np.float64)

        def allreduce_sum(self, table, name):
            out = table.copy()
            out[0] += self.row0
            return out

    _same_data_on_every_rank(TwoRanks(ds), ds)
    with pytest.raises(DataError, match=r"rank 1: its prepared data differs from rank 0's"):
        _same_data_on_every_rank(TwoRanks(other), ds)


def test_a_verified_folder_is_not_hashed_again_until_a_file_changes(tmp_path, monkeypatch):
    home = prepare(_req(path=str(_csv(tmp_path / "d.csv"))), tmp_path / "cache")
    hashed = []
    real = prepared._iter_shards
    monkeypatch.setattr(prepared, "_iter_shards", lambda p, e: hashed.append(e["file"]) or real(p, e))
    assert verify(home) == [] and hashed == [], "sizes and times unchanged since the last full check"
    os.utime(home / "val-y.bin", ns=(1, 1))  # any change of a file's time or size
    assert verify(home) == [] and "val-y.bin" in hashed
    hashed.clear()
    assert verify(home) == [] and hashed == [], "the full check that passed is remembered"


# the training features here: 180 rows x 4 float32 = 2,880 bytes
@pytest.mark.parametrize("free,cap,advice", [(4 * 2880 + 4, 1 << 30, "MADV_WILLNEED"),
                                             (4 * 2880 - 4, 1 << 30, "MADV_RANDOM"),
                                             (1 << 40, 2880, "MADV_RANDOM"), (1 << 40, 2881, "MADV_WILLNEED")])
def test_training_features_are_read_ahead_only_when_they_fit(tmp_path, monkeypatch, free, cap, advice):
    import mmap

    home = prepare(_req(path=str(_csv(tmp_path / "d.csv"))), tmp_path / "cache")
    given = []
    monkeypatch.setattr(prepared, "_free_memory", lambda: free)
    monkeypatch.setattr(prepared, "READ_WHOLE_BYTES", cap)
    real = np.memmap

    def recording_memmap(*a, **kw):
        m = real(*a, **kw)
        m._mmap = type("M", (), {"madvise": lambda self, flag: given.append(flag)})()
        return m

    monkeypatch.setattr(prepared.np, "memmap", recording_memmap)
    open_prepared(home)
    assert given == [getattr(mmap, advice)]


# --------------------------------------------------------------------------- exact fields, keys and edges
import socket  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402
import sys  # noqa: E402

from lr_core.data import holdout_split  # noqa: E402


def _err(fn, *a, **kw) -> str:
    with pytest.raises(DataError) as err:
        fn(*a, **kw)
    text = str(err.value)
    assert "\n" not in text
    return text


def _manifest(home):
    return json.loads((Path(home) / "manifest.json").read_text())


def test_default_cache_and_the_fingerprinted_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LRJOB_DATA_HOME", str(tmp_path / "home"))
    assert prepared.default_cache() == tmp_path / "home" / "prepared"
    path = _csv(tmp_path / "d.csv")
    val = _csv(tmp_path / "v.csv", n=20)
    fp = prepared.fingerprint
    assert prepared._source_files(_req(path=str(path)), tmp_path / 'c') == [fp(path)]
    assert prepared._source_files(_req(path=str(path), val_path=str(val)), tmp_path / 'c') == [fp(path), fp(val)]
    data = tmp_path / "data"
    data.mkdir()
    _csv(data / "a.csv")
    (data / "cache").mkdir()
    (data / "cache" / "junk").write_text("x")
    assert prepared._source_files(_req(path=str(data)), data / "cache") == [fp(data, exclude=str(data / "cache"))]
    assert len(prepared._source_files(_req(path=str(data)), tmp_path / 'c')[0]) == 2
    req = make_request("mnist", kind="softmax", num_classes=10, seed=0)
    assert prepared._source_files(req, tmp_path / 'c') == [[]]
    (tmp_path / "home" / "fashion-mnist").mkdir(parents=True)
    (tmp_path / "home" / "mnist" / "sub").mkdir(parents=True)
    f = tmp_path / "home" / "mnist" / "train-images-idx3-ubyte"
    f.write_bytes(b"1234")
    st = f.stat()
    assert prepared._source_files(req, tmp_path / 'c') == [[[str(f), 4, st.st_mtime_ns]]]
    assert prepared._source_files(make_request("fashion-mnist", kind="softmax", num_classes=10, seed=0), tmp_path) == [[]]
    assert prepared._source_files(make_request("mnist", kind="softmax", num_classes=10, seed=0,
                                               path=str(data / "a.csv")), tmp_path / "c") == [fp(data / "a.csv")]
    assert prepared._source_files(make_request("digits", kind="softmax", num_classes=10, seed=0), tmp_path / "c") == []


def test_the_key_changes_with_every_input_and_only_with_them():
    base = dict(kind="binary", num_classes=2, seed=7, path="/d.csv", val_fraction=0.1, label_column="label")
    key = lambda files=(), source="csv", **kw: prepared.dataset_key(  # noqa: E731
        make_request(source, **{**base, **kw}), list(files))
    k0 = key()
    assert len(k0) == 24 and int(k0, 16) >= 0
    # a stored preparation stays valid across lrjob versions as long as FORMAT does; one
    # prepared without standardization keeps its key (the statistics are then not needed)
    assert key(standardize=False) == "29a996db7c386654c2201c33"
    assert k0 == "e296f425904521daf80b6e42"
    changed = [key(standardize=False), key(source="parquet"), key(kind="softmax"), key(num_classes=3), key(seed=8), key(path="/e.csv"),
               key(val_path="/v.csv"), key(val_fraction=0.2), key(label_column="y"), key(features=["a"]),
               key(label_map={"a": 0}), key(files=[["/d.csv", 1, 2]]),
               key(source="synthetic-binary", path=None, options={"n_train": 5}),
               key(files=[["/d.csv", 1, 3]])]
    assert len({k0, *changed}) == len(changed) + 1
    assert key(source="synthetic-binary", path=None) != key(source="synthetic-binary", path=None,
                                                            options={"n_train": 5})
    assert key(val_path="/v.csv", val_fraction=0.3) == key(val_path="/v.csv")  # the fraction is unused then
    assert key(features=None) == key(features=[]) == k0
    assert key(features=["a", "b"]) != key(features=["b", "a"])
    assert key(label_map={1: 0, "x": 1}) == key(label_map={"1": 0, "x": 1})  # keys as the spec's text
    assert key(label_map={}) == k0
    assert key(label_map={"a": 0}) != key(label_map={"b": 0})  # the map's keys count, not only its values
    assert key() == k0


def test_array_writer_shards_at_exact_row_boundaries(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setattr(prepared, "SHARD_BYTES", 24)  # 3 rows of 2 float32
    w = prepared._ArrayWriter(tmp_path / "a.bin", np.float32, None)
    data = np.arange(14, dtype=np.float64).reshape(7, 2)
    for lo, hi in ((0, 2), (2, 4), (4, 7)):
        w.write(data[lo:hi])
    entry = w.close()
    raw = (tmp_path / "a.bin").read_bytes()
    assert raw == data.astype(np.float32).tobytes() and w.f.closed
    assert entry == {"file": "a.bin", "dtype": "<f4", "shape": [7, 2], "shards": [
        {"rows": [0, 3], "sha256": hashlib.sha256(raw[:24]).hexdigest()},
        {"rows": [3, 6], "sha256": hashlib.sha256(raw[24:48]).hexdigest()},
        {"rows": [6, 7], "sha256": hashlib.sha256(raw[48:]).hexdigest()}]}
    w = prepared._ArrayWriter(tmp_path / "b.bin", np.int64, None)
    w.write(np.arange(6))
    entry = w.close()
    assert entry["shape"] == [6] and entry["dtype"] == "<i8" and [s["rows"] for s in entry["shards"]] == [[0, 3], [3, 6]]
    monkeypatch.setattr(prepared, "SHARD_BYTES", 5)  # less than a row: a row per shard
    w = prepared._ArrayWriter(tmp_path / "c.bin", np.uint8, 8)
    w.write(np.ones((2, 8)))
    assert [s["rows"] for s in w.close()["shards"]] == [[0, 1], [1, 2]]
    w = prepared._ArrayWriter(tmp_path / "d.bin", np.float32, 3)
    assert w.close() == {"file": "d.bin", "dtype": "<f4", "shape": [0, 3], "shards": []}
    monkeypatch.setattr(prepared, "SHARD_BYTES", 64 << 20)
    w = prepared._ArrayWriter(tmp_path / "e.bin", np.float32, None)
    w.write(np.ones((5, 4)))
    w.write(np.ones((5, 4)))
    assert [s["rows"] for s in w.close()["shards"]] == [[0, 10]]


def test_the_manifest_of_a_table(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "SHARD_BYTES", 160)
    path = _csv(tmp_path / "d.csv")
    req = _req(path=str(path), label_map=None)
    home = prepare(req, tmp_path / "cache")
    m = _manifest(home)
    files = prepared._source_files(req, tmp_path / "cache")
    assert home.name == f"csv-{prepared.dataset_key(req, files)}"
    assert {k: m[k] for k in ("format", "key", "source", "kind", "num_classes", "label_map", "fingerprint",
                              "image_shape", "val_name", "scale", "columns", "description")} == {
        "format": 1, "key": home.name[4:], "source": "csv", "kind": "binary", "num_classes": 2, "label_map": None,
        "fingerprint": files, "image_shape": None, "val_name": "validation", "scale": None,
        "columns": ["f0", "f1", "f2", "f3"], "description": str(path)}
    assert isinstance(m["prepared_seconds"], float) and m["prepared_seconds"] >= 0
    assert sorted(m) == ["arrays", "columns", "description", "fingerprint", "format", "image_shape", "key", "kind",
                         "label_map", "num_classes", "prepared_seconds", "scale", "source", "stats", "val_name"]
    assert sorted(m["arrays"]) == ["train-x", "train-y", "val-x", "val-y"]
    assert sorted(p.name for p in home.iterdir()) == [".verified", "manifest.json", "train-x.bin", "train-y.bin",
                                                      "val-x.bin", "val-y.bin"]
    for name, shape, dtype in (("train-x", [180, 4], "<f4"), ("train-y", [180], "<i8"), ("val-x", [20, 4], "<f4"),
                               ("val-y", [20], "<i8")):
        e = m["arrays"][name]
        assert (e["file"], e["shape"], e["dtype"]) == (f"{name}.bin", shape, dtype)
    assert [s["rows"] for s in m["arrays"]["val-x"]["shards"]] == [[0, 10], [10, 20]]
    assert [s["rows"] for s in m["arrays"]["train-y"]["shards"]] == [[0, 20 * i] for i in range(1, 10)][:0] + \
        [[20 * i, 20 * i + 20] for i in range(9)]  # 20 int64 labels in 160 bytes
    assert (home / "manifest.json").read_text().startswith('{\n "format": 1,\n "key": ')
    ds = open_prepared(home)
    assert (ds.source, ds.image_shape, ds.description, ds.val_name, ds.scale, ds.home) == (
        "csv", None, str(path), "validation", None, str(home))
    assert ds.extra == {"columns": ["f0", "f1", "f2", "f3"], "prepared": str(home)}
    assert not ds.x_train.flags.writeable and not ds.y_val.flags.writeable  # read-only maps
    assert prepare(req, tmp_path / "a" / "b" / "cache").parent == tmp_path / "a" / "b" / "cache"


def test_the_manifest_of_a_built_in_source(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 100)
    req = make_request("digits", kind="softmax", num_classes=10, seed=1,
                       label_map={str(i): i for i in range(10)})
    home = prepare(req, tmp_path / "cache")
    m = _manifest(home)
    mem = load_dataset("digits", kind="softmax", num_classes=10, seed=1)
    assert (m["image_shape"], m["val_name"], m["scale"], m["columns"], m["description"], m["label_map"]) == (
        [8, 8], "validation", None, [], mem.description, {str(i): i for i in range(10)})
    ds = open_prepared(home)
    _same(ds, mem)
    assert ds.image_shape == (8, 8) and ds.x_train.dtype == np.float32
    src = _idx_folder(tmp_path, 250, (2, 3))
    home = prepare(make_request("mnist", kind="softmax", num_classes=10, seed=3, path=str(src)), tmp_path / "c2")
    m = _manifest(home)
    assert (m["image_shape"], m["val_name"], m["scale"], m["description"]) == (
        [2, 3], "test", pytest.approx(1 / 255), f"mnist from {src}")
    assert m["arrays"]["train-x"]["dtype"] == "|u1" and m["arrays"]["train-x"]["shape"] == [250, 6]
    assert m["arrays"]["train-y"]["dtype"] == m["arrays"]["val-y"]["dtype"] == "<i8"
    fashion = open_prepared(prepare(make_request("fashion-mnist", kind="softmax", num_classes=10, seed=3,
                                                 path=str(src)), tmp_path / "c4"))
    assert fashion.x_train.dtype == np.uint8 and fashion.val_name == "test" and fashion.source == "fashion-mnist"
    ds = open_prepared(home)
    raw = load_dataset("mnist", kind="softmax", num_classes=10, seed=3, path=str(src))
    assert np.array_equal(ds.features(ds.x_train), raw.x_train) and ds.val_name == "test"
    assert np.array_equal(ds.y_val, raw.y_val) and ds.image_shape == (2, 3)
    synth = make_request("synthetic-binary", kind="binary", num_classes=2, seed=2, options={"n_train": 250})
    _same(open_prepared(prepare(synth, tmp_path / "c3")),
          load_dataset("synthetic-binary", kind="binary", num_classes=2, seed=2, options={"n_train": 250}))


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("n,fraction", [(2, 0.5), (10, 0.01), (10, 0.0), (37, 0.3), (3, 0.5), (200, 0.1)])
def test_the_hold_out_is_holdout_split_exactly(tmp_path, n, fraction, quoted):
    """A local CSV's rows are counted before it is read, and it splits as it streams; with a
    quote in it (a quoted value may hold a line end) they are not, and a scratch file of all
    rows is split after it is read. Both hold out holdout_split's rows exactly."""
    path = _csv(tmp_path / "d.csv", n=n, d=2)
    x, y = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, :2].astype(np.float32), \
        np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 2].astype(np.int64)
    if quoted:  # the last label, quoted
        text = path.read_text()
        path.write_text(text[:-2] + f'"{text[-2]}"\n')
    seen = []
    req = _req(path=str(path), val_fraction=fraction, seed=11)
    ds = open_prepared(prepare(req, tmp_path / "cache", progress=lambda *a: seen.append(a)))
    want = holdout_split(x, y, fraction, 11, "w")
    for got, w in zip((ds.x_train, ds.y_train, ds.x_val, ds.y_val), want):
        assert got.shape == w.shape and np.array_equal(got, w)
    assert seen == ([(f"reading {path}", n, None), ("splitting", n, n)] if quoted else [(f"reading {path}", n, n)])


def test_nothing_left_to_train_on(tmp_path):
    path = _csv(tmp_path / "d.csv", n=2)
    assert _err(prepare, _req(path=str(path), val_fraction=0.9), tmp_path / "cache") == (
        f"{path}: 2 rows leave nothing to train on after data.val_fraction=0.9; lower val_fraction or give "
        f"data.val_path")
    path = _csv(tmp_path / "e.csv", n=1)
    assert "1 rows leave nothing to train on after data.val_fraction=0.01;" in _err(
        prepare, _req(path=str(path), val_fraction=0.01), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # the folder the failed preparation made is removed


def test_blocks_progress_and_a_validation_file(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 16)
    d = tmp_path / "parts"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate((20, 10)):
        pq.write_table(pa.table({"a": rng.standard_normal(n), "b": rng.standard_normal(n),
                                 "label": rng.integers(0, 2, n)}), d / f"p{i}.parquet")
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [0.5, 0.25], "label": [1, 0]}), tmp_path / "v.parquet")
    seen = []
    home = prepare(_req("parquet", path=str(d), val_path=str(tmp_path / "v.parquet")), tmp_path / "cache",
                   progress=lambda *a: seen.append(a))
    assert seen == [(f"reading {d}", 16, 30), (f"reading {d}", 20, 30), (f"reading {d}", 30, 30),
                    (f"reading {tmp_path / 'v.parquet'}", 2, 2)]
    ds = open_prepared(home)
    assert ds.x_train.shape == (30, 2) and ds.x_val.tolist() == [[1.0, 2.0][:1] + [0.5], [2.0, 0.25]]
    assert ds.y_val.tolist() == [1, 0] and _manifest(home)["description"] == str(d)
    assert sorted(p.name for p in home.iterdir()) == [".verified", "manifest.json", "train-x.bin", "train-y.bin",
                                                      "val-x.bin", "val-y.bin"]
    pq.write_table(pa.table({"a": [1.0], "label": [1]}), tmp_path / "v1.parquet")
    assert _err(prepare, _req("parquet", path=str(d), val_path=str(tmp_path / "v1.parquet")), tmp_path / "cache") \
        == f"{tmp_path}/v1.parquet: 1 feature columns, the model expects 2 (same columns, in training order)"


def test_uint8_is_kept_and_mixed_column_types_are_refused(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    pq.write_table(pa.table({"a": np.array([1, 200], dtype=np.uint8), "label": [0, 1]}), d / "p0.parquet")
    home = prepare(_req("parquet", path=str(d), val_fraction=0.0), tmp_path / "cache")
    ds = open_prepared(home)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.tolist() == [[1], [200]] and len(ds.x_val) == 0
    assert ds.x_val.dtype == np.uint8 and ds.x_val.shape == (0, 1) and not isinstance(ds.x_val, np.memmap)
    pq.write_table(pa.table({"a": [3.5], "label": [0]}), d / "p1.parquet")
    assert _err(prepare, _req("parquet", path=str(d)), tmp_path / "cache") == (
        f"{d}/p1.parquet: row 1: features of type float32, earlier rows uint8; give every file the same column types")
    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.float64()), "label": pa.array([], pa.int64())}), empty)
    assert _err(prepare, _req("parquet", path=str(empty)), tmp_path / "cache") == (
        f"{empty}: no rows; the dataset is empty")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [home.name]


def test_the_prepared_folder_name_permissions_and_failure(tmp_path, monkeypatch):
    path = _csv(tmp_path / "d.csv")
    seen = []
    real = prepared._build

    def build(request, out, progress):
        seen.append((out.name, oct(out.stat().st_mode & 0o777), out.parent.name))
        return real(request, out, progress)

    monkeypatch.setattr(prepared, "_build", build)
    key = prepared.dataset_key(_req(path=str(path)), prepared._source_files(_req(path=str(path)), tmp_path / "c"))
    for mask, mode in ((0o022, 0o755), (0o077, 0o700), (0o002, 0o775)):
        old = os.umask(mask)
        try:
            home = prepare(_req(path=str(path)), tmp_path / f"c{mask}")
        finally:
            os.umask(old)
        assert oct(home.stat().st_mode & 0o777) == oct(mode)
    assert seen[0][1] == oct(0o755) and [s[2] for s in seen] == ["c18", "c63", "c2"]  # made inside the cache
    name = seen[0][0]
    assert name.split("-")[-3] == prepared._HOST and name.split("-")[-2] == str(os.getpid())
    assert name.startswith(f".tmp-csv-{key}-{prepared._HOST}-{os.getpid()}-")

    def broken(request, out, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared, "_build", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare(_req(path=str(path), seed=99), tmp_path / "c18")
    assert [p.name for p in (tmp_path / "c18").iterdir()] == [home.name]


def test_the_cache_path_is_expanded_and_defaults_to_the_data_home(tmp_path, monkeypatch):
    path = _csv(tmp_path / "d.csv", n=20)
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.setenv("LRJOB_DATA_HOME", str(tmp_path / "dh"))
    assert prepare(_req(path=str(path)), "~/cache").parent == tmp_path / "h" / "cache"
    assert prepare(_req(path=str(path))).parent == tmp_path / "dh" / "prepared"
    assert prepared.cache_entries()[0]["path"].startswith(str(tmp_path / "dh" / "prepared"))
    assert [e["path"] for e in prepared.cache_entries("~/cache")] == [str(prepare(_req(path=str(path)), "~/cache"))]
    assert prepared.clean_cache() == [str(prepare(_req(path=str(path))))]
    prepare(_req(path=str(path)), "~/cache")
    assert len(prepared.clean_cache("~/cache")) == 1


def test_a_failed_rename_without_another_copy_is_raised(tmp_path, monkeypatch):
    path = _csv(tmp_path / "d.csv", n=20)

    def refuse(src, dst):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(prepared.os, "rename", refuse)
    with pytest.raises(OSError, match="Permission denied"):
        prepare(_req(path=str(path)), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_checksums_off_checks_sizes_only(tmp_path):
    path = _csv(tmp_path / "d.csv")
    home = prepare(_req(path=str(path)), tmp_path / "cache")
    raw = bytearray((home / "val-y.bin").read_bytes())
    raw[0] ^= 1
    (home / "val-y.bin").write_bytes(bytes(raw))
    notes = []
    assert prepare(_req(path=str(path)), tmp_path / "cache", log=notes.append, checksums=False) == home
    assert notes == [] and verify(home, checksums=False) == []
    assert prepare(_req(path=str(path)), tmp_path / "cache", log=notes.append) == home
    assert notes == [f"prepared data {home}: val-y.bin: rows 0..19 fail their checksum (damaged); preparing it again"]
    assert verify(home) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_removes_only_dead_preparations_of_this_host(tmp_path, monkeypatch):
    host = prepared._HOST
    dead = _dead_pid()
    names = [f".tmp-synthetic-binary-k-{host}-{dead}-x0", f".tmp-csv-k-{host}-{dead}-x1", f".tmp-csv-k-{host}-{os.getpid()}-x2", f".tmp-csv-k-other-{dead}-x3",
             ".tmp-x", f".tmp-csv-k-{host}-nopid-x4", ".del-csv-k-1", "csv-k", f"tmp-csv-k-{host}-{dead}-x5"]
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "f").write_text("x")
    prepared._sweep(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {names[0], names[1], ".del-csv-k-1"})
    assert prepared._alive(os.getpid()) and not prepared._alive(dead)

    def no_permission(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(prepared.os, "kill", no_permission)
    assert prepared._alive(1)
    (tmp_path / f".tmp-csv-k-{host}-1-x6").mkdir()
    prepared._sweep(tmp_path)
    assert (tmp_path / f".tmp-csv-k-{host}-1-x6").is_dir()


def test_a_prepare_sweeps_dead_folders_first(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / f".tmp-csv-k-{prepared._HOST}-{_dead_pid()}-abc"
    stale.mkdir()
    prepare(_req(path=str(_csv(tmp_path / "d.csv", n=20))), cache)
    assert not stale.exists()


def test_json_default_and_remove(tmp_path, monkeypatch):
    assert prepared._json_default(np.int64(3)) == 3 and type(prepared._json_default(np.int64(3))) is int
    assert prepared._json_default(np.float32(1.5)) == 1.5 and type(prepared._json_default(np.float32(1.5))) is float
    assert prepared._json_default(tmp_path) == str(tmp_path)
    path = _csv(tmp_path / "d.csv", n=20)
    home = prepare(_req(path=str(path), label_map={0: np.int64(0), 1: np.int64(1)}), tmp_path / "cache")
    assert _manifest(home)["label_map"] == {"0": 0, "1": 1}
    prepared._remove(tmp_path / "nothing")
    d = tmp_path / "x"
    d.mkdir()
    (d / "f").write_text("1")
    real = os.rename
    renames = []

    def record(src, dst):
        renames.append((os.path.basename(src), os.path.basename(dst)))
        return real(src, dst)

    monkeypatch.setattr(prepared.os, "rename", record)
    prepared._remove(d)
    assert not d.exists() and renames == [("x", f".del-x-{os.getpid()}")] and sorted(os.listdir(tmp_path)) == [
        "cache", "d.csv"]

    def refuse(src, dst):
        raise OSError(16, "busy")

    monkeypatch.setattr(prepared.os, "rename", refuse)
    d.mkdir()
    prepared._remove(d)
    assert not d.exists()


def test_manifest_and_verify_texts(tmp_path):
    path = _csv(tmp_path / "d.csv")
    home = prepare(_req(path=str(path)), tmp_path / "cache")
    text = (home / "manifest.json").read_text()
    (home / "manifest.json").write_text("{broken")
    assert _err(open_prepared, home).startswith(f"{home}/manifest.json: unreadable (")
    assert _err(open_prepared, home).endswith("); remove the directory and run `lrjob prepare JOB`")
    (home / "manifest.json").write_text(text.replace('"format": 1', '"format": 2'))
    assert _err(open_prepared, home) == f"{home}: prepared with format 2, this lrjob reads 1; run `lrjob prepare " \
                                        f"JOB` again"
    (home / "manifest.json").unlink()
    assert _err(open_prepared, home) == f"{home}: not a prepared dataset (no manifest.json); run `lrjob prepare JOB`"
    assert verify(home) == [f"{home}: not a prepared dataset (no manifest.json); run `lrjob prepare JOB`"]
    m = json.loads(text)
    m["arrays"]["val-y"] = m["arrays"].pop("val-y")  # keep the order; the last one goes missing below
    del m["arrays"]["val-y"]
    (home / "manifest.json").write_text(json.dumps(m))
    (home / "train-x.bin").write_bytes((home / "train-x.bin").read_bytes()[:-8])
    (home / "train-y.bin").unlink()
    raw = bytearray((home / "val-x.bin").read_bytes())
    raw[0] ^= 1
    raw[-1] ^= 1
    (home / "val-x.bin").write_bytes(bytes(raw))
    assert verify(home) == ["train-x.bin: 2872 bytes, expected 2880 (truncated or half-written)",
                            "train-y.bin: missing, expected 1440 (truncated or half-written)",
                            "val-x.bin: rows 0..19 fail their checksum (damaged)", "val-y: missing from the manifest"]
    assert verify(home, checksums=False) == verify(home)[:2] + verify(home)[3:]
    assert _err(open_prepared, home) == (f"{home}: train-x.bin: 2872 bytes, expected 2880 (truncated or "
                                         f"half-written); run `lrjob prepare JOB` to rebuild it")
    m = json.loads(text)
    (home / "manifest.json").write_text(text)
    (home / "train-y.bin").write_bytes(b"\0" * 1440)
    (home / "val-x.bin").write_bytes(b"")
    assert _err(open_prepared, home, check=False).startswith(f"{home}: cannot map the prepared files (")
    assert _err(open_prepared, home, check=False).endswith(
        "); is the directory visible on this node? Put data.cache on storage every node sees")
    assert _err(open_prepared, tmp_path / "nope") == (
        f"{tmp_path / 'nope'}: no prepared data on {socket.gethostname()}; data.cache must be storage every node "
        f"sees at the same path, or run `lrjob prepare JOB` on this node")


def test_shards_are_checked_one_by_one(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "SHARD_BYTES", 160)
    path = _csv(tmp_path / "d.csv")
    home = prepare(_req(path=str(path)), tmp_path / "cache")
    raw = bytearray((home / "train-x.bin").read_bytes())
    raw[160 * 3 + 5] ^= 1
    raw[160 * 5] ^= 1
    (home / "train-x.bin").write_bytes(bytes(raw))
    assert verify(home) == ["train-x.bin: rows 30..39 fail their checksum (damaged)"]
    m = _manifest(home)
    assert list(prepared._iter_shards(home, m["arrays"]["val-y"])) == [
        (a, b, s["sha256"], (home / "val-y.bin").read_bytes()[a * 8:b * 8])
        for s in m["arrays"]["val-y"]["shards"] for a, b in [s["rows"]]]


def test_the_origin_a_dataset_carries_and_reopen(tmp_path, monkeypatch):
    from lr_core.prepared import prepared_dataset, reopen

    path = _csv(tmp_path / "d.csv")
    req = _req(path=str(path))
    ds = prepared_dataset(req, tmp_path / "cache")
    m = _manifest(ds.home)
    digests = [s["sha256"] for name in prepared.ARRAYS for s in m["arrays"][name]["shards"]]
    assert ds.extra == {"columns": ["f0", "f1", "f2", "f3"], "prepared": ds.home,
                        "origin": (req, str(tmp_path / "cache"), digests)}
    assert len(digests) == 4
    back = reopen(ds.home, ds.extra["origin"])
    assert back.home == ds.home and "origin" not in back.extra and np.array_equal(back.x_train, ds.x_train)
    assert reopen(ds.home).home == ds.home
    with pytest.raises(DataError) as err:
        reopen(ds.home, (req, None, digests[::-1]))
    assert str(err.value) == (f"{socket.gethostname()}: {ds.home} differs from the driver's copy (prepared again "
                              f"since?); run the job again")
    import shutil

    shutil.rmtree(ds.home)
    again = reopen(ds.home, ds.extra["origin"])
    assert again.extra["origin"] == ds.extra["origin"] and again.home == ds.home
    os.remove(path)
    shutil.rmtree(ds.home)
    text = _err(reopen, ds.home, ds.extra["origin"])
    assert text.startswith(f"{socket.gethostname()}: preparing this node's copy: {path}: ")
    _csv(path, seed=4)
    os.utime(path, ns=(1, 1))
    other = prepare(req, tmp_path / "cache")
    assert _err(reopen, ds.home, ds.extra["origin"]) == (
        f"{socket.gethostname()}: the data prepared here ({other}) differs from the driver's ({ds.home}); every "
        f"node must read the same source: put data.cache on storage every node sees, or give every node the same "
        f"files")
    monkeypatch.setenv("LRJOB_DATA_HOME", str(tmp_path / "home"))
    assert prepared_dataset(req).extra["origin"][1] is None


def test_cache_entries_and_clean_cache(tmp_path):
    cache = tmp_path / "cache"
    assert prepared.cache_entries(cache) == [] and prepared.clean_cache(cache) == []
    a = prepare(_req(path=str(_csv(tmp_path / "a.csv", n=50))), cache)
    b = prepare(_req(path=str(_csv(tmp_path / "b.csv", n=30)), val_fraction=0.2), cache)
    broken = cache / "csv-broken"
    broken.mkdir()
    (broken / "junk.bin").write_bytes(b"12345")
    # oldest first: the reverse of the names' order
    by_name = sorted([a, b, broken], key=lambda p: p.name)
    for p, t in zip(by_name, (3000, 2000, 1000)):
        os.utime(p, (t, t))
    (cache / ".tmp-csv-k-otherhost-1-x").mkdir()
    (cache / ".del-old").mkdir()
    (cache / "stray.txt").write_text("x")
    os.utime(cache / "stray.txt", (1, 1))  # first in the order: skipped, not the end of the list
    os.utime(cache / ".del-old", (2, 2))
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    want = {a: {"path": str(a), "source": "csv", "rows": [45, 5], "bytes": size(a), "from": str(tmp_path / "a.csv")},
            b: {"path": str(b), "source": "csv", "rows": [24, 6], "bytes": size(b), "from": str(tmp_path / "b.csv")},
            broken: {"path": str(broken), "source": None, "rows": None, "bytes": 5, "from": None}}
    assert prepared.cache_entries(cache) == [{**want[p], "modified": float(t)}
                                             for p, t in zip(by_name[::-1], (1000, 2000, 3000))]
    m = _manifest(a)
    del m["arrays"]["val-x"]
    (a / "manifest.json").write_text(json.dumps(m))
    assert {e["path"]: e["rows"] for e in prepared.cache_entries(cache)} == {
        str(a): None, str(b): [24, 6], str(broken): None}
    assert sorted(prepared.clean_cache(cache, keep={str(b)})) == sorted([str(a), str(broken)])
    assert sorted(p.name for p in cache.iterdir()) == sorted([b.name, ".tmp-csv-k-otherhost-1-x", "stray.txt"])
    assert prepared.clean_cache(cache) == [str(b)]


def test_table_errors_through_prepare(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 16)
    path = _csv(tmp_path / "d.csv")
    lines = path.read_text().splitlines()
    lines[40] = lines[40].split(",", 2)[0] + ",nan," + lines[40].split(",", 2)[2]  # data row 40, column f1
    path.write_text("\n".join(lines) + "\n")
    assert _err(prepare, _req(path=str(path)), tmp_path / "cache").startswith(
        f"{path}: row 40, f1: value nan is not finite (NaN or inf)")
    nolabel = tmp_path / "n.csv"
    nolabel.write_text("a,b\n1,2\n3,4\n")
    assert _err(prepare, _req(path=str(nolabel)), tmp_path / "cache") == (
        f"{nolabel}: no column 'label' (columns: a, b); set data.label_column")
    ds = open_prepared(prepare(_req(path=str(_csv(tmp_path / "e.csv")), features=["f2"]), tmp_path / "cache"))
    assert ds.x_train.shape == (180, 1) and ds.extra["columns"] == ["f2"]
    ds = open_prepared(prepare(_req(path=str(tmp_path / "e.csv"), features=["f2", "f0"]), tmp_path / "cache"))
    assert ds.x_train.shape == (180, 2) and ds.extra["columns"] == ["f2", "f0"]


def test_alive_sends_no_signal(monkeypatch):
    sent = []
    monkeypatch.setattr(prepared.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    assert prepared._alive(12345) and sent == [(12345, 0)]


def test_shards_of_one_byte_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "SHARD_BYTES", 5)
    w = prepared._ArrayWriter(tmp_path / "u.bin", np.uint8, 1)
    w.write(np.arange(7, dtype=np.uint8).reshape(7, 1))
    assert [s["rows"] for s in w.close()["shards"]] == [[0, 5], [5, 7]]


def test_verify_goes_on_after_a_missing_entry(tmp_path):
    home = prepare(_req(path=str(_csv(tmp_path / "d.csv"))), tmp_path / "cache")
    m = _manifest(home)
    del m["arrays"]["train-x"]
    (home / "manifest.json").write_text(json.dumps(m))
    (home / "val-y.bin").write_bytes(b"")
    assert verify(home) == ["train-x: missing from the manifest",
                            "val-y.bin: 0 bytes, expected 160 (truncated or half-written)"]


def test_open_checks_sizes_only(tmp_path):
    home = prepare(_req(path=str(_csv(tmp_path / "d.csv"))), tmp_path / "cache")
    raw = bytearray((home / "train-x.bin").read_bytes())
    raw[0] ^= 1
    (home / "train-x.bin").write_bytes(bytes(raw))
    assert len(open_prepared(home).x_train) == 180  # checksums are prepare's job (once, not per worker)


def test_a_cache_inside_the_data_folder_does_not_change_the_key(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _csv(data / "a.csv")
    first = prepare(_req("csv", path=str(data / "a.csv")), data / "cache")
    pq.write_table(pa.table({"f": [1.0, 2.0, 3.0, 4.0], "label": [0, 1, 0, 1]}), data / "p.parquet")
    home = prepare(_req("parquet", path=str(data)), data / "cache")
    assert prepare(_req("parquet", path=str(data)), data / "cache") == home and first.is_dir()


def test_the_cache_error_is_one_line(tmp_path):
    path = _csv(tmp_path / "d.csv", n=20)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _err(prepare, _req(path=str(path)), blocker / "sub") == (
        f"data.cache: cannot write {blocker / 'sub'} (Not a directory); set data.cache (or LRJOB_DATA_HOME) to a "
        f"writable directory")


def test_a_damaged_copy_from_another_process_is_not_used(tmp_path, monkeypatch):
    import shutil

    path = _csv(tmp_path / "d.csv", n=20)
    real_rename = os.rename

    def other_process_first(src, dst):
        if ".tmp-" in str(src) and ".del-" not in str(dst):
            shutil.copytree(src, dst)
            with open(os.path.join(dst, "train-x.bin"), "r+b") as f:
                f.truncate(8)
            raise OSError(39, "Directory not empty")
        return real_rename(src, dst)

    monkeypatch.setattr(prepared.os, "rename", other_process_first)
    with pytest.raises(OSError, match="Directory not empty"):
        prepare(_req(path=str(path)), tmp_path / "cache")


def test_prepared_dataset_passes_progress_log_and_checksums_on(tmp_path):
    from lr_core.prepared import prepared_dataset

    path = _csv(tmp_path / "d.csv", n=20)
    seen, notes = [], []
    ds = prepared_dataset(_req(path=str(path)), tmp_path / "cache", progress=lambda *a: seen.append(a[0]),
                          log=notes.append)
    assert seen == [f"reading {path}"] and notes == []
    raw = bytearray((Path(ds.home) / "val-y.bin").read_bytes())
    raw[0] ^= 1
    (Path(ds.home) / "val-y.bin").write_bytes(bytes(raw))
    prepared_dataset(_req(path=str(path)), tmp_path / "cache", log=notes.append)
    assert len(notes) == 1 and "fail their checksum" in notes[0]
    raw[0] ^= 1
    (Path(ds.home) / "val-y.bin").write_bytes(bytes(raw[:-1]) + bytes([raw[-1] ^ 1]))
    prepared_dataset(_req(path=str(path)), tmp_path / "cache", log=notes.append, checksums=False)
    assert len(notes) == 1  # sizes only


# --------------------------------------------------------------------------- flat memory
def _mapped_bytes(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = line.rstrip().endswith(" " + str(path))
            elif inside and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


def test_mapped_pages_of_a_large_set_stay_near_the_budget(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    np.arange(8192 * 1024, dtype=np.float32).tofile(path)  # 32 MiB, rows of 4 KiB
    monkeypatch.setattr(prepared, "RESIDENT_BYTES", 8 << 20)
    for budgeted in (False, True):
        x = np.memmap(path, dtype=np.float32, mode="r", shape=(8192, 1024))
        monkeypatch.setattr(prepared, "_free_memory", lambda: 1 << 40 if not budgeted else 1 << 20)
        pages = prepared.MappedPages(x)
        assert pages.active == budgeted and pages.budget_rows == 4  # a row counts as a 2 MiB folio
        most = 0
        for lo in range(0, 8192, 256):  # 1 MiB a step: 32 reads of smaps a pass (each costs milliseconds)
            assert x[lo:lo + 256].sum() >= 0
            pages.read(256)
            most = max(most, _mapped_bytes(path))
        if budgeted:
            assert pages.releases == 32 and most <= 12 << 20, most
        else:  # a set read whole keeps its pages: the measure sees them
            assert pages.releases == 0 and most >= 32 << 20, most
        del x, pages


def test_training_maps_none_of_a_large_set(tmp_path, monkeypatch):
    """A set larger than memory: the steps read their rows (read_rows) and map none of the
    file, validation unmaps what it mapped; the result is the in-memory path's, bit for bit."""
    rng = np.random.default_rng(3)
    src = tmp_path / "arrays"
    src.mkdir()
    np.save(src / "x.npy", rng.standard_normal((6000, 1024)).astype(np.float32))  # 22 MiB of training rows
    np.save(src / "y.npy", rng.integers(0, 2, 6000))
    home = prepare(_req("npy", path=str(src)), tmp_path / "cache")
    cfg = LoopConfig(kind="binary", num_classes=2, epochs=1, batch_size=100, learning_rate=0.1, seed=1)
    monkeypatch.setattr(prepared, "RESIDENT_BYTES", 8 << 20)
    released = []
    monkeypatch.setattr(prepared.MappedPages, "release", lambda self: released.append(self))  # keep what is mapped
    runs = {}
    for large in (False, True):
        monkeypatch.setattr(prepared, "_free_memory", lambda: 1 << 40 if not large else 1 << 20)
        ds = open_prepared(home)
        loop, hist = fit(cfg, ds)
        runs[large] = loop.get_params(), hist[0]["val_loss"]
        train = _mapped_bytes(home / "train-x.bin")
        if large:  # at most the folio of row 0 (the zero-gradient path's shape)
            assert loop.train_pages.active and train <= 2 << 20, train
            assert loop.val_pages in released  # validation's pages are given back
        else:
            assert not loop.train_pages.active and train >= 20 << 20, train
        del loop, ds
    for name, p in runs[False][0].items():  # the same data, the same result
        assert np.array_equal(p, runs[True][0][name]), name
    assert runs[False][1] == runs[True][1]


def test_read_rows_reads_a_map_without_mapping_it(tmp_path):
    x = np.arange(5000 * 512, dtype=np.float32).reshape(5000, 512)  # 10 MiB
    x.tofile(tmp_path / "x.bin")
    m = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=x.shape)
    rows = np.array([4999, 0, 2500, 2500, 17, 1234])
    got = prepared.read_rows(m, rows)
    assert np.array_equal(got, x[rows]) and got.dtype == np.float32 and not isinstance(got, np.memmap)
    assert _mapped_bytes(tmp_path / "x.bin") == 0
    assert np.array_equal(prepared.read_rows(x, rows), x[rows])  # a plain array: indexing
    u = np.arange(300 * 3, dtype=np.uint8).reshape(300, 3)
    u.tofile(tmp_path / "u.bin")
    mu = np.memmap(tmp_path / "u.bin", dtype=np.uint8, mode="r", shape=u.shape)
    assert np.array_equal(prepared.read_rows(mu, np.array([299, 1])), u[[299, 1]])
    assert prepared.read_rows(m, np.array([], dtype=np.int64)).shape == (0, 512)
    with pytest.raises(IndexError):
        prepared.read_rows(m, np.array([5000]))


# --------------------------------------------------------------------------- one pass over the rows
def _table_files(tmp_path, n=203, d=3, seed=5):
    """The same rows as a CSV, a folder of two Parquet files and an x.npy/y.npy folder;
    magnitudes from 1e-12 to 1e12, so that the order of the float64 sums shows in their
    last bits (float32 values of one magnitude add up exactly in float64)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * 10.0 ** rng.integers(-12, 13, (n, d))).astype(np.float32)
    y = rng.integers(0, 2, n)
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c,label\n" + "".join(",".join(repr(float(v)) for v in r) + f",{c}\n" for r, c in zip(x, y)))
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, (lo, hi) in enumerate(((0, 90), (90, n))):
        pq.write_table(pa.table({"a": x[lo:hi, 0], "b": x[lo:hi, 1], "c": x[lo:hi, 2], "label": y[lo:hi]}),
                       parts / f"p{i}.parquet")
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "x.npy", x)
    np.save(npy / "y.npy", y)
    return {"csv": csv, "parquet": parts, "npy": npy}, x, y


@pytest.mark.parametrize("source", ["csv", "parquet", "npy", "csv+val", "parquet+val"])
def test_statistics_summed_while_the_rows_are_written_equal_the_in_memory_ones(tmp_path, monkeypatch, source):
    """The first pass of the standardization statistics is taken while the training rows are
    written, in blocks of stats_rows(d) rows whatever pieces they arrive in: the same float64
    numbers as feature_stats over the rows in memory, and the file is read back only once."""
    from lr_core import data as data_module

    monkeypatch.setattr(data_module, "STATS_BYTES", 8 * 3 * 7)  # stats_rows(3) = 7: many statistics blocks
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 10)             # conversion blocks that cut across them
    monkeypatch.setattr(prepared, "SPLIT_BYTES", 4 * 3 * 13)    # and split pieces that cut across both
    files, _, _ = _table_files(tmp_path)
    fmt, _, val = source.partition("+")
    kw = {"val_path": str(files[fmt])} if val else {"val_fraction": 0.2}
    args = dict(kind="binary", num_classes=2, seed=7, path=str(files[fmt]), standardize=True, **kw)
    req = _req(fmt, **args)
    reads = []
    real_fromfile = np.fromfile
    monkeypatch.setattr(np, "fromfile", lambda f, *a, **k: reads.append(getattr(f, "name", f)) or
                        real_fromfile(f, *a, **k))
    prep = open_prepared(prepare(req, tmp_path / "cache"))
    mem = load_dataset(fmt, **args)
    assert prep.stats == mem.stats and len(prep.stats["mean"]) == 3
    train_reads = [r for r in reads if str(r).endswith("train-x.bin")]
    assert len(train_reads) == -(-len(mem.x_train) // 7)  # one pass of 7-row blocks, not two


@pytest.mark.parametrize("fmt", ["parquet", "npy", "csv"])
@pytest.mark.parametrize("fraction", [0.2, 0.01, 0.0])
def test_a_table_that_declares_its_rows_is_split_as_it_streams(tmp_path, monkeypatch, fmt, fraction):
    """Parquet and NPY declare their row count up front, a local CSV's rows are counted
    before it is read: the hold-out is known before the first row, so rows go straight to
    the train and validation files (no scratch file read back), and they are
    holdout_split's rows exactly."""
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 16)
    files, x, y = _table_files(tmp_path)
    monkeypatch.setattr(prepared, "_split", lambda *a, **k: pytest.fail("the scratch file was split"))
    ds = open_prepared(prepare(_req(fmt, path=str(files[fmt]), val_fraction=fraction, seed=3), tmp_path / "cache"))
    want = holdout_split(x, y.astype(np.int64), fraction, 3, "w")
    for got, w in zip((ds.x_train, ds.y_train, ds.x_val, ds.y_val), want):
        assert got.shape == w.shape and np.array_equal(got, w)


@pytest.mark.parametrize("declared", [202, 204])
def test_a_table_with_more_or_fewer_rows_than_it_declares_is_refused(tmp_path, monkeypatch, declared):
    """A file that holds other rows than its metadata declares (damaged, or changed while
    read) is one line, and nothing is left behind."""
    files, _, _ = _table_files(tmp_path)
    real = prepared.open_table

    def lying(*a, **k):
        t = real(*a, **k)
        t.rows = declared
        return t

    monkeypatch.setattr(prepared, "open_table", lying)
    text = _err(prepare, _req("parquet", path=str(files["parquet"])), tmp_path / "cache")
    assert text.startswith(f"{files['parquet']}: ") and f"than the {declared} its metadata declares" in text
    assert "write it again" in text
    assert not (tmp_path / "cache").exists()
    # a CSV that holds other rows than were counted before it was read (changed meanwhile)
    monkeypatch.setattr(prepared, "open_table", real)
    monkeypatch.setattr(tables, "_count_csv_rows", lambda *a: declared)
    text = _err(prepare, _req("csv", path=str(files["csv"])), tmp_path / "cache")
    assert text.startswith(f"{files['csv']}: ") and f"than the {declared} counted before it was read" in text
    assert "write it again" in text
    assert not (tmp_path / "cache").exists()
