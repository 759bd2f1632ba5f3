"""Prepared datasets (lr_core/prepared.py): converted once in bounded blocks, content
addressed, checked shard by shard, memory-mapped by workers, and equal to the in-memory
data, so training from them gives exactly the in-memory result."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is in requirements.txt; .ci/install installs it")
import pyarrow.parquet as pq  # noqa: E402

from lr_core import prepared  # noqa: E402
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
    rng = np.random.default_rng(0)
    src = tmp_path / "idx"
    src.mkdir()
    for split, n in (("train", 120), ("t10k", 30)):
        write_idx(src / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 4, 4)))
        write_idx(src / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
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
        prepare(_req(path=str(path)), cache)
    assert list(cache.iterdir()) == []
    bad_label = _csv(tmp_path / "e.csv")
    bad_label.write_text(bad_label.read_text().replace(",1\n", ",5\n", 1))
    with pytest.raises(DataError, match=r"binary labels must be exactly 0 or 1, found \[0, 1, 5\] \(first at row"):
        prepare(_req(path=str(bad_label)), cache)
    assert list(cache.iterdir()) == []


def test_label_errors_name_the_file_row_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "BLOCK_ROWS", 16)
    path = _csv(tmp_path / "d.csv")
    lines = path.read_text().splitlines()
    lines[101] = lines[101].rsplit(",", 1)[0] + ",7"  # data row 101
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"\(first at row 101\)"):
        prepare(_req(path=str(path)), tmp_path / "cache")


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
@pytest.mark.parametrize("free,advice", [(4 * 2880 + 4, "MADV_WILLNEED"), (4 * 2880 - 4, "MADV_RANDOM")])
def test_training_features_are_read_ahead_only_when_they_fit(tmp_path, monkeypatch, free, advice):
    import mmap

    home = prepare(_req(path=str(_csv(tmp_path / "d.csv"))), tmp_path / "cache")
    given = []
    monkeypatch.setattr(prepared, "_free_memory", lambda: free)
    real = np.memmap

    def recording_memmap(*a, **kw):
        m = real(*a, **kw)
        m._mmap = type("M", (), {"madvise": lambda self, flag: given.append(flag)})()
        return m

    monkeypatch.setattr(prepared.np, "memmap", recording_memmap)
    open_prepared(home)
    assert given == [getattr(mmap, advice)]
