"""predict / evaluate on exported models; runs and compare on run directories."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.driver import run_job
from launcher.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
LRJOB = str(Path(sys.executable).parent / "lrjob")


def lrjob(*args):
    return subprocess.run([LRJOB, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    blobs = run_job(load_spec("jobs/binary_2d.yaml", ["resources.workers=0"]), output=base / "blobs")
    digits = run_job(load_spec("jobs/digits_softmax.yaml", ["resources.workers=0", "train.epochs=3"]),
                     output=base / "digits")
    digits2 = run_job(load_spec("jobs/digits_softmax.yaml", ["resources.workers=0", "train.epochs=2",
                                                             "train.learning_rate=0.2"]), output=base / "digits2")
    return {"base": base, "blobs": blobs, "digits": digits, "digits2": digits2}


def test_predict_classifies_the_blob_centres(runs, tmp_path):
    # synthetic-blobs: centres at -/+ separation/2 along the diagonal (separation 4, 2-D)
    c = 2.0 / np.sqrt(2.0)
    inp = tmp_path / "centres.csv"
    inp.write_text(f"x0,x1\n{-c},{-c}\n{c},{c}\n")
    r = lrjob("predict", runs["blobs"].path, "--input", inp)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "row,prediction,prob_0,prob_1"
    (p0, q0), (p1, q1) = [(int(b), float(d)) for a, b, c, d in (x.split(",") for x in lines[1:])]
    assert (p0, p1) == (0, 1)
    assert q0 < 0.1 and q1 > 0.9  # P(class 1)


def test_predict_rows_equal_evaluate_predictions(runs, tmp_path):
    from lr_core.data import load_dataset

    spec = load_spec(runs["digits"].path / "job.yaml")
    d = load_dataset("digits", **spec.data_kwargs())
    np.save(tmp_path / "x.npy", d.x_val)
    out = tmp_path / "pred.csv"
    r = lrjob("predict", runs["digits"].path, "--input", tmp_path / "x.npy", "--output", out)
    assert r.returncode == 0, r.stderr
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert np.array_equal(table[:, 0], np.arange(1, len(d.x_val) + 1))  # the row numbers
    pred = table[:, 1].astype(int)  # digits' labels are the class numbers
    acc = float(np.mean(pred == d.y_val))
    ev = lrjob("evaluate", runs["digits"].path, "--json")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout)
    assert metrics["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(runs["digits"].history[-1]["val_accuracy"], abs=1e-6)
    confusion = np.array(metrics["confusion"])
    assert confusion.sum() == len(pred) and np.trace(confusion) == int((pred == d.y_val).sum())


@pytest.mark.parametrize("content,message", [
    ("x0,x1\n1,nan\n", "not finite"),
    ("x0\n1\n", "1 feature columns, the model expects 2"),
    ("x0,x1\n1,abc\n", "is not a number"),
    ("", "empty file"),
])
def test_predict_bad_input_gives_training_path_errors(runs, tmp_path, content, message):
    inp = tmp_path / "bad.csv"
    inp.write_text(content)
    r = lrjob("predict", runs["blobs"].path, "--input", inp)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_predict_on_a_folder_without_model(tmp_path):
    r = lrjob("predict", tmp_path, "--input", "x.csv")
    assert r.returncode == 2 and "no exported model" in r.stderr


def test_evaluate_on_a_labelled_file(runs, tmp_path):
    c = 2.0 / np.sqrt(2.0)
    inp = tmp_path / "lab.csv"
    inp.write_text(f"x0,x1,label\n{-c},{-c},0\n{c},{c},1\n{c},{c},0\n")
    r = lrjob("evaluate", runs["blobs"].path, "--data", inp, "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["tp"] == 1 and m["tn"] == 1 and m["fp"] == 1 and m["accuracy"] == pytest.approx(2 / 3)


def test_runs_table_and_compare(runs):
    r = lrjob("runs", "--dir", runs["base"])
    assert r.returncode == 0
    for name in ("blobs", "digits", "digits2"):
        assert name in r.stdout
    assert "completed" in r.stdout and "3/3" in r.stdout
    c = lrjob("compare", runs["digits"].path, runs["digits2"].path)
    assert c.returncode == 0
    assert "train.learning_rate" in c.stdout and "train.epochs" in c.stdout and "val_accuracy" in c.stdout
    bad = lrjob("compare", runs["digits"].path, runs["base"] / "nope")
    assert bad.returncode == 2 and "not a run directory" in bad.stderr


def test_predict_to_an_unwritable_place_is_one_line(runs, tmp_path):
    inp = tmp_path / "p.csv"
    inp.write_text("x0,x1\n0,0\n")
    target = tmp_path / "locked"
    target.mkdir()
    if os.geteuid() == 0:  # root ignores mode bits: make the folder immutable instead
        subprocess.run(["chattr", "+i", str(target)], check=True)
    else:
        os.chmod(target, 0o500)
    try:
        r = lrjob("predict", runs["blobs"].path, "--input", inp, "--output", target / "out.csv")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(target)])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--output {target / 'out.csv'}: cannot write" in r.stderr


def test_run_files_are_readable_by_others_as_the_umask_allows(runs):
    for name in ("job.yaml", "env.json", "summary.json", "metrics.jsonl"):
        mode = (runs["blobs"].path / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~_umask(), (name, oct(mode))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_runs_names_a_missing_folder(tmp_path):
    r = lrjob("runs", "--dir", tmp_path / "nope")
    assert r.returncode == 2 and "no such folder" in r.stderr
