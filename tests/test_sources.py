"""The data-source registry: every source's output, bit for bit, against an independent
reading of the same data; every declared rule enforced (one table over ``REGISTRY``); and a
source added in a test that loads and validates without touching ``lr_core.data``."""
import hashlib

import numpy as np
import pytest

from launcher.spec import spec_from_dict
from lr_core.config import MODEL_KINDS
from lr_core.data import (REGISTRY, SOURCES, Dataset, Option, Source, check_source_spec, data_home,
                          finish_labels, holdout_split, load_dataset, source_options)
from lr_core.errors import DataError, SpecError


def _fingerprint(x_train, y_train, x_val, y_val) -> str:
    h = hashlib.sha256()
    for a in (x_train, y_train, x_val, y_val):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _of(ds: Dataset) -> str:
    return _fingerprint(ds.x_train, ds.y_train, ds.x_val, ds.y_val)


def _held_out(x, y, fraction, seed):
    """The documented hold-out: a permutation from rng([seed, 0x5EED]); its first
    round(n * fraction) rows (at least one) validate; both parts keep file order."""
    n = len(x)
    n_val = max(int(round(n * fraction)), 1)
    perm = np.random.default_rng([seed, 0x5EED]).permutation(n)
    tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    return x[tr], y[tr], x[va], y[va]


# --------------------------------------------------------------------------- bit for bit
# Recorded from the previous implementation of lr_core.data (the if-chain in load_dataset)
# with _fingerprint above: (source, seed, options, label_map, sha256).
SYNTHETIC_FINGERPRINTS = [
    ("synthetic-binary", 12345, {}, None, "d957f93ed86564cc75484750123e6ea75e1c6090555921a3fa4b5a48d709108f"),
    ("synthetic-binary", 1, {"n_train": 33, "n_val": 7, "n_features": 3, "boundary": -0.5}, None,
     "bc8adfd1e2111cb8089ded845042dc34f3be114c6c0e87ec6fb1fd15e59521a1"),
    ("synthetic-binary", 5, {}, {0: 1, 1: 0}, "e9dab976f1d457c6e57acedb7dd5b26064b105eb401a0317a03d445b9abbbb33"),
    ("synthetic-blobs", 12345, {}, None, "fd03a5dc0495cfac50c6deedbc74f3ed89819a87ef41c4db420dfa30d81eb4fd"),
    ("synthetic-blobs", 1, {"n_train": 33, "n_val": 7, "n_features": 5, "separation": 1.5}, None,
     "924c221a2dd255d290fa1f0d40f7144d8babf2c0d9de68bda94eb19962078a56"),
]


def _synthetic_by_formula(source, seed, options, label_map):
    """The generators as README.md describes them, written out with numpy."""
    if source == "synthetic-binary":
        o = {"n_train": 1000, "n_val": 100, "n_features": 10, "boundary": 3.0, **options}
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((o["n_train"] + o["n_val"], o["n_features"])).astype(np.float32)
        y = (x.sum(axis=1) > o["boundary"]).astype(np.int64)
    else:
        o = {"n_train": 400, "n_val": 100, "n_features": 2, "separation": 4.0, **options}
        rng = np.random.default_rng(seed)
        n, d = o["n_train"] + o["n_val"], o["n_features"]
        y = rng.integers(0, 2, size=n).astype(np.int64)
        half = np.ones(d) / np.sqrt(d) * o["separation"] / 2
        x = (np.stack([-half, half])[y] + rng.standard_normal((n, d))).astype(np.float32)
    if label_map:
        y = np.array([label_map[int(v)] for v in y], dtype=np.int64)
    k = o["n_train"]
    return x[:k], y[:k], x[k:], y[k:]


@pytest.mark.parametrize("source,seed,options,label_map,expected", SYNTHETIC_FINGERPRINTS)
def test_synthetic_sources_are_unchanged(source, seed, options, label_map, expected):
    ds = load_dataset(source, kind="binary", num_classes=2, seed=seed, options=options, label_map=label_map)
    assert _of(ds) == _fingerprint(*_synthetic_by_formula(source, seed, options, label_map)) == expected
    assert ds.source == source and ds.val_name == "validation" and ds.image_shape is None


@pytest.mark.parametrize("seed,fraction", [(0, 0.1), (7, 0.33)])
def test_digits_match_scikit_learn_and_the_documented_hold_out(seed, fraction):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)
    ds = load_dataset("digits", kind="softmax", num_classes=10, seed=seed, val_fraction=fraction)
    assert _of(ds) == _fingerprint(*_held_out(x, y, fraction, seed))
    assert ds.image_shape == (8, 8) and ds.description == "scikit-learn 8x8 digits (1797 images)"
    binary = load_dataset("digits", kind="binary", num_classes=2, seed=seed, val_fraction=fraction,
                          label_map={i: int(i >= 5) for i in range(10)})
    assert _of(binary) == _fingerprint(*_held_out(x, (y >= 5).astype(np.int64), fraction, seed))


def _read_raw_idx(path, header):
    raw = path.read_bytes()
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range((header - 4) // 4)]
    return np.frombuffer(raw[header:], dtype=np.uint8).reshape(dims)


def _idx_by_hand(directory):
    """Images scaled by float32(1/255) and flattened; labels as int64; t10k validates."""
    images = {s: _read_raw_idx(directory / f"{s}-images-idx3-ubyte", 16) for s in ("train", "t10k")}
    labels = {s: _read_raw_idx(directory / f"{s}-labels-idx1-ubyte", 8) for s in ("train", "t10k")}
    scale = np.float32(1.0 / 255.0)
    x = {s: images[s].reshape(len(images[s]), -1).astype(np.float32) * scale for s in images}
    return x["train"], labels["train"].astype(np.int64), x["t10k"], labels["t10k"].astype(np.int64)


def test_mnist_cache_matches_the_idx_bytes():
    cache = data_home() / "mnist"
    # The install step builds the cache: its absence is a failure, never a skip.
    assert (cache / "t10k-labels-idx1-ubyte").is_file(), f"no MNIST cache in {cache}: run `make install`"
    ds = load_dataset("mnist", kind="softmax", num_classes=10, seed=0)
    expected = _idx_by_hand(cache)
    assert _of(ds) == _fingerprint(*expected)
    assert (ds.image_shape, ds.val_name, ds.description) == ((28, 28), "test", f"mnist from {cache}")
    binary = load_dataset("mnist", kind="binary", num_classes=2, seed=0, label_map={i: i % 2 for i in range(10)})
    x_tr, y_tr, x_va, y_va = expected
    assert _of(binary) == _fingerprint(x_tr, y_tr % 2, x_va, y_va % 2)


def test_fashion_mnist_reads_a_directory_of_idx_files(tmp_path):
    rng = np.random.default_rng(4)
    for split, n in (("train", 9), ("t10k", 4)):
        images = rng.integers(0, 256, (n, 5, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (tmp_path / f"{split}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape) + images.tobytes())
        (tmp_path / f"{split}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + labels.tobytes())
    ds = load_dataset("fashion-mnist", kind="softmax", num_classes=10, seed=0, path=str(tmp_path))
    assert _of(ds) == _fingerprint(*_idx_by_hand(tmp_path))
    assert ds.image_shape == (5, 3) and ds.source == "fashion-mnist"


def _table(n=23, d=3, seed=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, 3, n)


def _write_csv(path, x, y):
    lines = ["f0,f1,f2,label"] + [",".join(repr(float(v)) for v in row) + f",{c}" for row, c in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("source", ["csv", "npz"])
@pytest.mark.parametrize("seed,fraction", [(0, 0.1), (3, 0.4)])
def test_files_match_their_contents_and_the_documented_hold_out(tmp_path, source, seed, fraction):
    x, y = _table()
    if source == "csv":
        path = _write_csv(tmp_path / "d.csv", x, y)
    else:
        path = str(tmp_path / "d.npz")
        np.savez(path, x=x, y=y)
    ds = load_dataset(source, kind="softmax", num_classes=3, seed=seed, path=path, val_fraction=fraction)
    assert _of(ds) == _fingerprint(*_held_out(x.astype(np.float32), y.astype(np.int64), fraction, seed))
    assert ds.description == path and ds.extra == {"columns": ["f0", "f1", "f2"] if source == "csv" else []}


def test_a_validation_file_replaces_the_hold_out(tmp_path):
    x, y = _table()
    x_va, y_va = _table(n=5, seed=9)
    ds = load_dataset("csv", kind="binary", num_classes=2, seed=0, path=_write_csv(tmp_path / "tr.csv", x, y),
                      val_path=_write_csv(tmp_path / "va.csv", x_va, y_va), label_map={0: 0, 1: 1, 2: 1})
    to01 = np.array([0, 1, 1])
    assert _of(ds) == _fingerprint(x.astype(np.float32), to01[y], x_va.astype(np.float32), to01[y_va])


# --------------------------------------------------------------------------- declared rules
def _check(source, kind="binary", num_classes=2, path="/data/file", label_map=None, options=None):
    check_source_spec(source, kind=kind, num_classes=num_classes, path=path, label_map=label_map,
                      options=options or {})


def _bad_values(option: Option):
    bad = [True, "3", None, [1]]
    if option.type is int:
        bad += [2.5, 2.0]
    if option.positive:
        bad += [0, -1]
    return bad


def _assert_rules_enforced(src: Source):
    """Every rule ``src`` declares is what check_source_spec enforces, with its message."""
    kind = src.kinds[0]
    num_classes = src.classes or 2
    label_map = {0: 0} if kind == "binary" and (src.classes or 2) > 2 else None
    ok = dict(kind=kind, num_classes=num_classes, label_map=label_map)
    _check(src.name, **ok, options={k: o.default for k, o in src.options.items()})
    assert source_options(src.name) == set(src.options)
    with pytest.raises(SpecError, match=f"^data.options: unknown option 'zz_unknown' for source {src.name};"):
        _check(src.name, **ok, options={"zz_unknown": 1})
    for key, option in src.options.items():
        for value in _bad_values(option):
            with pytest.raises(SpecError) as err:
                _check(src.name, **ok, options={key: value})
            assert str(err.value) == f"data.options.{key} must be {option.expect}, got {value!r}"
    if src.needs_path:
        with pytest.raises(SpecError, match=f"^data.path: source {src.name} needs a file; set data.path$"):
            _check(src.name, **ok, path=None)
        with pytest.raises(DataError, match=f"^data.path: source {src.name} needs a file; set data.path$"):
            load_dataset(src.name, kind=kind, num_classes=num_classes, seed=0)
    else:
        _check(src.name, **ok, path=None)
    for other in MODEL_KINDS:
        if other not in src.kinds:
            with pytest.raises(SpecError, match=f"^model.kind: source {src.name} has .* labels; use model.kind"):
                _check(src.name, **{**ok, "kind": other, "num_classes": 10})
    if src.classes and "softmax" in src.kinds:
        _check(src.name, **{**ok, "kind": "softmax", "num_classes": src.classes, "label_map": None})
        with pytest.raises(SpecError) as err:
            _check(src.name, **{**ok, "kind": "softmax", "num_classes": src.classes - 1})
        assert str(err.value) == (f"model.num_classes: {src.name} has {src.classes} classes, got "
                                  f"{src.classes - 1}; set {src.classes}")
    if src.classes and src.classes > 2 and "binary" in src.kinds:
        _check(src.name, kind="binary", num_classes=2, label_map={0: 0})
        with pytest.raises(SpecError, match=f"^model.kind: {src.name} has {src.classes} classes; use kind: "
                                            f"softmax, or map them to 0/1 with data.label_map$"):
            _check(src.name, kind="binary", num_classes=2)


@pytest.mark.parametrize("name", SOURCES)
def test_every_registered_source_enforces_its_declared_rules(name):
    _assert_rules_enforced(REGISTRY[name])


@pytest.mark.parametrize("name", SOURCES)
def test_the_spec_checks_each_source_through_the_registry(name):
    src = REGISTRY[name]
    doc = {"model": {"kind": src.kinds[0], "num_classes": src.classes or 2},
           "data": {"source": name, "path": "/data/file", "options": {"zz_unknown": 1}},
           "resources": {"workers": 0}}
    if src.classes and src.kinds[0] == "binary":
        doc["data"]["label_map"] = {0: 0}
    with pytest.raises(SpecError, match=f"unknown option 'zz_unknown' for source {name}"):
        spec_from_dict(doc)
    doc["data"]["options"] = {}
    if src.needs_path:
        with pytest.raises(SpecError, match=f"source {name} needs a file"):
            spec_from_dict({**doc, "data": {**doc["data"], "path": None}})
    spec_from_dict(doc)  # and nothing else about the source stops a valid spec


def test_sources_lists_the_registry_in_the_documented_order():
    assert SOURCES == tuple(REGISTRY) == ("synthetic-binary", "synthetic-blobs", "mnist", "fashion-mnist",
                                          "digits", "csv", "npz", "parquet", "npy")
    assert all(name == src.name for name, src in REGISTRY.items())


# The messages users see, word for word as the spec has always written them.
SPEC_MESSAGES = [
    ({"data": {"options": {"n_train": 0.5}}}, "data.options.n_train must be an integer >= 1, got 0.5"),
    ({"data": {"options": {"boundary": "x"}}}, "data.options.boundary must be a finite number, got 'x'"),
    ({"data": {"source": "synthetic-blobs", "options": {"separation": 0}}},
     "data.options.separation must be a finite positive number, got 0"),
    ({"data": {"options": {"seperation": 1}}},
     "data.options: unknown option 'seperation' for source synthetic-binary; allowed: boundary, n_features, "
     "n_train, n_val"),
    ({"data": {"source": "synthetic-blobs", "options": {"seperation": 1}}},
     "data.options: unknown option 'seperation' for source synthetic-blobs; did you mean 'separation'?"),
    ({"model": {"kind": "softmax", "num_classes": 10}, "data": {"source": "digits", "options": {"n_train": 5}}},
     "data.options: unknown option 'n_train' for source digits; source digits takes no options"),
    ({"data": {"source": "npz"}}, "data.path: source npz needs a file; set data.path"),
    ({"model": {"kind": "softmax", "num_classes": 10}, "data": {"source": "synthetic-blobs"}},
     "model.kind: source synthetic-blobs has binary labels; use model.kind: binary"),
    ({"model": {"kind": "softmax", "num_classes": 5}, "data": {"source": "fashion-mnist"}},
     "model.num_classes: fashion-mnist has 10 classes, got 5; set 10"),
    ({"data": {"source": "mnist"}},
     "model.kind: mnist has 10 classes; use kind: softmax, or map them to 0/1 with data.label_map"),
]


@pytest.mark.parametrize("doc,message", SPEC_MESSAGES)
def test_source_rule_messages_are_word_for_word(doc, message):
    with pytest.raises(SpecError) as err:
        spec_from_dict(doc)
    assert str(err.value) == message


# --------------------------------------------------------------------------- a new source
def _load_toy(request):
    n = request.options["n"]
    x = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    (y,) = finish_labels(request, "toy data", np.arange(n) % 3)
    x_tr, y_tr, x_va, y_va = holdout_split(x, y, request.val_fraction, request.seed, "toy data")
    return Dataset(x_tr, y_tr, x_va, y_va, source=request.source, description=f"{n} toy rows")


TOY = Source("toy-three", _load_toy, options={"n": Option(int, 12, positive=True), "noise": Option(float, 0.0)},
             classes=3)
TOY_FILE = Source("toy-file", _load_toy, options={"n": Option(int, 4, positive=True)}, needs_path=True,
                  kinds=("softmax",))


@pytest.fixture
def toys(monkeypatch):
    for src in (TOY, TOY_FILE):
        monkeypatch.setitem(REGISTRY, src.name, src)


@pytest.mark.parametrize("src", [TOY, TOY_FILE], ids=lambda s: s.name)
def test_a_source_registered_in_a_test_has_its_rules_enforced(toys, src):
    _assert_rules_enforced(src)


def test_a_source_registered_in_a_test_loads_with_shared_label_finishing(toys):
    ds = load_dataset("toy-three", kind="softmax", num_classes=3, seed=0, val_fraction=0.25)
    assert (len(ds.x_train), len(ds.x_val), ds.description) == (9, 3, "12 toy rows")
    assert load_dataset("toy-three", kind="softmax", num_classes=3, seed=0, options={"n": 8}).nbytes < ds.nbytes
    binary = load_dataset("toy-three", kind="binary", num_classes=2, seed=0, label_map={0: 0, 1: 1, 2: 1})
    assert set(np.concatenate([binary.y_train, binary.y_val]).tolist()) == {0, 1}
    with pytest.raises(DataError, match=r"^toy data: row 3: label 2 is not in data.label_map"):
        load_dataset("toy-three", kind="binary", num_classes=2, seed=0, label_map={0: 0, 1: 1})
    with pytest.raises(DataError, match=r"^toy data: softmax labels must be integers in \[0, 2\)"):
        load_dataset("toy-three", kind="softmax", num_classes=2, seed=0)
    with pytest.raises(DataError, match="^data.path: source toy-file needs a file"):
        load_dataset("toy-file", kind="softmax", num_classes=3, seed=0)
    assert len(load_dataset("toy-file", kind="softmax", num_classes=3, seed=0, path="unused").y_train) == 3


def test_an_unknown_source_names_the_registered_ones(toys):
    with pytest.raises(DataError, match="^data.source: unknown source 'nope'; choose one of synthetic-binary, "
                                        ".*, npz, parquet, npy, toy-three, toy-file$"):
        load_dataset("nope", kind="binary", num_classes=2, seed=0)
    with pytest.raises(SpecError, match="^data.source: unknown source 'nope'"):
        _check("nope")


def test_finish_labels_maps_every_array_before_checking_any():
    from lr_core.data import LoadRequest

    request = LoadRequest("x", kind="binary", num_classes=2, seed=0, label_map={0: 5})
    # The first array maps fine but checks badly; the second lacks a label in the map.
    with pytest.raises(DataError, match="row 2: label 1 is not in data.label_map"):
        finish_labels(request, "here", np.array([0, 0]), np.array([0, 1]))


def test_an_unknown_source_in_the_spec_names_every_source():
    with pytest.raises(SpecError) as err:
        _check("nope")
    assert str(err.value) == ("data.source: unknown source 'nope'; choose one of synthetic-binary, synthetic-blobs, "
                              "mnist, fashion-mnist, digits, csv, npz, parquet, npy")
    assert source_options("nope") == set()


def test_a_kind_the_source_lacks_is_named_with_every_kind_it_has():
    with pytest.raises(SpecError) as err:
        _check("csv", kind="poisson")
    assert str(err.value) == "model.kind: source csv has binary/softmax labels; use model.kind: binary or softmax"


def test_a_two_class_source_suits_a_binary_model_without_a_label_map(monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy-two", Source("toy-two", _load_toy, classes=2))
    _check("toy-two", kind="binary", num_classes=2)


@pytest.mark.parametrize("option,value", [(Option(int, 1, positive=True), 1),
                                          (Option(float, 1.0, positive=True), 0.5)])
def test_a_positive_option_takes_its_smallest_values(option, value):
    assert option.accepts(value) and not option.accepts(0)
