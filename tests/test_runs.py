"""``lrjob runs`` tells runs apart: the data (source and file), the key hyperparameters and
the best validation accuracy per run; ``--where`` filters and ``--sort`` orders them.
Three real in-process runs on two CSV files the test writes."""
import json
from pathlib import Path

import numpy as np
import pytest

from launcher.cli import main
from launcher.driver import run_job
from launcher.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def _csv(path: Path, seed: int, n: int = 120) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=n) > 0).astype(int)
    path.write_text("a,b,label\n" + "".join(f"{a:.5f},{b:.5f},{c}\n" for (a, b), c in zip(x, y)))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    north, south = _csv(base.parent / "north.csv", 1), _csv(base.parent / "south.csv", 2)
    for name, path, lr, opt in (("r1", north, 0.1, "sgd"), ("r2", south, 0.1, "adam"), ("r3", north, 0.5, "sgd")):
        spec = load_spec(ROOT / "jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=2", "data.source=csv",
                                                        f"data.path={path}", "data.options={}",
                                                        f"train.learning_rate={lr}", f"train.optimizer={opt}",
                                                        "train.batch_size=8"])
        run_job(spec, base / name)
    return base


def _cli(capsys, *args):
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _rows(out: str) -> dict[str, dict[str, str]]:
    """The table's rows by run name, each cell under its header (columns start where their name does)."""
    import re

    lines = out.rstrip().splitlines()
    cols = [(m.group(), m.start()) for m in re.finditer(r"\S+", lines[0])]
    bounds = [(name, start, cols[i + 1][1] if i + 1 < len(cols) else None) for i, (name, start) in enumerate(cols)]
    rows = [{name: line[a:b].strip() for name, a, b in bounds} for line in lines[1:]]
    return {r["RUN"]: r for r in rows}


def test_the_table_shows_data_hyperparameters_and_best_accuracy(base, capsys):
    code, out, err = _cli(capsys, "runs", "--dir", base)
    assert code == 0, err
    rows = _rows(out)
    assert set(rows) == {"r1", "r2", "r3"}
    assert [rows[r]["DATA"] for r in ("r1", "r2", "r3")] == ["csv:north.csv", "csv:south.csv", "csv:north.csv"]
    assert [rows[r]["LR"] for r in ("r1", "r2", "r3")] == ["0.1", "0.1", "0.5"]
    assert [rows[r]["OPTIMIZER"] for r in ("r1", "r2", "r3")] == ["sgd", "adam", "sgd"]
    assert {rows[r]["BATCH"] for r in rows} == {"8"} and {rows[r]["WORKERS"] for r in rows} == {"0"}
    assert {rows[r]["EPOCHS"] for r in rows} == {"2/2"}
    for r in rows:
        history = [json.loads(line) for line in (base / r / "metrics.jsonl").read_text().splitlines()]
        assert rows[r]["BEST_VAL_ACC"] == f"{max(h['val_accuracy'] for h in history):.4f}"
        assert rows[r]["VAL_ACC"] == f"{history[-1]['val_accuracy']:.4f}"  # the last epoch's, named as validation


def test_where_filters_on_spec_fields_and_results(base, capsys):
    code, out, _ = _cli(capsys, "runs", "--dir", base, "--where", "train.learning_rate=0.1")
    assert code == 0 and set(_rows(out)) == {"r1", "r2"}
    code, out, _ = _cli(capsys, "runs", "--dir", base, "--where", "train.learning_rate=0.1",
                        "--where", "data.path=" + str(base.parent / "north.csv"))
    assert code == 0 and set(_rows(out)) == {"r1"}
    code, out, _ = _cli(capsys, "runs", "--dir", base, "--where", "status=completed", "--where", "train.optimizer=sgd")
    assert code == 0 and set(_rows(out)) == {"r1", "r3"}
    code, out, _ = _cli(capsys, "runs", "--dir", base, "--where", "train.learning_rate=0.3")
    assert code == 0 and out.strip() == "no run matches train.learning_rate=0.3"


@pytest.mark.parametrize("key,descending", [("val_loss", False), ("-val_accuracy", True),
                                            ("-train.learning_rate", True)])
def test_sort_orders_by_a_result_or_a_spec_field(base, capsys, key, descending):
    code, out, err = _cli(capsys, "runs", "--dir", base, "--sort", key)
    assert code == 0, err
    order = list(_rows(out))
    name = key.lstrip("-")

    def value(run):
        if "." in name:
            return load_spec(base / run / "job.yaml").train.learning_rate
        return json.loads((base / run / "summary.json").read_text())["final"][name]

    values = [value(r) for r in order]
    assert values == sorted(values, reverse=descending), (order, values)


def test_the_tables_column_names_are_keys_too(base, capsys, tmp_path):
    """What the table heads its columns (any case) sorts and filters by the field the column shows:
    VAL_ACC by val_accuracy, LR by train.learning_rate, DATE by the date shown."""
    for alias, field in (("val_acc", "-val_accuracy"), ("VAL_ACC", "-val_accuracy"), ("lr", "train.learning_rate"),
                         ("best_val_acc", "best_val_accuracy"), ("wall", "wall_seconds"),
                         ("OPTIMIZER", "train.optimizer"), ("STATUS", "status")):
        sign = "-" if field.startswith("-") else ""
        code, out, err = _cli(capsys, "runs", "--dir", base, "--sort", sign + alias)
        code2, want, _ = _cli(capsys, "runs", "--dir", base, "--sort", field)
        assert code == code2 == 0 and list(_rows(out)) == list(_rows(want)), (alias, err)
    import os
    import shutil

    copy = shutil.copytree(base, tmp_path / "runs")  # the dates are changed: not the shared runs'
    import datetime

    for i, run in enumerate(("r1", "r3", "r2")):  # DATE is the run's start, not its summary's last write
        env = json.loads((copy / run / "env.json").read_text())
        env["started"] = datetime.datetime.fromtimestamp(1_700_000_000 + 60 * i, datetime.timezone.utc).isoformat()
        (copy / run / "env.json").write_text(json.dumps(env))
        os.utime(copy / run / "summary.json", (1_800_000_000 - i, 1_800_000_000 - i))
    code, out, err = _cli(capsys, "runs", "--dir", copy, "--sort", "-date")
    assert code == 0 and list(_rows(out)) == ["r2", "r3", "r1"], err
    assert list(_rows(_cli(capsys, "runs", "--dir", copy)[1])) == ["r1", "r3", "r2"]  # oldest first
    code, out, _ = _cli(capsys, "runs", "--dir", base, "--where", "LR=0.5")
    assert code == 0 and set(_rows(out)) == {"r3"}
    for where, want in (("BATCH=8", {"r1", "r2", "r3"}), ("optimizer=adam", {"r2"}), ("WORKERS=0", {"r1", "r2", "r3"}),
                        ("RUN=r2", {"r2"}), ("DATA=csv:south.csv", {"r2"}), ("epochs=2", {"r1", "r2", "r3"})):
        code, out, err = _cli(capsys, "runs", "--dir", base, "--where", where)
        assert code == 0 and set(_rows(out)) == want, (where, out, err)
    day = _rows(_cli(capsys, "runs", "--dir", copy)[1])["r2"]["DATE"][:10]
    code, out, err = _cli(capsys, "runs", "--dir", copy, "--where", f"date={day}")
    assert code == 0 and set(_rows(out)) == {"r1", "r2", "r3"}, err  # a day: its start matches the dates shown
    code, out, err = _cli(capsys, "runs", "--dir", copy, "--where", "date=1999")
    assert code == 0 and out.strip() == "no run matches date=1999", out
    # an older summary without best_val_accuracy: BEST_VAL_ACC shows the final accuracy, and sorts by it
    summary = json.loads((copy / "r1" / "summary.json").read_text())
    summary.pop("best_val_accuracy")
    summary["final"]["val_accuracy"] = 2.0  # above every other run's
    (copy / "r1" / "summary.json").write_text(json.dumps(summary))
    code, out, err = _cli(capsys, "runs", "--dir", copy, "--sort", "-BEST_VAL_ACC")
    assert code == 0 and list(_rows(out))[0] == "r1" and _rows(out)["r1"]["BEST_VAL_ACC"] == "2.0000", out
    (copy / "r3" / "env.json").unlink()  # a run without env.json: its summary's time (2027), the newest
    assert list(_rows(_cli(capsys, "runs", "--dir", copy)[1])) == ["r1", "r2", "r3"]


@pytest.mark.parametrize("args,message", [
    (["--where", "train.learnig_rate=0.1"], "--where train.learnig_rate: no run has this field; "
                                            "did you mean 'train.learning_rate'?"),
    (["--where", "train.learning_rate"], "--where 'train.learning_rate': expected FIELD=VALUE"),
    (["--sort", "-val_los"], "--sort -val_los: no run has 'val_los'; did you mean 'val_loss'?"),
    (["--sort", "VAL_ACCURACY"], "--sort VAL_ACCURACY: no run has 'VAL_ACCURACY'; did you mean 'val_accuracy'?"),
    # nothing near: what a key is, not the list of every field (seventy names on one line)
    (["--where", "zzz=1"], "--where zzz: no run has this field; a key is a column of the table (run, data, lr, "
                           "batch, optimizer, workers, val_acc, best_val_acc, wall, status, date), a spec field "
                           "(train.learning_rate) or a result (val_loss, samples_per_s)"),
])
def test_bad_where_or_sort_is_one_line(base, capsys, args, message):
    code, out, err = _cli(capsys, "runs", "--dir", base, *args)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith(f"lrjob: error: {message}"), err


def test_a_run_with_a_damaged_job_yaml_keeps_its_row(base, capsys, tmp_path):
    import shutil

    copy = tmp_path / "runs"
    shutil.copytree(base / "r1", copy / "r1")
    shutil.copytree(base / "r2", copy / "r2")
    (copy / "r2" / "job.yaml").write_text("train: [unclosed\n")
    code, out, err = _cli(capsys, "runs", "--dir", copy)
    assert code == 0, err
    rows = _rows(out)
    assert rows["r1"]["LR"] == "0.1" and rows["r2"]["LR"] == "-" and rows["r2"]["DATA"] == "-"


def _row(name, **values):
    return {"name": name, "spec": {k.replace("__", "."): v for k, v in values.items()}, "results": {}}


def test_where_and_sort_compare_types_as_people_mean_them():
    """``5e-1`` is a number; a bool equals only true/false; big ints compare exactly; NaN has
    no value; numbers sort before texts."""
    from launcher.report.history import filter_runs, sort_runs

    rows = [_row("a", train__learning_rate=0.5, data__cache=True, train__seed=2**53 + 1, x=float("nan")),
            _row("b", train__learning_rate=0.1, data__cache=1, train__seed=2**53, x=3.0),
            _row("c", train__learning_rate="fast", data__cache="1", train__seed=10, x="abc"),
            _row("d", train__learning_rate=5, data__cache=False, train__seed=-1, x=None)]
    names = lambda rs: [r["name"] for r in rs]  # noqa: E731
    assert names(filter_runs(rows, ["train.learning_rate=5e-1"])) == ["a"]
    assert names(filter_runs(rows, ["train.learning_rate=0.50"])) == ["a"]
    assert names(filter_runs(rows, ["data.cache=true"])) == ["a"]
    assert names(filter_runs(rows, ["data.cache=1"])) == ["b", "c"]
    assert names(filter_runs(rows, [f"train.seed={2**53}"])) == ["b"]
    assert names(filter_runs(rows, ["x=nan"])) == []
    assert names(sort_runs(rows, "train.seed")) == ["d", "c", "b", "a"]
    assert names(sort_runs(rows, "-train.seed")) == ["a", "b", "c", "d"]
    assert names(sort_runs(rows, "x")) == ["b", "c", "a", "d"]           # NaN and null last
    assert names(sort_runs(rows, "train.learning_rate")) == ["b", "a", "d", "c"]  # numbers, then texts
    assert names(sort_runs(rows, "data.cache")) == ["b", "c", "d", "a"]   # 1 and '1', then False < True as texts


def test_compare_shows_units_yaml_values_and_whole_field_names(tmp_path, capsys):
    """Wall time in seconds, throughput with thousands separators, spec values as job.yaml writes
    them (null, true), and a nested field's name whole."""
    runs = []
    for name, stop, secs, rate in (("a", "null", 1.24812, 93415.8092), ("b", "{metric: val_loss, patience: 5}", 12.0, 5.0)):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"status": "completed", "wall_seconds": secs,
                                                    "samples_per_s": rate}))
        (d / "job.yaml").write_text(f"name: {name}\ntrain: {{early_stopping: {stop}, threshold: 0.5}}\n"
                                    f"data: {{standardize: {'true' if name == 'a' else 'false'}}}\n")
        runs.append(d)
    code, out, err = _cli(capsys, "compare", *runs)
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line.startswith("  ")}
    assert rows["wall_seconds"] == ["1.2", "s", "12.0", "s"] and rows["samples_per_s"] == ["93,416", "5"]
    assert rows["train.early_stopping.patience"] == ["null", "5"] and rows["data.standardize"] == ["true", "false"]


def test_compare_marks_a_class_weighted_train_loss(tmp_path, capsys):
    runs = []
    for name, weighted in (("plain", False), ("weighted", True)):
        d = tmp_path / name
        d.mkdir()
        summary = {"status": "completed", "final": {"train_loss": 0.25, "val_loss": 0.5}}
        if weighted:
            summary["train_loss_weighted"] = True
        (d / "summary.json").write_text(json.dumps(summary))
        (d / "job.yaml").write_text(f"name: {name}\n")
        runs.append(d)
    code, out, err = _cli(capsys, "compare", *runs)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert ["train_loss", "*", "0.2500", "0.2500"] in rows
    assert out.splitlines()[-1] == ("  * class-weighted in weighted: not comparable with an unweighted loss or with "
                                    "val_loss")
    (runs[1] / "summary.json").write_text(json.dumps({"status": "failed", "train_loss_weighted": True}))
    (runs[0] / "summary.json").write_text(json.dumps({"status": "failed"}))
    code, out, _ = _cli(capsys, "compare", *runs)  # no train_loss row: no footnote for it
    assert code == 0 and "class-weighted" not in out and "train_loss" not in out, out
    (runs[0] / "summary.json").write_text(json.dumps({"status": "completed", "final": {"train_loss": 0.25}}))
    code, out, _ = _cli(capsys, "compare", runs[0], runs[0])
    assert "class-weighted" not in out and ["train_loss", "0.2500", "0.2500"] in [x.split() for x in out.splitlines()]


def test_an_empty_folder_is_named_in_the_hint(capsys, tmp_path):
    """`lrjob runs --dir DIR` with no run in DIR names DIR and how to write runs there, not the
    default folder."""
    code, out, err = _cli(capsys, "runs", "--dir", tmp_path)
    assert code == 0 and out.strip() == (f"no runs in {tmp_path} yet (lrjob run JOB --runs-dir {tmp_path} writes "
                                         f"{tmp_path}/<name>-<stamp>/)"), out
