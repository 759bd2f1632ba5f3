"""``lr_core.data``'s standardization statistics (docs/design.md#standardization), the
columns ``data.features`` picks and the finite-value check, where `make mutants` found
the fast tests silent: they loaded standardized tables but never looked at the numbers;
and the test labels of an IDX set, and the IDX reader's bounds on memory; the bounds on
``data.options`` and on the values a synthetic source generates, data.standardize's default,
and the rows ``Dataset.features`` hands to the model.

The rows below are chosen so that every sum is exact in float64: the statistics are
asserted exactly, whatever the order the blocks are added in."""
import gzip
import tracemalloc

import numpy as np
import pytest

from lr_core import data as data_module
from lr_core.data import (MAX_SYNTHETIC_VALUES, REGISTRY, STATS_BYTES, BlockSums, DataError, Dataset, Option, Source,
                          array_blocks, check_features, check_source_spec, feature_stats, finish_labels, load_dataset,
                          make_request, read_idx, standardizer, stats_rows, write_idx)
from lr_core.errors import SpecError

T = 2.0 ** -66  # about 1.4e-20: a float32 far below 1e-12, whose squares and their means stay exact

# Four features over six rows: std 1 around 2; a constant; std T around 0 (a spread, not a
# constant: only float64 rounding would be); std 2 around -12.
ROWS = np.array([[1, 5, -T, -10], [3, 5, T, -14]] * 3, dtype=np.float32)
STATS = {"mean": [2.0, 5.0, 0.0, -12.0], "std": [1.0, 1.0, T, 2.0], "constant": [1]}


def _blocks(*parts):
    return lambda: iter(parts)


def test_the_statistics_of_rows_in_blocks_of_any_size():
    """Exact mean, population std and constant features, whether the rows come in one
    block, in blocks that grow (the reused buffer must grow with them) or in blocks that
    shrink; a constant feature keeps std 1."""
    assert feature_stats(_blocks(ROWS)) == STATS
    assert feature_stats(_blocks(ROWS[:1], ROWS[1:4], ROWS[4:])) == STATS
    assert feature_stats(_blocks(ROWS[:4], ROWS[4:5], ROWS[5:])) == STATS
    assert feature_stats(_blocks(*ROWS[:, None, :])) == STATS  # one row at a time


def test_the_first_pass_taken_while_the_rows_were_written():
    """``sums`` from :class:`BlockSums` (fed in pieces that cut across its blocks) replace
    the first pass: the same numbers as two passes over the rows."""
    sums = BlockSums(4)
    for piece in (ROWS[:1], ROWS[1:4], ROWS[4:]):
        sums.add(piece)
    n, total = sums.result()
    assert n == 6 and total.tolist() == [12.0, 30.0, 0.0, -72.0]
    assert feature_stats(_blocks(ROWS[:2], ROWS[2:]), sums=(n, total)) == STATS


def test_block_sums_add_in_the_blocks_of_feature_stats_whatever_the_pieces(monkeypatch):
    """Rows fed to :class:`BlockSums` one at a time, or in pieces that cut across its
    blocks of stats_rows(d) rows, are summed in those blocks: the same float64 bits as
    feature_stats' own first pass (random values: another grouping rounds differently)."""
    monkeypatch.setattr(data_module, "STATS_BYTES", 8 * 4 * 3)  # stats_rows(4) = 3
    x = np.random.default_rng(0).normal(3.0, 2.0, (20, 4)).astype(np.float32)
    want = feature_stats(array_blocks(x))
    for pieces in ([1] * 20, [5, 1, 7, 2, 5], [20]):
        sums = BlockSums(4)
        for a, b in zip(np.cumsum([0] + pieces[:-1]), np.cumsum(pieces)):
            sums.add(x[a:b])
        n, total = sums.result()
        assert n == 20 and feature_stats(array_blocks(x), sums=(n, total)) == want, pieces
    raw = np.random.default_rng(1).integers(0, 256, (10, 4), dtype=np.uint8)
    sums = BlockSums(4, 1 / 255)
    sums.add(raw[:4])
    sums.add(raw[4:])
    assert feature_stats(array_blocks(raw), 1 / 255, sums.result()) == feature_stats(array_blocks(raw), 1 / 255)
    assert feature_stats(array_blocks(raw), 1 / 255) != feature_stats(array_blocks(raw))


def test_the_standardizer_is_the_mean_and_the_inverse_std_in_float32():
    """1 / std is taken in float64, then rounded once to float32."""
    mean, inv_std = standardizer({"mean": [2.0, -12.0, 0.1], "std": [1.0, 4.0, 3.0], "constant": [0]})
    assert mean.dtype == inv_std.dtype == np.float32
    assert mean.tolist() == [2.0, -12.0, float(np.float32(0.1))]
    assert inv_std.tolist() == [1.0, 0.25, float(np.float32(1 / 3))]
    # an integer mean (meta.json written by hand) is a float64 first, then a float32: 2**53 + 2**29 + 1
    # becomes 2**53 (a float32 straight from the integer would be 2**53 + 2**30)
    mean, _ = standardizer({"mean": [2 ** 53 + 2 ** 29 + 1], "std": [1]})
    assert mean.tolist() == [2.0 ** 53]


def test_scaled_rows_are_multiplied_in_float32_before_the_statistics():
    """uint8 rows with ``scale`` are ``float32(x) * float32(scale)``, as the model sees them
    (``Dataset.features``): the statistics of 0/4 times 0.5 are those of 0/2."""
    raw = np.array([[0, 2], [4, 2]] * 2, dtype=np.uint8)
    assert feature_stats(_blocks(raw), 0.5) == {"mean": [1.0, 1.0], "std": [1.0, 1.0], "constant": [1]}
    # the product is taken in float32 whatever the stored type: 1/3 times 3 rounds in float32
    third = np.array([[1 / 3], [1 / 3 + 3e-9]], dtype=np.float64)  # one float32 value, two float64 ones
    seen = third.astype(np.float32) * np.float32(3.0)
    assert feature_stats(_blocks(third), 3.0) == {"mean": [float(seen[0, 0])], "std": [1.0], "constant": [0]}


def test_a_spread_of_exactly_1e_12_of_the_mean_counts_as_constant():
    """The constant test is strict: std must exceed 1e-12 of the mean's magnitude; rows
    1e12 - 1 and 1e12 + 1 (float64 blocks) have std 1 = 1e-12 * 1e12, a constant."""
    x = np.array([[1e12 - 1, 1.0], [1e12 + 1, 3.0]])
    assert feature_stats(_blocks(x)) == {"mean": [1e12, 2.0], "std": [1.0, 1.0], "constant": [0]}


def test_no_rows_to_standardize():
    with pytest.raises(DataError) as e:
        feature_stats(_blocks())
    assert str(e.value) == "no training rows to standardize"


def test_the_block_buffer_is_allocated_once(monkeypatch):
    """Memory: one float64 block, reused for every block of the same size, in both passes
    (a new buffer per block would hold two at once while the previous one is in use)."""
    block = 8 * 8 * 16384
    monkeypatch.setattr(data_module, "STATS_BYTES", block)  # 1 MB blocks of 16384 rows
    x = np.arange(3 * 16384 * 8, dtype=np.float32).reshape(-1, 8) % 7
    blocks = array_blocks(x)
    tracemalloc.start()
    try:
        feature_stats(blocks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # and NumPy's casting buffer (8192 items, 64 KB) for the float32 to float64 copy
    assert block <= peak < 1.25 * block, peak


def test_stats_rows_is_a_function_of_the_width_alone():
    assert STATS_BYTES == 1 << 23
    assert [stats_rows(d) for d in (0, 1, 2, 3, 1 << 20, (1 << 20) + 1, 10 ** 9)] == [
        1 << 20, 1 << 20, 1 << 19, 349525, 1, 1, 1]


def test_array_blocks_cut_the_rows_in_blocks_of_stats_rows(monkeypatch):
    monkeypatch.setattr(data_module, "STATS_BYTES", 8 * 6)  # stats_rows(1) = 6, (2) = 3, (3) = 2
    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    got = list(array_blocks(x)())
    assert [len(b) for b in got] == [2, 2, 2, 1] and np.array_equal(np.concatenate(got), x)
    assert [b.tolist() for b in array_blocks(np.arange(8.0))()] == [[0, 1, 2, 3, 4, 5], [6, 7]]


def _table(tmp_path, header, rows):
    p = tmp_path / "t.csv"
    p.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return str(p)


def test_data_features_picks_the_columns_in_their_order(tmp_path):
    path = _table(tmp_path, ["a", "b", "label", "c"], [[1, 2, 0, 3], [4, 5, 1, 6], [7, 8, 0, 9], [1, 1, 1, 1]])
    kw = dict(kind="binary", num_classes=2, seed=0, path=path, val_fraction=0.0, standardize=False)
    ds = load_dataset("csv", features=["c", "a"], **kw)
    assert ds.extra["columns"] == ["c", "a"] and ds.x_train.tolist() == [[3, 1], [6, 4], [9, 7], [1, 1]]
    ds = load_dataset("csv", features=["b"], **kw)
    assert ds.extra["columns"] == ["b"] and ds.x_train.tolist() == [[2], [5], [8], [1]]
    ds = load_dataset("csv", **kw)
    assert ds.extra["columns"] == ["a", "b", "c"] and ds.x_train.shape == (4, 3) and ds.stats is None


def test_a_standardized_table_carries_its_training_statistics(tmp_path):
    path = _table(tmp_path, ["a", "b", "label"], [[1, 5, 0], [3, 5, 1], [1, 5, 1], [3, 5, 0]])
    ds = load_dataset("csv", kind="binary", num_classes=2, seed=0, path=path, val_fraction=0.0, standardize=True)
    assert ds.stats == {"mean": [2.0, 5.0], "std": [1.0, 1.0], "constant": [1]}


def test_a_bad_label_of_a_block_is_named_by_its_row_in_the_file():
    """A block of labels (rows 11 to 13 of its file) names the file's row, not the block's: a label the
    map lacks, and a label that is not a class."""
    request = make_request("csv", kind="binary", num_classes=2, seed=0, path="d.csv", label_map={"a": 0, "b": 1})
    with pytest.raises(DataError) as e:
        finish_labels(request, "d.csv", np.array(["a", "c", "b"]), offset=10)
    assert str(e.value) == "d.csv: row 12: label 'c' is not in data.label_map {'a': 0, 'b': 1}; fix the row, or add the label to the map (before training)"
    request = make_request("csv", kind="binary", num_classes=2, seed=0, path="d.csv")
    with pytest.raises(DataError) as e:
        finish_labels(request, "d.csv", np.array([0, 1, 7]), offset=10)
    assert str(e.value) == "d.csv: binary labels must be exactly 0 or 1, found [0, 1, 7] (first at row 13)"


def test_long_text_labels_are_cut_in_the_message():
    request = make_request("csv", kind="binary", num_classes=2, seed=0, path="d.csv")
    with pytest.raises(DataError) as e:
        finish_labels(request, "d.csv", np.array(["a_label_that_is_a_whole_sentence_of_text_not_a_number", "b"]))
    assert str(e.value) == ("d.csv: labels must be numbers, found ['a_label_that_is_a_who... (53 characters)', "
                            "'b']; map them with data.label_map, e.g. {'a_label_that_is_a_who... (53 characters)'"
                            ": 0, ...}")


def test_a_float_option_must_be_finite_as_a_float():
    number = Option(float, 3.0)
    assert [number.accepts(v) for v in (2, -2.5, 0.0, float("inf"), float("-inf"), float("nan"), 10 ** 400)] == [
        True, True, True, False, False, False, False]
    count = Option(int, 10, True)
    assert [count.accepts(v) for v in (10 ** 400, 1, 0, 2.0, True)] == [True, True, False, False, False]
    with pytest.raises(DataError) as e:
        make_request("synthetic-binary", kind="binary", num_classes=2, seed=0, options={"boundary": float("inf")})
    assert str(e.value) == "data.options.boundary must be a finite number, got inf"


def test_a_long_column_name_is_cut_in_the_not_finite_message():
    name = "a_feature_with_a_rather_long_descriptive_name_0123456789"
    x = np.array([[1.0, np.nan]], dtype=np.float32)
    with pytest.raises(DataError) as e:
        check_features(x, "t.csv", columns=["ok", name])
    assert str(e.value) == ("t.csv: row 1, a_feature_with_a_rath... (56 characters): value nan is not finite "
                            "(NaN or inf); clean or impute it first (1 such values)")


def _idx_set(folder, train_labels, test_labels):
    folder.mkdir()
    for split, labels in (("train", train_labels), ("t10k", test_labels)):
        write_idx(folder / f"{split}-images-idx3-ubyte", np.zeros((len(labels), 2, 2), np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", np.array(labels))
    return str(folder)


def test_data_label_map_applies_to_the_test_labels_of_an_idx_set(tmp_path):
    path = _idx_set(tmp_path / "idx", [0, 1, 2, 3, 4], [3, 8, 5, 2])
    ds = load_dataset("fashion-mnist", kind="binary", num_classes=2, seed=0, path=path,
                      label_map={v: v % 2 for v in range(10)})
    assert ds.y_train.tolist() == [0, 1, 0, 1, 0] and ds.y_val.tolist() == [1, 0, 1, 0]
    assert ds.y_train.dtype == ds.y_val.dtype == np.int64


def _gz_idx(path, dims, body: bytes):
    header = bytes([0, 0, 0x08, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + body))
    return path


def test_a_padded_gzip_idx_stream_is_decompressed_no_further_than_declared(tmp_path):
    """A gzip stream longer than its header declares (here 16 MB of zeros, 16 KB on disk)
    is refused after one byte past the declared body: it is never decompressed whole."""
    p = _gz_idx(tmp_path / "f.gz", (2, 3), bytes(6 + (16 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            read_idx(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(e.value) == (f"{p}: truncated or padded IDX file: dimensions (2, 3) need 18 bytes, found more "
                            f"than 18; download the file again")
    assert peak < 1 << 20, peak


def test_an_idx_file_larger_than_the_memory_left_is_a_data_error(tmp_path, monkeypatch):
    """A gzip IDX whose header declares 1.5 GB (within MAX_IDX_BYTES) while the memory left
    holds less (here: a read of more than 256 MB raises MemoryError, as it does when the
    allocation fails): one line naming the file, not a MemoryError."""
    p = _gz_idx(tmp_path / "big.gz", (1500, 1000, 1000), bytes(100))
    real_open, sizes = gzip.open, []

    class LittleMemory:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            sizes.append(n)
            if n is None or n < 0 or n > 256 << 20:
                raise MemoryError
            return self.f.read(n)

    monkeypatch.setattr(data_module.gzip, "open", lambda *a, **k: LittleMemory(real_open(*a, **k)))
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert sizes[-1] == 1500 * 1000 * 1000 + 1  # the body's bytes (and one more), in one read
    assert str(e.value) == f"{p}: not enough memory to read this IDX file; free memory or use a smaller file"
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_dataset_pickles_as_its_rows_or_as_its_prepared_folder(tmp_path):
    """In memory, a Dataset pickles whole; prepared, it travels as its folder and origin: a
    process that does not see the folder (here: removed) prepares its own copy from the origin."""
    import pickle
    import shutil

    from lr_core.prepared import prepared_dataset, reopen

    path = _table(tmp_path, ["a", "b", "label"], [[1, 5, 0], [3, 5, 1], [1, 6, 1], [3, 5, 0]])
    kw = dict(kind="binary", num_classes=2, seed=0, path=path, val_fraction=0.25)
    ds = load_dataset("csv", **kw)
    again = pickle.loads(pickle.dumps(ds))
    assert again.home is None and again.x_train.tolist() == ds.x_train.tolist() and again.stats == ds.stats
    prepared = prepared_dataset(make_request("csv", **kw), tmp_path / "cache")
    blob = pickle.dumps(prepared)
    assert prepared.__reduce_ex__(4) == (reopen, (prepared.home, prepared.extra["origin"]))  # a path, not the rows
    shutil.rmtree(prepared.home)
    there = pickle.loads(blob)
    assert there.x_train.tolist() == ds.x_train.tolist() and there.y_val.tolist() == ds.y_val.tolist()
    assert there.extra["origin"][2] == prepared.extra["origin"][2]


# --------------------------------------------------------------------------- data.options' bounds
COUNTS = ("n_train", "n_val", "n_features")


def _check_options(source, options):
    check_source_spec(source, kind="binary", num_classes=2, path=None, label_map=None, options=options)


def test_a_count_option_may_equal_its_upper_bound_and_no_more():
    """``Option.most`` is inclusive: the bound itself passes, one more is refused in one line
    with the bound and the value (the other counts at 1, so their product stays small)."""
    bounded = [(name, key, o.most) for name, src in REGISTRY.items() for key, o in src.options.items()
               if o.most is not None]
    assert {key for _, key, _ in bounded} == set(COUNTS)
    for name, key, most in bounded:
        small = {k: 1 for k in COUNTS}
        _check_options(name, {**small, key: most})
        with pytest.raises(SpecError) as e:
            _check_options(name, {**small, key: most + 1})
        assert str(e.value) == (f"data.options.{key} must be at most {most:,} (the upper bound), got {most + 1}; "
                                f"check for a typo"), (name, key)


def _too_many_values(values):
    return (f"data.options: (n_train + n_val) x n_features = {values:,} values, more than the "
            f"{MAX_SYNTHETIC_VALUES:,} (1 GiB) a synthetic source generates in memory; lower them")


def test_the_values_a_synthetic_source_generates_are_bounded(monkeypatch):
    """(n_train + n_val) x n_features may reach MAX_SYNTHETIC_VALUES and no more, for every
    source that takes the three counts (one that takes only them too); an option left out
    counts with its default."""
    counts = {k: REGISTRY["synthetic-binary"].options[k] for k in COUNTS}
    monkeypatch.setitem(REGISTRY, "counts-only", Source("counts-only", REGISTRY["synthetic-binary"].load,
                                                        options=counts, kinds=("binary",)))
    sources = [name for name, src in REGISTRY.items() if src.options.keys() >= set(COUNTS)]
    assert len(sources) == 3, sources  # the two synthetic sources and counts-only
    d = 1 << 14
    rows = MAX_SYNTHETIC_VALUES // d
    assert rows * d == MAX_SYNTHETIC_VALUES
    for name in sources:
        _check_options(name, {"n_train": rows - 3, "n_val": 3, "n_features": d})  # exactly the bound
        with pytest.raises(SpecError) as e:
            _check_options(name, {"n_train": rows - 2, "n_val": 3, "n_features": d})
        assert str(e.value) == _too_many_values((rows + 1) * d), name
        src = REGISTRY[name]
        widest = src.options["n_features"].most
        with pytest.raises(SpecError) as e:
            _check_options(name, {"n_features": widest})
        default_rows = src.options["n_train"].default + src.options["n_val"].default
        assert str(e.value) == _too_many_values(default_rows * widest), name


def test_data_standardize_defaults_to_the_sources_and_is_overridden_by_the_job():
    """data.standardize unset: the source's default (tables on, images and synthetic data off);
    set: the job's, as a bool."""
    defaults = set()
    for name, src in REGISTRY.items():
        kw = dict(kind="binary", num_classes=2, seed=0, path="d.csv" if src.needs_path else None)
        assert make_request(name, **kw).standardize is src.standardize, name
        defaults.add(src.standardize)
        assert make_request(name, standardize=not src.standardize, **kw).standardize is (not src.standardize)
        assert make_request(name, standardize=0, **kw).standardize is False
    assert defaults == {True, False}


# --------------------------------------------------------------------------- the rows the model sees
def _dataset(x, **kw):
    y = np.zeros(len(x), dtype=np.int64)
    return Dataset(x, y, x, y, source="t", **kw)


def test_float32_rows_are_handed_over_as_they_are():
    """No scale, no statistics: float32 rows are the features themselves, not a copy (an
    evaluation block is not copied twice)."""
    x = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=np.float32)
    got = _dataset(x).features(x)
    assert got.dtype == np.float32 and got.tolist() == x.tolist() and np.shares_memory(got, x)


def test_other_rows_become_float32_scaled_and_standardized():
    """float64 rows are cast to float32; uint8 rows are float32(x) * float32(scale); with
    statistics, (x - mean) * (1 / std), in float32."""
    x64 = np.array([[0.1, -2.0]])
    got = _dataset(x64).features(x64)
    assert got.dtype == np.float32 and got.tolist() == x64.astype(np.float32).tolist()
    raw = np.array([[0, 2], [4, 6]], dtype=np.uint8)
    got = _dataset(raw, scale=0.5).features(raw)
    assert got.dtype == np.float32 and got.tolist() == [[0, 1], [2, 3]]
    stats = {"mean": [2.0, -12.0], "std": [1.0, 4.0], "constant": []}
    x = np.array([[3, -4], [1, -20]], dtype=np.float32)
    got = _dataset(x, stats=stats).features(x)
    assert got.dtype == np.float32 and got.tolist() == [[1, 2], [-1, -2]]
    got = _dataset(raw, scale=0.5, stats=stats).features(raw)
    assert got.dtype == np.float32 and got.tolist() == [[-2, 3.25], [0, 3.75]]


def test_a_std_too_small_for_float32_counts_as_constant_and_every_other_is_served():
    """Standardization multiplies by 1 / std in float32: a column whose std is below MIN_STD
    (1 / float32's largest) is constant (std 1), one just above it keeps its std, and the
    statistics training computes are always ones an export accepts."""
    from lr_core.data import MIN_STD, array_blocks, feature_stats, standardizer
    from lr_core.export import _check_standardize

    x = np.zeros((3, 3), dtype=np.float32)
    x[1] = [2e-39, 2e-38, 1.0]  # stds 9.4e-40 (below MIN_STD), 9.4e-39 and 0.47
    stats = feature_stats(array_blocks(x))
    assert stats["constant"] == [0]
    assert stats["std"][0] == 1.0 and MIN_STD <= stats["std"][1] < np.finfo(np.float32).tiny
    assert np.isfinite(standardizer(stats)[1]).all()
    _check_standardize({"num_features": 3, "standardize": stats})


def test_a_std_of_exactly_min_std_is_kept():
    """MIN_STD is the smallest usable std, itself included (float64 rows, which give exactly it)."""
    from lr_core.data import MIN_STD, array_blocks, feature_stats

    stats = feature_stats(array_blocks(np.array([[0.0], [2 * MIN_STD]])))
    assert stats["std"] == [MIN_STD] and stats["constant"] == []


def test_an_integer_label_out_of_range_is_named_exactly_however_large():
    """Labels are judged as stored: a whole number past float64's exact integers (2**53) is
    listed as it is, not as the nearest float64."""
    from lr_core.data import check_labels

    big = 2**53 + 1
    with pytest.raises(DataError) as e:
        check_labels(np.array([0, 1, big], dtype=np.int64), "binary", 2, "labels.npy")
    assert f"found [0, 1, {big}] (first at row 3)" in str(e.value)
    with pytest.raises(DataError) as e:
        check_labels(np.array([0, big], dtype=np.int64), "softmax", 3, "labels.npy")
    assert f"found [{big}] (first at row 2)" in str(e.value)
    # valid labels of every stored type come back as int64
    for dtype in (np.int64, np.uint8, np.float32, np.float64, bool):
        out = check_labels(np.array([0, 1, 1], dtype=dtype), "binary", 2, "labels.npy")
        assert out.dtype == np.int64 and out.tolist() == [0, 1, 1]
