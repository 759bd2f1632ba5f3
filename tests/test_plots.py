"""Pictures and report of a run (launcher/report/plots.py): in-process runs only, no Ray.

    .venv/bin/python -m pytest -q tests/test_plots.py

Each job trains 3 epochs once per module; the tests read its run directory.
"""
import base64
import logging
import re
import shutil

import numpy as np
import pytest

from launcher.report import plots
from launcher.report.plots import boundary_line, linear_parameters, pick_samples, write_plots
from launcher.driver import run_job
from launcher.spec import load_spec

pytestmark = pytest.mark.pictures  # every test here looks at the pictures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PICTURES = {"curves.png", "confusion.png", "samples.png", "boundary.png", "roc_pr.png", "weights.png"}
# job id -> (job file, extra overrides, the pictures it must have; the others must be absent)
JOBS = {
    "binary_2d": ("jobs/binary_2d.yaml", [], {"curves.png", "boundary.png", "roc_pr.png", "weights.png"}),
    "binary_2d_hidden": ("jobs/binary_2d.yaml", ["model.hidden=[4]", "name=binary_2d_hidden"],
                         {"curves.png", "boundary.png", "roc_pr.png"}),
    "digits_softmax": ("jobs/digits_softmax.yaml", [], {"curves.png", "confusion.png", "samples.png",
                                                        "weights.png"}),
    "binary_synthetic": ("jobs/binary_synthetic.yaml", [], {"curves.png", "roc_pr.png"}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train every job once (lazily) and keep its RunResult."""
    done = {}

    def get(job_id):
        if job_id not in done:
            path, extra, _ = JOBS[job_id]
            spec = load_spec(path, ["resources.workers=0", "train.epochs=3", *extra])
            done[job_id] = (spec, run_job(spec, output=tmp_path_factory.mktemp(job_id) / "run"))
        return done[job_id]

    return get


@pytest.mark.parametrize("job_id", list(JOBS))
def test_pictures_only_where_they_mean_something(runs, job_id):
    _, res = runs(job_id)
    want = JOBS[job_id][2]
    have = {p.name for p in res.path.glob("*.png")}
    assert have == want, f"{job_id}: expected {sorted(want)}, found {sorted(have)}"
    assert want <= PICTURES


@pytest.mark.parametrize("job_id", list(JOBS))
def test_pictures_are_valid_pngs_of_sensible_size(runs, job_id):
    import matplotlib.image as mpimg

    _, res = runs(job_id)
    for name in JOBS[job_id][2]:
        path = res.path / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert path.stat().st_size < 300_000, f"{name}: {path.stat().st_size} bytes"
        img = mpimg.imread(path)
        h, w = img.shape[:2]
        assert 400 <= w <= 2000 and 300 <= h <= 2000, f"{name}: {w}x{h} pixels"
        assert img.std() > 0.01, f"{name}: blank picture"


@pytest.mark.parametrize("job_id", list(JOBS))
def test_report_is_self_contained_and_embeds_every_picture(runs, job_id):
    spec, res = runs(job_id)
    page = (res.path / "report.html").read_text(encoding="utf-8")
    assert spec.name in page
    for name in JOBS[job_id][2]:
        data = base64.b64encode((res.path / name).read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{data}" in page, f"{name} not embedded"
        assert f"alt='{name}'" in page
    assert "<script" not in page and "<link" not in page and "http" not in page.split("<pre>")[0]
    # the summary, the per-epoch table (3 epochs) and the resolved spec
    assert "best validation accuracy (any epoch)" in page and "val_loss" in page
    assert page.count("<tr><td class='num'>") == 3
    assert f"<pre>name: {spec.name}" in page


def test_linear_parameters_are_the_trained_ones(runs):
    _, res = runs("binary_2d")
    w, b = linear_parameters(res.path / "model")
    np.testing.assert_array_equal(w, res.params["lrjob_layer0_weight"][0])
    assert b == pytest.approx(float(res.params["lrjob_layer0_bias"][0]))


def test_linear_parameters_are_the_weights_module_reading_with_a_one_logit_check(runs, monkeypatch):
    """boundary.png and weights.png read a model's weights in one place (weights.py);
    linear_parameters only adds its check that the model has one logit."""
    from launcher.report import weights

    _, res = runs("binary_2d")
    lw = weights.read_linear_weights(res.path / "model")
    w, b = linear_parameters(res.path / "model")
    np.testing.assert_array_equal(w, lw.original[0])
    assert b == float(lw.original_bias[0])
    _, soft = runs("digits_softmax")
    with pytest.raises(ValueError, match=r"expected one logit, got weight of shape \(10, 64\)"):
        linear_parameters(soft.path / "model")
    seen = []
    real = weights.read_linear_weights
    monkeypatch.setattr(weights, "read_linear_weights", lambda d: seen.append(d) or real(d))
    linear_parameters(res.path / "model")
    assert seen == [res.path / "model"]


def test_drawn_boundary_is_where_the_model_is_undecided(runs, monkeypatch, caplog):
    from lr_core.export import ExportedModel

    spec, res = runs("binary_2d")
    run_dir = res.path
    calls = []

    def spy(*args, **kwargs):
        seg = boundary_line(*args, **kwargs)
        calls.append((args, kwargs, seg))
        return seg

    monkeypatch.setattr(plots, "boundary_line", spy)

    with caplog.at_level(logging.WARNING, logger="launcher.report.plots"):
        written = write_plots(run_dir, spec, spec.load_data(), res.history)
    assert not caplog.records, caplog.text  # every picture drawn, none skipped
    assert [p.name for p in written] == ["curves.png", "boundary.png", "roc_pr.png", "weights.png", "report.html"]
    assert len(calls) == 1
    (weight, bias, *_), _, seg = calls[0]
    np.testing.assert_allclose(weight, res.params["lrjob_layer0_weight"][0])
    assert bias == pytest.approx(float(res.params["lrjob_layer0_bias"][0]))
    assert seg is not None
    points = np.vstack([seg, np.linspace(seg[0], seg[1], 7)])
    np.testing.assert_allclose(points @ np.asarray(weight) + bias, 0.0, atol=1e-5)
    _, p1 = ExportedModel(run_dir / "model").predict(points.astype(np.float32))
    np.testing.assert_allclose(p1, 0.5, atol=1e-4)


def test_the_boundary_title_names_the_exported_epoch_not_the_last(tmp_path):
    """keep_best exports an earlier epoch than the last: the picture draws that model, and its
    title gives that epoch and that epoch's validation accuracy (model/meta.json's exported)."""
    from lr_core.export import ExportedModel

    spec = load_spec("jobs/binary_2d.yaml", [
        "resources.workers=0", "train.epochs=30", f"data.cache={tmp_path / 'cache'}",
        "train.early_stopping={metric: val_loss, patience: 3, min_delta: 0.001}", "checkpoint.keep_best=true"])
    res = run_job(spec, output=tmp_path / "run")
    best = res.summary["exported"]["epoch"]
    assert best < res.history[-1]["epoch"]  # the case this test is about
    model_dir = res.path / "model"
    fig = plots._draw_boundary(spec, spec.load_data(), model_dir, ExportedModel(model_dir), res.history)
    acc = res.history[best - 1]["val_accuracy"]
    assert fig.axes[0].get_title() == f"binary_2d: decision boundary, epoch {best}, validation accuracy {acc:.4f}"


def test_boundary_line_spans_xlim_without_ylim(runs):
    from lr_core.export import ExportedModel

    _, res = runs("binary_2d")
    w, b = linear_parameters(res.path / "model")
    seg = boundary_line(w, b, (-3.0, 4.0))
    np.testing.assert_allclose(seg[:, 0], [-3.0, 4.0])
    np.testing.assert_allclose(seg @ w + b, 0.0, atol=1e-9)
    _, p1 = ExportedModel(res.path / "model").predict(seg.astype(np.float32))
    np.testing.assert_allclose(p1, 0.5, atol=1e-4)


def test_boundary_line_geometry():
    # x0 + x1 = 1 in the unit box: from (0, 1) to (1, 0)
    np.testing.assert_allclose(boundary_line([1, 1], -1, (0, 1), (0, 1)), [[0, 1], [1, 0]], atol=1e-12)
    # vertical x0 = 2: needs ylim, then spans it
    np.testing.assert_allclose(boundary_line([1, 0], -2, (0, 5), (-1, 3)), [[2, -1], [2, 3]], atol=1e-12)
    with pytest.raises(ValueError, match="ylim"):
        boundary_line([1, 0], -2, (0, 5))
    # clipped by ylim: x1 = x0 in [0, 10] x [0, 1]
    np.testing.assert_allclose(boundary_line([1, -1], 0, (0, 10), (0, 1)), [[0, 0], [1, 1]], atol=1e-12)
    # level: w.x + b = logit(threshold)
    seg = boundary_line([2, 1], 0.5, (-1, 1), level=1.5)
    np.testing.assert_allclose(seg @ [2, 1] + 0.5, 1.5)
    assert boundary_line([1, 1], -10, (0, 1), (0, 1)) is None  # misses the box
    assert boundary_line([0, 0], 1, (0, 1), (0, 1)) is None    # no boundary at all


def test_pick_samples_is_deterministic_and_shows_mistakes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 500)
    pred = y.copy()
    wrong = np.array([7, 123, 124, 300, 499])
    pred[wrong] = (y[wrong] + 1) % 10
    pick = pick_samples(y, pred, n=32)
    np.testing.assert_array_equal(pick, pick_samples(y, pred, n=32))
    assert len(pick) == 32 and len(set(pick)) == 32 and np.all(np.diff(pick) > 0)
    assert set(wrong) <= set(pick)  # 5 mistakes fit in a quarter of 32
    many = np.arange(500) % 3 == 0
    pred2 = np.where(many, (y + 1) % 10, y)
    assert np.sum(pred2[pick_samples(y, pred2)] != y[pick_samples(y, pred2)]) == 8
    assert len(pick_samples(y, y)) == 32  # no mistakes: the grid is still full
    np.testing.assert_array_equal(pick_samples(y[:10], pred[:10]), np.arange(10))


def test_redraw_from_run_directory(runs, tmp_path, capsys):
    _, res = runs("digits_softmax")
    copy = tmp_path / "copy"
    shutil.copytree(res.path, copy)
    for p in copy.glob("*.png"):
        p.unlink()
    assert plots.main([str(copy)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(copy / n) for n in JOBS["digits_softmax"][2] | {"report.html"})


def test_a_scatter_shows_an_even_sample_of_a_large_set(monkeypatch):
    from launcher.report import plots

    monkeypatch.setattr(plots, "MAX_POINTS", 100)
    x = np.arange(2000, dtype=np.float32).reshape(1000, 2)
    y = np.arange(1000) % 2
    xs, ys = plots._shown(x, y)
    assert len(xs) == 100 and np.all(np.diff(xs[:, 0]) > 0)  # rows in file order, no repeats
    assert np.array_equal(ys, (xs[:, 0] // 2).astype(int) % 2)  # each label stays with its row
    assert xs[-1, 0] > 1000  # spread over the whole set, not its head
    small = plots._shown(x[:50], y[:50])
    assert np.array_equal(small[0], x[:50])


def test_pictures_and_the_report_are_never_written_through_a_link(runs, tmp_path):
    from lr_core.errors import LrjobInputError

    spec, res = runs("binary_2d")
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    copy = tmp_path / "copy"
    shutil.copytree(res.path, copy)
    for name in ("curves.png", "report.html"):
        (copy / name).unlink()
        (copy / name).symlink_to(outside)
    with pytest.raises(LrjobInputError, match=re.escape(f"{copy / 'report.html'}: is a symbolic link")):
        write_plots(copy, spec, spec.load_data(), res.history)
    assert outside.read_bytes() == b"keep"
    assert not (copy / "curves.png").exists(), "the picture is not drawn, and the link is gone"
    assert (copy / "boundary.png").read_bytes().startswith(PNG_MAGIC)


def test_confusion_is_the_exported_epochs_with_the_label_names(tmp_path, monkeypatch):
    """keep_best exports an earlier epoch than the last: confusion.png is that model's matrix
    (that epoch's counts, its number in the title), and its classes carry data.label_map's names."""
    reverse = "{" + ", ".join(f"{i}: {9 - i}" for i in range(10)) + "}"   # class c is digit 9 - c
    spec = load_spec("jobs/digits_softmax.yaml", ["resources.workers=0", "train.epochs=6", "train.learning_rate=2",
                                                  "checkpoint.keep_best=val_loss", f"data.label_map={reverse}"])
    res = run_job(spec, output=tmp_path / "run")
    best = res.summary["exported"]["epoch"]
    assert best < res.history[-1]["epoch"]  # the case this test is about
    assert res.history[best - 1]["confusion"] != res.history[-1]["confusion"]
    figures = {}
    monkeypatch.setenv(plots.PICTURES_ENV, "1")
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    plots.write_plots(res.path, spec, spec.load_data(), res.history)
    ax = figures["confusion.png"].axes[0]
    assert ax.get_title().startswith(f"digits_softmax: confusion matrix, epoch {best}\n")
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(9 - c) for c in range(10)]
    cm = np.asarray(res.history[best - 1]["confusion"])
    assert [t.get_text() for t in ax.texts] == [str(v) for v in cm.ravel()]


def test_the_boundary_legend_names_the_classes_by_their_labels(tmp_path):
    from lr_core.export import ExportedModel

    spec = load_spec("jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=2", "data.label_map={0: 1, 1: 0}"])
    res = run_job(spec, output=tmp_path / "run")
    fig = plots._draw_boundary(spec, spec.load_data(), res.path / "model", ExportedModel(res.path / "model"),
                               res.history)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"train, class 0 = 1", "train, class 1 = 0", "validation, class 0 = 1", "validation, class 1 = 0"} \
        <= set(labels), labels
