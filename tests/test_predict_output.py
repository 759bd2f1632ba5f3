"""What ``lrjob predict`` writes, as a scikit-learn user reads it: an id per row (a named
column passed through as written, else the row number), the prediction in the training
data's own labels (``yes``/``no`` in, ``yes``/``no`` out) and one probability column per
class, named after its label; ``evaluate`` speaks the same labels. Real runs (in-process),
real files."""
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.cli import main
from launcher.driver import run_job
from launcher.spec import load_spec

LRJOB = str(Path(sys.executable).parent / "lrjob")


def cli(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _rows(text):
    return list(csv.reader(io.StringIO(text)))


def _people(n, seed):
    """age, income and whether they bought (yes/no), from a logistic rule: learnable."""
    rng = np.random.default_rng(seed)
    age, income = rng.normal(40, 10, n), rng.normal(50_000, 15_000, n)
    p = 1 / (1 + np.exp(-(0.15 * (age - 40) + (income - 50_000) / 5_000)))
    return age, income, np.where(rng.random(n) < p, "yes", "no")


def _pets(n, seed):
    """Three string classes (cat, dog, bird) by the nearest of three centres in 2-D."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.normal(size=(n, 2))
    return x, np.array(["cat", "dog", "bird"])[y]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("labelled")
    age, income, bought = _people(300, 0)
    with open(base / "people.csv", "w") as f:
        f.write("customer_id,age,income,bought\n")
        f.writelines(f"C{i:04d},{a:.2f},{b:.0f},{c}\n" for i, (a, b, c) in enumerate(zip(age, income, bought)))
    (base / "buyers.yaml").write_text(
        "name: buyers\nmodel: {kind: binary}\n"
        "data: {source: csv, path: people.csv, label_column: bought, label_map: {'no': 0, 'yes': 1},\n"
        "       features: [age, income]}\ntrain: {epochs: 15}\nresources: {workers: 0}\n")
    x, pet = _pets(300, 1)
    with open(base / "pets.csv", "w") as f:
        f.write("a,b,pet\n")
        f.writelines(f"{u:.4f},{v:.4f},{p}\n" for (u, v), p in zip(x, pet))
    (base / "pets.yaml").write_text(
        "name: pets\nmodel: {kind: softmax, num_classes: 3}\n"
        "data: {source: csv, path: pets.csv, label_column: pet, label_map: {cat: 0, dog: 1, bird: 2}}\n"
        "train: {epochs: 10}\nresources: {workers: 0}\n")
    return {"base": base, "buyers": run_job(load_spec(base / "buyers.yaml"), base / "run-buyers"),
            "pets": run_job(load_spec(base / "pets.yaml"), base / "run-pets")}


def test_binary_labels_round_trip_yes_no_in_yes_no_out(runs, tmp_path, capsys):
    age, income, truth = _people(200, 7)
    (tmp_path / "new.csv").write_text("age,income\n" + "".join(f"{a:.2f},{b:.0f}\n" for a, b in zip(age, income)))
    code, out, err = cli(capsys, "predict", runs["buyers"].path, "--input", tmp_path / "new.csv")
    assert code == 0, err
    rows = _rows(out)
    assert rows[0] == ["row", "prediction", "prob_no", "prob_yes"]
    body = rows[1:]
    assert [r[0] for r in body] == [str(i) for i in range(1, 201)]
    pred = np.array([r[1] for r in body])
    prob = np.array([[float(v) for v in r[2:]] for r in body])
    assert set(pred) == {"yes", "no"}
    assert np.allclose(prob.sum(axis=1), 1.0, atol=1e-8, rtol=0)
    assert np.array_equal(pred, np.where(prob[:, 1] >= 0.5, "yes", "no"))  # the threshold on P(yes)
    assert np.mean(pred == truth) > 0.8  # learned, in the file's own words
    # evaluate on a labelled file with yes/no labels: the same words, the same predictions
    (tmp_path / "lab.csv").write_text("bought,age,income\n" + "".join(
        f"{t},{a:.2f},{b:.0f}\n" for t, a, b in zip(truth, age, income)))
    code, out, err = cli(capsys, "evaluate", runs["buyers"].path, "--data", tmp_path / "lab.csv", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["labels"] == ["no", "yes"]
    assert m["tp"] == int(np.sum((pred == "yes") & (truth == "yes")))
    assert m["accuracy"] == pytest.approx(np.mean(pred == truth))
    code, out, err = cli(capsys, "evaluate", runs["buyers"].path, "--data", tmp_path / "lab.csv")
    assert code == 0 and "positive   yes" in out, out


def test_softmax_labels_and_one_probability_column_per_class(runs, tmp_path, capsys):
    x, truth = _pets(60, 9)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    np.savez(tmp_path / "x.npz", x=x.astype(np.float32))
    outputs = []
    for name in ("x.npy", "x.npz"):
        code, out, err = cli(capsys, "predict", runs["pets"].path, "--input", tmp_path / name)
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    rows = _rows(outputs[0])
    assert rows[0] == ["row", "prediction", "prob_cat", "prob_dog", "prob_bird"]
    pred = np.array([r[1] for r in rows[1:]])
    prob = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert np.allclose(prob.sum(axis=1), 1.0, atol=1e-8, rtol=0)
    assert np.array_equal(pred, np.array(["cat", "dog", "bird"])[prob.argmax(axis=1)])
    assert np.mean(pred == truth) > 0.9
    code, out, err = cli(capsys, "evaluate", runs["pets"].path)
    assert code == 0 and "confusion" in out and "recall     cat: " in out, out
    header = [line for line in out.splitlines() if line.strip().startswith("cat") and "dog" in line]
    assert header and header[0].split() == ["cat", "dog", "bird"], out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_named_id_column_is_passed_through_as_written(runs, tmp_path, capsys, fmt):
    age, income, _ = _people(12, 3)
    ids = ["007", "A,1", 'say "hi"', "  padded  ", "x"] + [f"C{i}" for i in range(7)]
    path = tmp_path / f"new.{fmt}"
    if fmt == "csv":  # the id in the middle, income before age: columns go by name
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["income", "customer_id", "age"])
        w.writerows([f"{b:.0f}", i, f"{a:.2f}"] for a, b, i in zip(age, income, ids))
        path.write_text(buf.getvalue())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"customer_id": ids, "income": np.round(income), "age": np.round(age, 2)}), path)
    code, out, err = cli(capsys, "predict", runs["buyers"].path, "--input", path, "--id-column", "customer_id")
    assert code == 0, err
    rows = _rows(out)
    assert rows[0] == ["customer_id", "prediction", "prob_no", "prob_yes"]
    want = [i.strip() if fmt == "csv" else i for i in ids]  # a CSV cell is read trimmed, as features are
    assert [r[0] for r in rows[1:]] == want
    code, plain, err = cli(capsys, "predict", runs["buyers"].path, "--input", tmp_path / f"new.{fmt}")
    assert code == 0, err
    assert [r[1:] for r in _rows(plain)[1:]] == [r[1:] for r in rows[1:]]  # the id changes nothing else
    out_file = tmp_path / "preds.csv"
    code, _, err = cli(capsys, "predict", runs["buyers"].path, "--input", path, "--id-column", "customer_id",
                       "--output", out_file)
    assert code == 0 and out_file.read_text() == out and "wrote 12 predictions" in err


def test_an_id_column_of_a_model_trained_without_column_names_is_not_a_feature(runs, tmp_path, capsys):
    """A model trained on an npz (no column names) takes every column of a file but the
    label and the id: with --id-column the key column is the id, without it a feature."""
    x, _ = _pets(5, 4)
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(5) % 3)
    (tmp_path / "job.yaml").write_text("name: unnamed\nmodel: {kind: softmax, num_classes: 3}\n"
                                       "data: {source: npz, path: train.npz, val_fraction: 0.2}\n"
                                       "train: {epochs: 1}\nresources: {workers: 0}\n")
    run = run_job(load_spec(tmp_path / "job.yaml"), tmp_path / "run")
    (tmp_path / "new.csv").write_text("p,q,key\n" + "".join(f"{u},{v},k{i}\n" for i, (u, v) in enumerate(x)))
    code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / "new.csv", "--id-column", "key")
    assert code == 0, err
    assert [r[0] for r in _rows(out)[1:]] == [f"k{i}" for i in range(5)]
    code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / "new.csv")
    assert code == 2 and "column 'key': 'k0' is not a number" in err, err


@pytest.mark.parametrize("make,message", [
    (lambda p: p.with_suffix(".csv").write_text("age,income\n40,50000\n"), "no column 'customer_id' for the id"),
    (lambda p: p.with_suffix(".csv").write_text("40,50000\n41,60000\n"), "no header row"),
    (lambda p: np.save(p.with_suffix(".npy"), np.zeros((2, 2))), "an NPY or NPZ file names no columns"),
])
def test_an_unusable_id_column_is_one_line_and_writes_nothing(runs, tmp_path, capsys, make, message):
    make(tmp_path / "in")
    path = next(tmp_path.glob("in.*"))
    out_file = tmp_path / "preds.csv"
    code, out, err = cli(capsys, "predict", runs["buyers"].path, "--input", path, "--id-column", "customer_id",
                         "--output", out_file)
    errors = [line for line in err.splitlines() if line.startswith("lrjob: error")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert str(path) in errors[0] and out == "" and not out_file.exists()


@pytest.mark.parametrize("name", ["prediction", "prob_yes"])
def test_an_id_column_named_like_an_output_column_is_refused(runs, tmp_path, capsys, name):
    path = tmp_path / "new.csv"
    path.write_text(f"{name},age,income\nN-1,41,72000\n")
    out_file = tmp_path / "preds.csv"
    code, out, err = cli(capsys, "predict", runs["buyers"].path, "--input", path, "--id-column", name,
                         "--output", out_file)
    assert code == 2 and out == "" and not out_file.exists(), err
    assert err.splitlines() == [f"lrjob: error: --id-column {name}: the output has a column of that name "
                                f"(prediction, prob_no, prob_yes); rename the id column in the input file"], err


def test_unused_columns_are_noted_once_and_never_beside_an_error(runs, tmp_path, capsys):
    """predict reads its input twice (check, then write): the note on columns the model does not
    use comes once, after every row and id passed; an error (a misspelt id column, a bad cell)
    stands alone on stderr, with no note before it."""
    path = tmp_path / "new.csv"
    path.write_text("customer_id,age,income,foo,bought\nN-1,41,72000,x,yes\nN-2,35,39000,y,no\n")
    note = f"lrjob: note: {path}: 1 column(s) the model was not trained on, ignored: foo"
    code, out, err = cli(capsys, "predict", runs["buyers"].path, "--input", path, "--id-column", "customer_id")
    assert code == 0 and err.splitlines() == [note], err
    assert [r[0] for r in _rows(out)[1:]] == ["N-1", "N-2"]
    code, out, err = cli(capsys, "predict", runs["buyers"].path, "--input", path, "--id-column", "cust")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith(f"lrjob: error: {path}: no column 'cust' for the id"), err
    code, out, err = cli(capsys, "evaluate", runs["buyers"].path, "--data", path)
    assert code == 0 and err.splitlines() == [f"lrjob: note: {path}: 2 column(s) the model was not trained on, "
                                              f"ignored: customer_id, foo"], err
    path.write_text("customer_id,age,income,foo,bought\nN-1,41,lots,x,yes\n")
    for command, flag in (("predict", "--input"), ("evaluate", "--data")):
        code, out, err = cli(capsys, command, runs["buyers"].path, flag, path)
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("lrjob: error: "), (command, err)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_missing_training_column_is_named_with_the_fix_for_the_input_file(runs, tmp_path, capsys, command):
    """The training job's data.features is not the user's to fix when predicting: the
    message names the missing column and every column the model takes."""
    (tmp_path / "new.csv").write_text("customer_id,income,bought\nN-1,72000,yes\n")
    flag = "--input" if command == "predict" else "--data"
    code, out, err = cli(capsys, command, runs["buyers"].path, flag, tmp_path / "new.csv")
    errors = [line for line in err.splitlines() if line.startswith("lrjob: error")]
    assert code == 2 and len(errors) == 1 and out == "", err
    assert errors[0] == (f"lrjob: error: {tmp_path / 'new.csv'}: no column 'age', which the model was trained on; "
                         f"give every training column by name, in any order: age, income")


def test_an_id_column_that_is_a_training_feature_is_refused_naming_it(runs, tmp_path, capsys):
    (tmp_path / "new.csv").write_text("customer_id,age,income\nN-1,35,72000\n")
    code, out, err = cli(capsys, "predict", runs["buyers"].path, "--input", tmp_path / "new.csv",
                         "--id-column", "age")
    errors = [line for line in err.splitlines() if line.startswith("lrjob: error")]
    assert code == 2 and out == "" and len(errors) == 1, err
    assert errors[0].startswith("lrjob: error: --id-column age: is a feature the model was trained on"), err


def test_values_near_the_float32_maximum_predict_the_limit_without_a_warning(runs, tmp_path, capsys):
    """Standardizing 3.4e38 overflows float32: the feature saturates at the float32 maximum, so
    the answer is a class with probabilities 0 and 1 (not NaN from inf - inf), and NumPy's
    RuntimeWarning is not printed amid the output."""
    import warnings

    rng = np.random.default_rng(5)
    x = rng.normal(0, 0.1, size=(60, 2))   # std below 1: 3.4e38 / std overflows; weights of both signs
    (tmp_path / "small.csv").write_text("a,b,y\n" + "".join(f"{u:.5f},{v:.5f},{int(u - v > 0)}\n" for u, v in x))
    (tmp_path / "job.yaml").write_text("name: small\nmodel: {kind: binary}\ndata: {source: csv, path: small.csv, "
                                       "label_column: y}\ntrain: {epochs: 2}\nresources: {workers: 0}\n")
    run = run_job(load_spec(tmp_path / "job.yaml"), tmp_path / "run")
    big = [(a, b) for a in (3.4e38, -3.4e38) for b in (3.4e38, -3.4e38)]   # two of them are inf - inf unsaturated
    (tmp_path / "big.csv").write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in big + [(1e30, 1e30), (0.05, 0.05)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / "big.csv")
    assert code == 0 and err == "", err
    rows = _rows(out)[1:]
    for r in rows[:4]:   # a class and its probabilities, never NaN
        assert r[1] in ("0", "1") and {r[2], r[3]} == {"0", "1"}, rows
    assert rows[0][1:] == rows[4][1:]   # 1e30 stays finite standardized: the same answer as 3.4e38
    assert 0 < float(rows[5][3]) < 1


@pytest.mark.parametrize("command, flag", [("predict", "--input"), ("evaluate", "--data")])
def test_a_missing_input_file_names_the_option_of_the_command(runs, tmp_path, capsys, command, flag):
    code, out, err = cli(capsys, command, runs["buyers"].path, flag, tmp_path / "nothere.csv")
    assert code == 2 and out == ""
    assert err == f"lrjob: error: {tmp_path / 'nothere.csv'}: file not found; check {flag}\n"


def test_a_null_id_in_parquet_is_refused_naming_its_row(runs, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "new.parquet"
    pq.write_table(pa.table({"customer_id": ["A", None, "C"], "income": [50000.0, 60000.0, 70000.0],
                             "age": [30.0, 40.0, 50.0]}), path)
    out_file = tmp_path / "preds.csv"
    code, out, err = cli(capsys, "predict", runs["buyers"].path, "--input", path, "--id-column", "customer_id",
                         "--output", out_file)
    assert code == 2 and out == "" and not out_file.exists()
    assert err == (f"lrjob: error: {path}: row 2: the id column 'customer_id' is null; every row needs an id: "
                   f"fill it in, or drop the id option (rows are then numbered)\n")
