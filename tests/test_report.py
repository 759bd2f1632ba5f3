"""The report a person reads (docs/design.md#plots-and-report): the summary table with units,
date, versions, placement and data; ROC and precision-recall curves for binary runs only,
their AUC and average precision equal to scikit-learn's; the weights per named feature;
warnings on top; impossible pictures skipped with a note, never a crash. In-process runs,
no Ray.

    .venv/bin/python -m pytest -q tests/test_report.py
"""
import dataclasses
import html
import json
import re
import shutil

import numpy as np
import pytest

from launcher.driver import run_job
from launcher.report import plots
from launcher.report.ranking import ranking_curves, validation_scores
from launcher.report.summary import VERSION_KEYS
from launcher.report.weights import top_features
from launcher.rundir import RunDir
from launcher.spec import load_spec
from lr_core.export import ExportedModel

pytestmark = pytest.mark.pictures  # every test here looks at the pictures

STRONG = ("income_k", "debt_ratio", "late_payments")   # the label's features, strongest first
NOISE = tuple(f"noise_{i:02d}" for i in range(22))     # 25 features in all: the chart shows 20


def _write_csv(path, n=600, seed=3, constant=False):
    """Named features in very different units; the label follows three of them, with
    standardized weights 3, -2 and 1; a constant column (``constant``) raises a warning."""
    rng = np.random.default_rng(seed)
    cols = list(STRONG) + list(NOISE)
    scale = np.r_[[40.0, 0.01, 2.0], rng.uniform(0.1, 100.0, len(NOISE))]
    z = rng.normal(0, 1, (n, len(cols)))
    x = z * scale + 10 * scale
    logit = 3 * z[:, 0] - 2 * z[:, 1] + 1 * z[:, 2]
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    with open(path, "w") as f:
        f.write(",".join(cols) + (",site" if constant else "") + ",label\n")
        for row, label in zip(x, y):
            f.write(",".join(f"{v:.6g}" for v in row) + (",7" if constant else "") + f",{'yes' if label else 'no'}\n")
    return path


def _spec(tmp_path, csv, *overrides):
    (tmp_path / "job.yaml").write_text(
        f"name: credit\nmodel: {{kind: binary}}\n"
        f"data: {{source: csv, path: {csv}, label_map: {{'yes': 1, 'no': 0}}, val_fraction: 0.25, "
        f"cache: {tmp_path / 'cache'}}}\n"
        f"train: {{epochs: 4, batch_size: 32, learning_rate: 0.1}}\nresources: {{workers: 0}}\n")
    return load_spec(tmp_path / "job.yaml", list(overrides))


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("credit")
    spec = _spec(tmp, _write_csv(tmp / "credit.csv", constant=True))
    return spec, run_job(spec, output=tmp / "run")


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory):
    spec = load_spec("jobs/digits_softmax.yaml", ["resources.workers=0", "train.epochs=2"])
    return spec, run_job(spec, output=tmp_path_factory.mktemp("digits") / "run")


def _page(res) -> str:
    return (res.path / "report.html").read_text(encoding="utf-8")


def _summary_rows(page: str) -> dict:
    """label -> value of the summary table; a label seen twice fails."""
    table = "".join(re.findall(r"<table class='summary'>(.*?)</table>", page, re.S))
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table)
    labels = [html.unescape(k) for k, _ in rows]
    assert len(labels) == len(set(labels)), f"duplicated rows: {labels}"
    return {html.unescape(k): html.unescape(v) for k, v in rows}


# --------------------------------------------------------------------------- summary
def test_the_summary_has_date_units_versions_placement_and_data(binary_run):
    spec, res = binary_run
    page = _page(res)
    rows = _summary_rows(page)
    env = RunDir(res.path).env()
    summary = res.summary
    # the run's date, from env.json
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", rows["run date (start)"])
    assert rows["run date (start)"].replace(" UTC", "") == env["started"][:19].replace("T", " ")
    # units on every timing, throughput and share
    assert rows["wall time, whole run"] == f"{summary['wall_seconds']:.2f} s"
    assert rows["training time, all epochs"].endswith(" s")
    assert rows["throughput (median of the epochs)"] == f"{summary['samples_per_s']:,.0f} samples/s"
    assert rows["validation accuracy"] == f"{100 * summary['final']['val_accuracy']:.2f} %"
    assert rows["training accuracy (exported model)"] == f"{100 * summary['train_accuracy']:.2f} %"
    assert rows["status"] == "completed, 4 of 4 epochs"
    # versions: every one named, as env.json records them
    for name in VERSION_KEYS:
        assert rows[name] == str(env["versions"][name]), name
    assert rows["lrjob"] == "0.1.0" and rows["mxnet"] == "1.9.1"
    # placement and data
    assert rows["workers"].startswith("0: in-process")
    assert rows["nodes"].startswith("1 (")
    assert rows["devices (per rank)"] == "cpu(0)"
    assert rows["source"] == f"csv ({spec.data.path})"
    data = spec.load_data()
    assert len(data.x_train) + len(data.x_val) == 600 and len(data.x_val) > 100
    assert rows["rows: training"] == f"{len(data.x_train):,}"
    assert rows["rows: validation"] == f"{len(data.x_val):,}"
    assert rows["features"] == str(len(STRONG) + len(NOISE) + 1)
    assert rows["classes"] == "2 (binary); labels 0 = no, 1 = yes"
    assert rows["standardization"].startswith("on")
    # no raw keys of summary.json: each value once, under a name that says what it is
    table = re.search(r"<div class='summary'>(.*?)</div>", page, re.S).group(1)
    for raw in ("wall_seconds", "final wall", "final train_loss", "samples_per_s", "best_val_accuracy", "coefficients"):
        assert raw not in table, raw


def test_the_placement_of_a_horovod_run_names_nodes_cpus_gpus_and_devices():
    """The rows env.json of a 3-worker run on 2 nodes gives (its shape as the Ray backend
    writes it, tests/test_distributed.py)."""
    from launcher.report.summary import summary_sections

    spec3 = load_spec("jobs/binary_2d.yaml", ["resources.workers=3", "resources.cpus_per_worker=2",
                                              "resources.gpus_per_worker=1"])
    placement = [{"rank": r, "local_rank": r % 2, "size": 3, "host": h, "pid": 100 + r, "device": d, "node_id": n}
                 for r, (h, n, d) in enumerate([("a", "n1", "gpu(0)"), ("a", "n1", "gpu(1)"), ("b", "n2", "gpu(0)")])]
    env = {"placement": placement, "where": "3 Horovod workers on 2 node(s)", "versions": {}}
    sections = dict(summary_sections({"startup_seconds": 4.25}, env, spec3, spec3.load_data()))
    rows = dict(sections["Placement"])
    assert rows == {"workers": "3 Horovod workers", "nodes": "2 (a, b)", "CPUs per worker": "2",
                    "GPUs per worker": "1", "devices (per rank)": "gpu(0) × 2, gpu(1)",
                    "backend": "3 Horovod workers on 2 node(s)"}
    assert dict(sections["Run"])["start-up time of the workers"] == "4.25 s"
    assert "Versions" not in sections  # nothing recorded, nothing guessed


def test_warnings_come_first_and_visibly(binary_run):
    _, res = binary_run
    page = _page(res)
    codes = [w["code"] for w in res.summary["warnings"]]
    assert "constant-feature" in codes
    box = page.index("<div class='warn'")
    assert box < page.index("<h2>Summary</h2>")
    for w in res.summary["warnings"]:
        assert html.escape(w["message"], quote=True) in page[box:page.index("</div>", box)]


def test_a_run_without_warnings_has_no_warning_box(softmax_run):
    _, res = softmax_run
    assert res.summary["warnings"] == []
    assert "class='warn'" not in _page(res)


# --------------------------------------------------------------------------- ROC and PR
def test_roc_auc_and_average_precision_equal_scikit_learns(binary_run):
    from sklearn.metrics import average_precision_score, roc_auc_score

    spec, res = binary_run
    data = spec.load_data()
    _, p1 = ExportedModel(res.path / "model").predict(data.x_val)
    page = _page(res)
    assert (res.path / "roc_pr.png").is_file()
    figure = re.search(r"<figure data-auc='([^']+)' data-average-precision='([^']+)'><img "
                       r"src='data:image/png;base64,[^']+' alt='roc_pr.png'>", page)
    assert figure, "roc_pr.png is not embedded with its numbers"
    auc, ap = float(figure.group(1)), float(figure.group(2))
    assert abs(auc - roc_auc_score(data.y_val, p1)) <= 1e-9
    assert abs(ap - average_precision_score(data.y_val, p1)) <= 1e-9
    assert 0.8 < auc < 1.0


def test_ranking_curves_match_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 3000)
    s = np.round(rng.random(3000) * 0.5 + 0.3 * y, 2)  # two decimals: many tied scores
    r = ranking_curves(y, s)
    assert abs(r.auc - roc_auc_score(y, s)) <= 1e-12
    assert abs(r.average_precision - average_precision_score(y, s)) <= 1e-12
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(r.fpr, fpr, atol=1e-15)
    np.testing.assert_allclose(r.tpr, tpr, atol=1e-15)
    assert ranking_curves(np.ones(5), np.arange(5.0)) is None


def test_validation_scores_read_in_bounded_chunks(binary_run):
    spec, res = binary_run
    data = spec.load_data()
    model = ExportedModel(res.path / "model")
    seen = []

    class Counting:  # the real model, counting the rows of each call
        def predict(self, x, scale=None):
            seen.append(len(x))
            return model.predict(x, scale=scale)

    y, s = validation_scores(Counting(), data.x_val, data.y_val, chunk=16)
    assert max(seen) == 16 and sum(seen) == len(data.x_val)
    np.testing.assert_array_equal(y, data.y_val)
    # float32 sums in MXNet depend on the batch's size: equal to float32 precision
    np.testing.assert_allclose(s, model.predict(data.x_val)[1], rtol=1e-6)


def test_softmax_runs_have_no_roc_curve_and_no_note_about_it(softmax_run):
    _, res = softmax_run
    page = _page(res)
    assert not (res.path / "roc_pr.png").exists()
    assert "roc_pr.png" not in page and "data-auc" not in page


# --------------------------------------------------------------------------- weights
def test_the_weights_chart_names_the_top_features(binary_run):
    spec, res = binary_run
    page = _page(res)
    assert "alt='weights.png'" in page
    table = re.search(r"<table class='weights'>(.*?)</table>", page, re.S).group(1)
    names = re.findall(r"<tr><td class='num w'>\d+</td><td>([^<]+)</td>", table)
    assert len(names) == 20  # the top 20 of 26
    assert names[:3] == list(STRONG), names
    # the constant column's weight only trades off against the bias: left out, and said so
    assert "site" not in names
    assert "Left out, constant in the training rows (their weight only shifts the bias): site." in page
    # the picture's own labels, from the same run directory
    fig = plots._draw_weights(spec, spec.load_data(), res.path / "model", {})
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[:3] == list(STRONG) and len(labels) == 20
    # beside each, the coefficient in the original units: summary.json's own numbers
    coef = res.summary["coefficients"]
    by_name = dict(zip(coef["columns"], coef["weight"][0]))
    rows = re.findall(r"<tr><td class='num w'>\d+</td><td>([^<]+)</td><td class='num w'>([^<]+)</td>"
                      r"<td class='num w'>([^<]+)</td>", table)
    for name, _, original in rows:
        assert float(original) == pytest.approx(by_name[name], rel=1e-3), name


def test_top_features_rank_by_magnitude_over_the_classes():
    w = np.array([[0.1, -3.0, 0.5, 2.0], [0.0, 0.0, -2.5, 2.0]])
    np.testing.assert_array_equal(top_features(w, 3), [1, 3, 2])  # norms 3, 2.83, 2.55
    np.testing.assert_array_equal(top_features(w[:1], 2), [1, 3])


def test_softmax_weights_of_named_features_are_a_heatmap_by_name(tmp_path):
    rng = np.random.default_rng(4)
    cols = ["petal_length", "petal_width", "sepal_length", "stem_mm"]
    x = rng.normal(0, 1, (300, 4))
    y = np.argmax(np.stack([3 * x[:, 0], -3 * x[:, 0], 2 * x[:, 1]], axis=1) + rng.gumbel(size=(300, 3)), axis=1)
    names = ("setosa", "versicolor", "virginica")
    with open(tmp_path / "flowers.csv", "w") as f:
        f.write(",".join(cols) + ",label\n")
        for row, c in zip(x * [3, 1, 5, 100] + [8, 2, 30, 500], y):
            f.write(",".join(f"{v:.4f}" for v in row) + f",{names[c]}\n")
    spec = _spec(tmp_path, tmp_path / "flowers.csv", "model.kind=softmax", "model.num_classes=3",
                 "data.label_map={setosa: 0, versicolor: 1, virginica: 2}")
    res = run_job(spec, output=tmp_path / "run")
    fig = plots._draw_weights(spec, spec.load_data(), res.path / "model", {})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(names)
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["petal_length", "petal_width"]
    page = _page(res)
    assert "<th>setosa (per original unit)</th>" in page
    assert not (res.path / "roc_pr.png").exists() and "roc_pr.png" not in page


def test_softmax_weights_are_one_picture_per_class(softmax_run):
    _, res = softmax_run
    page = _page(res)
    assert (res.path / "weights.png").is_file() and "alt='weights.png'" in page
    assert "<table class='weights'>" not in page  # the per-class picture, no binary table


# --------------------------------------------------------------------------- impossible pictures
def _skip_notes(page: str) -> dict:
    notes = re.findall(r"<p class='note'><b>([^<]+)</b> skipped: ([^<]+)</p>", page)
    return {name: html.unescape(why) for name, why in notes}


def test_one_class_run_reports_the_skipped_curves_and_does_not_crash(tmp_path):
    rng = np.random.default_rng(1)
    with open(tmp_path / "one.csv", "w") as f:
        f.write("a,b,label\n")
        for a, b in rng.normal(0, 1, (80, 2)):
            f.write(f"{a:.4f},{b:.4f},yes\n")
    spec = _spec(tmp_path, tmp_path / "one.csv", "train.epochs=2")
    res = run_job(spec, output=tmp_path / "run")
    assert res.summary["status"] == "completed"
    page = _page(res)
    notes = _skip_notes(page)
    assert set(notes) == {"roc_pr.png"}, notes
    assert "hold one class only (class 1" in notes["roc_pr.png"]
    assert not (tmp_path / "run" / "roc_pr.png").exists()
    assert "not drawn" not in page
    assert (tmp_path / "run" / "weights.png").is_file()
    assert _summary_rows(page)["validation ROC AUC"] == "undefined (one class in the validation rows)"


def test_nan_weights_and_no_validation_rows_are_skipped_with_a_note(binary_run, tmp_path):
    import mxnet as mx

    spec, res = binary_run
    copy = tmp_path / "copy"
    shutil.copytree(res.path, copy)
    params_file = copy / "model" / "model-0000.params"
    params = mx.nd.load(str(params_file))
    params["arg:lrjob_layer0_weight"][:] = np.nan  # what a diverged run exports
    mx.nd.save(str(params_file), params)
    data = spec.load_data()
    written = plots.write_plots(copy, spec, data, res.history)
    notes = _skip_notes((copy / "report.html").read_text())
    assert set(notes) == {"roc_pr.png", "weights.png"}, notes
    assert "scores are not finite" in notes["roc_pr.png"] and "weights are not finite" in notes["weights.png"]
    assert {p.name for p in written} == {"curves.png", "report.html"}
    assert not (copy / "roc_pr.png").exists() and not (copy / "weights.png").exists()  # stale ones removed

    empty = dataclasses.replace(data, x_val=data.x_val[:0], y_val=data.y_val[:0])
    shutil.copytree(res.path / "model", copy / "model", dirs_exist_ok=True)
    plots.write_plots(copy, spec, empty, res.history)
    notes = _skip_notes((copy / "report.html").read_text())
    assert notes == {"roc_pr.png": "no validation rows to score"}


def test_the_report_is_one_small_self_contained_file(binary_run, softmax_run):
    for _, res in (binary_run, softmax_run):
        page = _page(res)
        assert len(page.encode()) < 600_000, len(page)
        assert "<script" not in page and "<link" not in page and "src='http" not in page
        for png in res.path.glob("*.png"):
            assert f"alt='{png.name}'" in page
        assert json.loads((res.path / "summary.json").read_text())["status"] == "completed"


def test_a_killed_writers_half_written_pictures_are_cleaned(tmp_path):
    from launcher.rundir import clean_leftovers

    run = RunDir.create(tmp_path / "r")
    tmp = [run.path / ".roc_pr.png.ab12cd34", run.path / ".weights.png.x1y2z3w4"]
    for p in tmp:
        p.write_bytes(b"\x89PNG")
    assert sorted(clean_leftovers(run.path)) == sorted(tmp)


def test_the_data_rows_name_classes_in_class_order_and_say_when_some_are_left_out(tmp_path):
    """12 classes: 0 to 9 by number (not 0, 1, 10, 11, 2, ...), then how many more."""
    from launcher.report.summary import summary_sections

    rng = np.random.default_rng(0)
    with open(tmp_path / "k12.csv", "w") as f:
        f.write("a,b,label\n")
        f.writelines(f"{u:.3f},{v:.3f},c{i % 12}\n" for i, (u, v) in enumerate(rng.normal(size=(72, 2))))
    label_map = ", ".join(f"c{j}: {j}" for j in range(12))
    (tmp_path / "k12.yaml").write_text(
        f"name: k12\nmodel: {{kind: softmax, num_classes: 12}}\n"
        f"data: {{source: csv, path: k12.csv, label_map: {{{label_map}}}, cache: {tmp_path / 'cache'}}}\n"
        f"resources: {{workers: 0}}\n")
    spec = load_spec(tmp_path / "k12.yaml")
    rows = dict(dict(summary_sections(None, None, spec, spec.load_data()))["Data"])
    assert rows["classes"] == ("12 (softmax); labels " + ", ".join(f"{j} = c{j}" for j in range(10))
                               + ", … (2 more)")


def test_lrjob_pictures_0_writes_the_report_alone_and_names_the_pictures_skipped(tmp_path, monkeypatch):
    """LRJOB_PICTURES=0 (scripted runs, the tests): no picture, an older one removed, and
    report.html saying which pictures were turned off."""
    monkeypatch.setenv("LRJOB_PICTURES", "0")
    run = tmp_path / "run"
    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=1"])
    run_job(spec, output=run)
    (run / "curves.png").write_bytes(b"an older picture")
    from launcher.report.plots import write_plots
    from launcher.rundir import RunDir

    write_plots(run, spec, spec.load_data(), RunDir.open(run).history())  # drawn again, as a redraw does
    assert sorted(p.name for p in run.glob("*.png")) == []
    page = (run / "report.html").read_text(encoding="utf-8")
    for name in ("curves.png", "boundary.png", "roc_pr.png", "weights.png"):
        assert f"<b>{name}</b> skipped: LRJOB_PICTURES=0 turned pictures off" in page


def test_the_start_is_the_first_readable_one_of_the_runs_commands():
    """A continued run's start is its first command's; an entry that does not read as a time is
    passed over, down to this command's own."""
    from launcher.report.summary import _started

    env = {"earlier": [{"started": "not a date"}, {"started": "2026-01-02T03:04:05+00:00"}],
           "started": "2026-02-01T00:00:00+00:00"}
    assert _started(env, None) == "2026-01-02 03:04:05 UTC"
    assert _started({"earlier": [{"started": "not a date"}, "junk"], "started": "2026-02-01T00:00:00+00:00"},
                    None) == "2026-02-01 00:00:00 UTC"
