"""Standardized features (docs/design.md#standardization) and class weights
(docs/design.md#class-weights): the statistics come from the training rows only, are the
same numbers in memory and prepared, train the model the float64 oracle trains on
standardized features, travel in the export, and make an unscaled CSV train as well as
scikit-learn's ``make_pipeline(StandardScaler(), LogisticRegression())``."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import oracle
from launcher.cli import main
from launcher.driver import run_job
from launcher.spec import load_spec
from lr_core.config import LoopConfig
from lr_core.errors import SpecError
from lr_core.loop import fit
from lr_core.models import initial_parameters
from lr_core.sharding import epoch_permutation

COLUMNS = ("age", "income", "score", "tenure")


def people(n: int, seed: int = 7):
    """The user's table: age ~ N(40, 10), income ~ N(50000, 15000), two more features, a
    logistic yes/no label."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(40, 10, n), rng.normal(50_000, 15_000, n), rng.normal(0, 1, n),
                         rng.normal(5, 2, n)])
    z = 0.15 * (x[:, 0] - 40) + 1e-4 * (x[:, 1] - 50_000) + 1.2 * x[:, 2] - 0.6 * (x[:, 3] - 5)
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    return x, y


def write_people(path, n=500, seed=7, shift=0.0, constant=False):
    x, y = people(n, seed)
    cols = list(COLUMNS) + (["site"] if constant else [])
    with open(path, "w") as f:
        f.write(",".join(cols) + ",label\n")
        for row, label in zip(x, y):
            extra = ",3.5" if constant else ""
            f.write(f"{row[0] + shift:.1f},{row[1]:.0f},{row[2]:.4f},{row[3]:.3f}{extra},{'yes' if label else 'no'}\n")
    return path


def job(tmp_path, *overrides, csv=None):
    csv = csv or write_people(tmp_path / "people.csv")
    (tmp_path / "job.yaml").write_text(
        f"name: people\nmodel: {{kind: binary}}\n"
        f"data: {{source: csv, path: {csv}, label_map: {{'yes': 1, 'no': 0}}, cache: {tmp_path / 'cache'}}}\n"
        f"resources: {{workers: 0}}\n")
    return load_spec(tmp_path / "job.yaml", list(overrides))


def test_statistics_are_the_training_rows_own_the_same_in_memory_and_prepared(tmp_path):
    val = write_people(tmp_path / "val.csv", n=80, seed=8, shift=1000.0)  # validation ages ~1040
    spec = job(tmp_path, f"data.val_path={val}")
    mem, prep = spec.load_data(), spec.prepared_data()
    x = np.asarray(mem.x_train, dtype=np.float64)
    assert mem.stats == prep.stats  # the same float64 numbers, whichever way the data was read
    np.testing.assert_allclose(mem.stats["mean"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(mem.stats["std"], x.std(axis=0), rtol=1e-12)  # population std, as StandardScaler
    assert 30 < mem.stats["mean"][0] < 50, "validation rows must not enter the statistics"
    assert mem.stats["constant"] == []
    manifest = json.loads((Path(prep.home) / "manifest.json").read_text())
    assert manifest["stats"] == prep.stats
    # what a worker receives: the pickled prepared set reopens with the same numbers
    assert pickle.loads(pickle.dumps(prep)).stats == prep.stats
    # the model sees (x - mean) / std
    z = prep.features(prep.x_train)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)


def test_the_source_decides_by_default_and_the_spec_overrides(tmp_path):
    assert job(tmp_path).data.standardizes
    assert not job(tmp_path, "data.standardize=false").data.standardizes
    assert job(tmp_path, "data.standardize=false").load_data().stats is None
    digits = load_spec("jobs/digits_softmax.yaml")
    assert not digits.data.standardizes and digits.load_data().stats is None  # pixels keep their scale
    assert not load_spec("jobs/binary_2d.yaml").data.standardizes
    assert load_spec("jobs/digits_softmax.yaml", ["data.standardize=true"]).load_data().stats is not None
    with pytest.raises(SpecError, match=r"data.standardize must be true or false, got 'maybe'"):
        job(tmp_path, "data.standardize=maybe")


CLASS_WEIGHTS = [None, "balanced", {"yes": 3.0}]


@pytest.mark.parametrize("class_weight", CLASS_WEIGHTS, ids=["unweighted", "balanced", "yes-3"])
def test_training_matches_the_oracle_on_standardized_weighted_rows(tmp_path, class_weight):
    """3 epochs of 61 rows in batches of 8 (a short last batch): the loop's parameters and
    train_loss equal the float64 oracle's on (x - mean) / std, each row's loss times its
    class's weight, the gradient sum divided by the batch's row count."""
    overrides = ["train.epochs=3", "train.batch_size=8", "data.val_fraction=0.1"]
    if class_weight is not None:
        overrides.append(f"train.class_weight={json.dumps(class_weight)}")
    spec = job(tmp_path, *overrides, csv=write_people(tmp_path / "p.csv", n=68, seed=3))
    data = spec.load_data()
    cfg = spec.loop_config()
    loop, history = fit(cfg, data)

    x = (np.asarray(data.x_train, np.float64) - data.stats["mean"]) / np.asarray(data.stats["std"])
    y = data.y_train
    if class_weight is None:
        weights = None
    elif class_weight == "balanced":
        weights = (len(y) / (2 * np.bincount(y, minlength=2)))[y]  # scikit-learn's n / (k * count)
    else:
        weights = np.array([1.0, 3.0])[y]
    values = initial_parameters(cfg, data.num_features)
    start = [(values["lrjob_layer0_weight"].astype(np.float64), values["lrjob_layer0_bias"].astype(np.float64))]
    perms = [epoch_permutation(cfg.seed, e, len(y)) for e in range(3)]
    want, want_hist = oracle.train(start, x, y, "binary", perms, 8, oracle.make_optimizer("sgd", cfg.learning_rate),
                                   weights=weights)
    got = loop.get_params()
    np.testing.assert_allclose(got["lrjob_layer0_weight"], want[0][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["lrjob_layer0_bias"], want[0][1], rtol=0, atol=1e-5)
    np.testing.assert_allclose([h["train_loss"] for h in history], [h["train_loss"] for h in want_hist], atol=1e-5)


def test_class_weight_names_labels_as_the_data_gives_them(tmp_path):
    assert job(tmp_path, "train.class_weight={'yes': 5}").class_weights() == (1.0, 5.0)
    assert job(tmp_path, "train.class_weight={0: 2}").class_weights() == (2.0, 1.0)
    assert job(tmp_path, "train.class_weight=balanced").class_weights() == "balanced"
    for value, message in (("{yes: 5}", "YAML reads the key 'true'/yes/no as a boolean; quote it"),
                           ("{'maybe': 5}", "'maybe' is not a class (classes: no, yes)"),
                           ("{'yes': -1}", "the weight of 'yes' must be a positive number, got -1"),
                           ("heavy", "must be balanced or a mapping")):
        with pytest.raises(SpecError, match="train.class_weight") as e:
            job(tmp_path, f"train.class_weight={value}")
        assert message in str(e.value)


def test_an_unscaled_csv_trains_like_scikit_learn_and_predict_applies_the_scaling(tmp_path, capsys):
    """The acceptance check: 500 rows with age ~ 40 and income ~ 50,000, lrjob's default
    settings, within 1 point of StandardScaler + LogisticRegression on the same split; the
    export carries the statistics, predict and evaluate apply them, and summary.json's
    weights in the features' own units give the same probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = job(tmp_path)
    res = run_job(spec, tmp_path / "run")
    data = spec.load_data()
    sk = make_pipeline(StandardScaler(), LogisticRegression()).fit(data.x_train, data.y_train)
    sk_acc = sk.score(data.x_val, data.y_val)
    acc = res.summary["final"]["val_accuracy"]
    print(f"lrjob {acc:.4f}, scikit-learn {sk_acc:.4f} on {len(data.y_val)} validation rows")
    assert acc >= sk_acc - 0.01
    assert res.summary["status"] == "completed" and res.summary["warnings"] == []

    meta = json.loads((tmp_path / "run" / "model" / "meta.json").read_text())
    assert meta["standardize"] == data.stats
    # predict on raw rows = the summary's original-unit weights
    x_new, _ = people(40, seed=11)
    np.savetxt(tmp_path / "new.csv", x_new, delimiter=",", header=",".join(COLUMNS), comments="", fmt="%.6f")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "new.csv")]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    prob = np.array([float(r.split(",")[3]) for r in rows])  # row,prediction,prob_0,prob_1
    coef = res.summary["coefficients"]
    assert coef["columns"] == list(COLUMNS)
    z = x_new.astype(np.float32).astype(np.float64) @ np.array(coef["weight"][0]) + coef["bias"][0]
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-z)), atol=1e-4)
    # evaluate on the run's own validation rows reproduces the run's accuracy
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(acc)


def test_without_standardization_the_same_csv_is_flagged(tmp_path):
    """With data.standardize: false, unscaled features (an income in the tens of thousands)
    give a loss in the millions and chance accuracy: the run still completes, and the
    warning says what to do."""
    res = run_job(job(tmp_path, "data.standardize=false"), tmp_path / "run")
    codes = [w["code"] for w in res.summary["warnings"]]
    assert "loss-flat" in codes, res.summary["warnings"]
    assert "data.standardize: true" in res.summary["warnings"][codes.index("loss-flat")]["message"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["warnings"] == res.summary["warnings"] and saved["status"] == "completed"


def test_a_constant_feature_is_left_unscaled_and_named(tmp_path):
    spec = job(tmp_path, csv=write_people(tmp_path / "c.csv", n=120, constant=True))
    res = run_job(spec, tmp_path / "run")
    stats = spec.load_data().stats
    assert stats["constant"] == [4] and stats["std"][4] == 1.0 and stats["mean"][4] == pytest.approx(3.5)
    warning = next(w for w in res.summary["warnings"] if w["code"] == "constant-feature")
    assert "(site)" in warning["message"] and "left unscaled" in warning["message"]
    assert all(np.isfinite(h["train_loss"]) for h in res.history)


@pytest.mark.pictures
def test_the_boundary_line_is_drawn_in_the_features_own_units(tmp_path):
    """boundary.png's line w·x + b = 0 of a standardized 2-feature model: the exported
    model gives P = 0.5 on it, in age and income as the file has them."""
    from launcher.report.plots import linear_parameters
    from lr_core.export import ExportedModel

    res = run_job(job(tmp_path, "data.features=[age, income]", "train.epochs=3"), tmp_path / "run")
    assert (tmp_path / "run" / "boundary.png").is_file()
    w, b = linear_parameters(tmp_path / "run" / "model")
    ages = np.array([20.0, 40.0, 60.0])
    incomes = -(b + w[0] * ages) / w[1]
    _, p = ExportedModel(tmp_path / "run" / "model").predict(np.column_stack([ages, incomes]).astype(np.float32))
    np.testing.assert_allclose(p, 0.5, atol=1e-3)
    assert res.summary["coefficients"]["weight"][0] == pytest.approx(list(w), rel=1e-6)


def test_a_run_checkpointed_before_standardization_existed_resumes_unstandardized(tmp_path, capsys):
    """A CSV run whose job.yaml has no ``data.standardize`` (written before the field existed,
    features not standardized) resumes: the field reads as false, the spec digest and the
    prepared data's key are the ones its checkpoint recorded; job.yaml then stores false."""
    spec = job(tmp_path, "train.epochs=2", "data.standardize=false")
    out = tmp_path / "run"
    first = run_job(spec, out)
    text = (out / "job.yaml").read_text()
    assert "standardize: false" in text
    (out / "job.yaml").write_text(text.replace("  standardize: false\n", ""))  # as written before the field
    assert "standardize" not in (out / "job.yaml").read_text()
    assert main(["run", "--resume", str(out), "--set", "train.epochs=3", "--quiet"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 3
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[1]["val_loss"] == pytest.approx(first.history[1]["val_loss"], rel=1e-12)
    assert "standardize: false" in (out / "job.yaml").read_text()
    assert json.loads((out / "model" / "meta.json").read_text())["standardize"] is None


def test_job_yaml_stores_the_resolved_standardize(tmp_path):
    out = tmp_path / "run"
    run_job(job(tmp_path, "train.epochs=1"), out)  # null: on for a CSV
    assert "standardize: true" in (out / "job.yaml").read_text()
    again = load_spec(out / "job.yaml", run_file=True)
    assert again.data.standardizes and again.digest() == job(tmp_path, "train.epochs=1").digest()


def test_feature_stats_memory_is_one_block_of_bounded_bytes_however_wide_the_rows():
    """Wide rows: the extra memory of ``feature_stats`` is about one float64 block of
    ``STATS_BYTES`` (rows per block from the feature count), not a multiple of the data."""
    import tracemalloc

    from lr_core.data import STATS_BYTES, array_blocks, feature_stats, stats_rows

    x = np.random.default_rng(0).normal(5.0, 2.0, (3000, 2000)).astype(np.float32)  # 24 MB
    assert stats_rows(2000) * 2000 * 8 <= STATS_BYTES and stats_rows(10**9) == 1
    tracemalloc.start()
    try:
        stats = feature_stats(array_blocks(x))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * STATS_BYTES, peak
    assert np.allclose(stats["mean"], x.astype(np.float64).mean(axis=0), rtol=1e-12)
    assert np.allclose(stats["std"], x.astype(np.float64).std(axis=0), rtol=1e-9)


@pytest.mark.parametrize("damage,first", [
    ({"mean": [0.0, 1.0], "std": [1.0] * 4}, "meta.json standardize.mean must be a list of 4 numbers, got '[0.0, 1.0]'"),
    ({"mean": [0.0] * 4, "std": [1.0, 0.0, 1.0, 1.0]}, "meta.json standardize.std must hold numbers from 2.94e-39 (1 / float32's "
                                                       "largest) to 3.4e+38, got '0.0'"),
    ({"mean": [0.0, None, 0.0, 0.0], "std": [1.0] * 4}, "meta.json standardize.mean must hold numbers that float32 holds (at most 3.4e+38 in size), "
                                                        "got 'None'"),
    ({"mean": [0.0] * 4, "std": [1.0, "x", 1.0, 1.0]}, "meta.json standardize.std must hold numbers from 2.94e-39 (1 / float32's "
                                                       "largest) to 3.4e+38, got 'x'"),
    ([1, 2], "meta.json standardize must be a mapping with mean and std, got '[1, 2]'"),
])
def test_a_damaged_standardize_in_meta_json_is_a_damaged_export(tmp_path, damage, first):
    """meta.json's statistics of the wrong length, not finite or with std 0 are a one-line
    damaged-export error (exit 2), not a traceback or a silent division by zero."""
    from lr_core.errors import LrjobInputError
    from lr_core.export import ExportedModel

    out = tmp_path / "run"
    run_job(job(tmp_path, "train.epochs=1"), out)
    meta_file = out / "model" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert len(meta["standardize"]["std"]) == 4
    meta_file.write_text(json.dumps({**meta, "standardize": damage}))
    with pytest.raises(LrjobInputError) as e:
        ExportedModel(out / "model")
    assert e.value.exit_code == 2
    assert str(e.value) == (f"{out / 'model'}: damaged or incomplete model export ({first}); re-export it by "
                            f"resuming or re-running the job")


def test_uint8_statistics_are_the_same_prepared_and_in_memory(tmp_path):
    """An image set in memory is float32 ``x * float32(scale)``; prepared, it is stored uint8
    with ``scale``: both give the same statistics (the product taken in float32 first)."""
    from lr_core.data import array_blocks, feature_stats
    from lr_core.prepared import _train_stats

    raw = np.random.default_rng(3).integers(0, 256, (700, 30), dtype=np.uint8)
    scale = float(np.float32(1 / 255))
    in_memory = feature_stats(array_blocks(raw.astype(np.float32) * np.float32(scale)))
    raw.tofile(tmp_path / "train-x.bin")
    prepared = _train_stats(tmp_path, {"file": "train-x.bin", "dtype": "uint8", "shape": [700, 30]}, scale)
    assert prepared == in_memory
    assert feature_stats(array_blocks(raw), scale) == in_memory


def test_a_class_weighted_train_loss_is_said_to_be_weighted(tmp_path):
    """With train.class_weight, train_loss is weighted and val_loss is not: the curves'
    legend, report.html and summary.json say so; without, none of them does."""
    from launcher.report.plots import WEIGHTED_NOTE, _draw_curves

    for weights, out in (("balanced", tmp_path / "weighted"), (None, tmp_path / "plain")):
        spec = job(tmp_path, "train.epochs=1", *([f"train.class_weight={weights}"] if weights else []))
        res = run_job(spec, out)
        weighted = weights is not None
        assert res.summary.get("train_loss_weighted", False) is weighted
        assert json.loads((out / "summary.json").read_text()).get("train_loss_weighted", False) is weighted
        assert ((WEIGHTED_NOTE.split(":")[0]) in (out / "report.html").read_text()) is weighted
        fig = _draw_curves(spec, res.history)
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels[0] == ("train loss (class-weighted)" if weighted else "train loss")
