"""Early stopping and the best model (docs/design.md#early-stopping-and-the-best-model).

The decisions (launcher/stopping.py) on crafted histories; then real in-process runs on
crafted data whose validation loss falls for six epochs and rises after: the run stops
``patience`` epochs after the best one, ends ``completed``, and ``model/`` holds exactly the
best epoch's checkpoint, which pruning spared.
"""
import json
import re

import numpy as np
import pytest

from launcher.driver import DriverOptions, run_job
from launcher.rundir import list_checkpoints, load_checkpoint
from launcher.spec import load_spec
from launcher.stopping import Watch, stop_reason
from lr_core.data import Dataset
from lr_core.errors import SpecError
from lr_core.export import ExportedModel

# --------------------------------------------------------------------------- the decisions


def _hist(values, metric="val_loss"):
    return [{metric: v} for v in values]


@pytest.mark.parametrize("values,mode,delta,improving", [
    ([0.9, 0.8, 0.85, 0.7, 0.75], "min", 0.0, [1, 2, 4]),
    ([0.9, 0.8, 0.79, 0.7, 0.69], "min", 0.05, [1, 2, 4]),          # 0.79 and 0.69: not by more than 0.05
    ([0.5, 0.6, 0.6, 0.55, 0.9], "max", 0.0, [1, 2, 5]),            # a tie is no improvement
    ([None, 0.5, float("nan"), 0.7], "max", 0.0, [2, 4]),           # undefined values are skipped
])
def test_improving_epochs(values, mode, delta, improving):
    w = Watch("val_loss" if mode == "min" else "val_auc", mode, delta)
    h = _hist(values, w.metric)
    assert w.improving(h) == improving
    assert w.best_epoch(h) == improving[-1]


def test_stop_after_patience_epochs_without_improvement():
    w = Watch("val_loss", "min", 0.0)
    h = _hist([0.9, 0.8, 0.85, 0.86, 0.87])
    assert stop_reason(h[:4], w, 3) is None
    reason = stop_reason(h, w, 3)
    assert reason == "early stopping: val_loss did not improve for 3 epochs (best 0.8 at epoch 2)"
    assert stop_reason(h, w, 4) is None
    assert stop_reason([], w, 1) is None
    assert "by more than 0.1" in stop_reason(_hist([0.9, 0.85]), Watch("val_loss", "min", 0.1), 1)


# --------------------------------------------------------------------------- real runs on crafted data
def _crafted() -> Dataset:
    """One feature, two well separated classes; a quarter of the validation labels flipped,
    so that the growing confidence of training raises the validation loss after epoch 6
    (0.647 0.617 0.599 0.588 0.583 0.582 0.583 0.587 0.591 ...)."""
    rng = np.random.default_rng(3)

    def make(n, flip):
        y = np.arange(n) % 2
        x = (np.where(y == 1, 1.0, -1.0) + 0.3 * rng.normal(size=n)).astype(np.float32)[:, None]
        y[:int(flip * n)] ^= 1
        return x, y.astype(np.int64)

    xt, yt = make(64, 0.0)
    xv, yv = make(40, 0.25)
    return Dataset(xt, yt, xv, yv, source="test")


BASE = ["resources.workers=0", "train.epochs=12", "train.batch_size=16", "train.learning_rate=0.12",
        "train.seed=1", "train.init=zeros", "checkpoint.keep=1"]


def _run(tmp_path, *extra, name="run", reporter=None):
    spec = load_spec("jobs/binary_2d.yaml", [*BASE, *extra])
    return run_job(spec, tmp_path / name, options=DriverOptions(data=_crafted()), reporter=reporter)


def _exported_params(run_dir) -> dict:
    model = ExportedModel(run_dir / "model")
    return {k: v.data().asnumpy() for k, v in model.net.collect_params().items()}


@pytest.mark.parametrize("min_delta,best,stopped", [(0.0, 6, 9), (0.008, 4, 7)])
def test_early_stopping_exports_the_best_epochs_checkpoint(tmp_path, min_delta, best, stopped):
    res = _run(tmp_path, f"train.early_stopping={{metric: val_loss, patience: 3, min_delta: {min_delta}}}",
               "checkpoint.keep_best=true")
    losses = [h["val_loss"] for h in res.history]
    assert int(np.argmin(losses)) + 1 == 6, losses            # the data are as crafted
    assert len(res.history) == stopped < 12
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == stopped
    assert summary["stopped_early"]["epoch"] == stopped
    assert summary["stopped_early"]["reason"].startswith("early stopping: val_loss did not improve")
    assert f"at epoch {best})" in summary["stopped_early"]["reason"]
    meta = json.loads((tmp_path / "run" / "model" / "meta.json").read_text())
    assert summary["exported"]["epoch"] == meta["exported"]["epoch"] == best
    assert meta["exported"]["selected_by"] == "best val_loss"
    # keep=1, yet the best epoch's checkpoint is still there, beside the newest
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == [f"epoch-{best:04d}", f"epoch-{stopped:04d}"]
    kept = load_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch-{best:04d}")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / f"epoch-{stopped:04d}")
    exported = _exported_params(tmp_path / "run")
    for name, value in kept["params"].items():
        assert np.array_equal(exported[name], value), name
    assert any(not np.array_equal(exported[n], v) for n, v in last["params"].items()), "not the last epoch's"


def test_a_stopped_run_run_again_trains_nothing_more(tmp_path, capsys):
    """The output says why and when the run stopped, and which epoch the model is; the same
    command again trains no epoch."""
    from launcher.report.progress import Reporter

    args = ("train.early_stopping={metric: val_loss, patience: 3}", "checkpoint.keep_best=true")
    first = _run(tmp_path, *args, reporter=Reporter("human"))
    out, err = capsys.readouterr()
    assert "early stopping on val_loss (patience 3)" in err
    assert re.search(r"\nlrjob: early stopping: val_loss did not improve for 3 epochs \(best 0\.58\d+ at epoch 6\); "
                     r"stopped after epoch 9 of 12\n", err), err
    assert re.search(r"\nlrjob: model/ holds epoch 6, the best by val_loss \(0\.58\d+\)\n", err), err
    assert "| stopped      early, after epoch 9" in out and "| model        epoch 6 (best val_loss)" in out
    # beside it, the validation metrics of that model (epoch 6), not of the final epoch
    exported = first.history[5]
    assert f"| val accuracy {exported['val_accuracy']:.4f}" in out
    assert f"| val loss     {exported['val_loss']:.4f}" in out
    assert f"{first.history[-1]['val_loss']:.4f}" != f"{exported['val_loss']:.4f}"
    again = _run(tmp_path, *args)
    assert len(first.history) == len(again.history) == 9
    assert [h["val_loss"] for h in again.history] == [h["val_loss"] for h in first.history]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_early"]["epoch"] == 9 and summary["exported"]["epoch"] == 6


def test_keep_best_without_early_stopping_trains_every_epoch_and_exports_the_best(tmp_path):
    """Checkpoints every 5 epochs: the best epoch (6) is saved all the same, and spared."""
    _run(tmp_path, "checkpoint.keep_best=val_loss", "checkpoint.every_epochs=5")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_done"] == 12 and "stopped_early" not in summary
    assert summary["exported"]["epoch"] == 6
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch-0006", "epoch-0012"]
    kept = load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch-0006")
    exported = _exported_params(tmp_path / "run")
    assert all(np.array_equal(exported[n], v) for n, v in kept["params"].items())


def test_without_keep_best_the_last_epoch_is_exported_and_named(tmp_path):
    """Checkpoints every 4 epochs: the epoch early stopping ends with (9) is saved too."""
    res = _run(tmp_path, "train.early_stopping={metric: val_loss, patience: 3}", "checkpoint.every_epochs=4")
    assert len(res.history) == 9
    meta = json.loads((tmp_path / "run" / "model" / "meta.json").read_text())
    assert meta["exported"] == {"epoch": 9, "selected_by": "last epoch"}
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch-0009"]
    exported = _exported_params(tmp_path / "run")
    assert all(np.array_equal(exported[n], v) for n, v in res.params.items())


# --------------------------------------------------------------------------- the spec
@pytest.mark.parametrize("override,message", [
    ("train.early_stopping={metric: val_acc}", "train.early_stopping.metric must be a metric of a binary model"),
    ("train.early_stopping={metric: val_macro_f1}", "train.early_stopping.metric must be a metric of a binary"),
    ("train.early_stopping={patience: 0}", "train.early_stopping.patience must be >= 1, got 0"),
    ("train.early_stopping={min_delta: -1}", "train.early_stopping.min_delta must be >= 0"),
    ("train.early_stopping={mode: lower}", "train.early_stopping.mode must be one of min, max"),
    ("train.early_stopping={metric: val_loss, mode: max}",
     "train.early_stopping.mode must be min for val_loss (lower is better), got max; leave mode out"),
    ("train.early_stopping={metric: val_auc, mode: min}",
     "train.early_stopping.mode must be max for val_auc (higher is better), got min; leave mode out"),
    ("train.early_stopping={patiense: 2}", "train.early_stopping: unknown key 'patiense'; did you mean 'patience'?"),
    ("train.lr_schedule={kind: step, step_epochs: 2, factor: 0}", "train.lr_schedule.factor must be > 0"),
    ("train.lr_schedule={kind: step, step_epochs: 1, factor: 1e300}",
     "train.lr_schedule.factor must be > 0 and at most 1 (it lowers the rate), got 1e+300"),
    ("train.lr_schedule={kind: step, factor: 0.5}", "train.lr_schedule.step_epochs: required"),
    ("train.lr_schedule={kind: step, step_epochs: 0, factor: 0.5}", "train.lr_schedule.step_epochs must be >= 1"),
    ("train.lr_schedule={kind: linear}", "train.lr_schedule.kind must be one of step, cosine, got 'linear'"),
    ("train.lr_schedule={kind: cosine, min_lr: 5}", "train.lr_schedule.min_lr must be at most train.learning_rate"),
    ("train.lr_schedule={kind: cosine, warmup_epochs: 12}", "train.lr_schedule.warmup_epochs must be less than"),
    ("train.lr_schedule={kind: cosine, factor: 0.5}", "train.lr_schedule: unknown key 'factor'"),
    ("checkpoint.keep_best=true", "checkpoint.keep_best: true means train.early_stopping's metric"),
    ("checkpoint.keep_best=val_precission", "checkpoint.keep_best must be a metric of a binary model"),
    ("checkpoint.keep_best=3", "checkpoint.keep_best must be a metric name, true"),
])
def test_bad_values_are_one_line_errors_naming_the_field(override, message):
    with pytest.raises(SpecError) as e:
        load_spec("jobs/binary_2d.yaml", [override])
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_resolved_spec_names_every_key_and_reads_back(tmp_path):
    spec = load_spec("jobs/digits_softmax.yaml", ["train.early_stopping={metric: val_macro_f1}",
                                                  "checkpoint.keep_best=true", "train.epochs=7",
                                                  "train.lr_schedule={kind: cosine}"])
    assert spec.train.early_stopping == {"metric": "val_macro_f1", "patience": 5, "min_delta": 0.0, "mode": "max"}
    assert spec.checkpoint.keep_best == "val_macro_f1"
    assert spec.train.lr_schedule == {"kind": "cosine", "min_lr": 0.0, "epochs": 7, "warmup_epochs": 0}
    (tmp_path / "job.yaml").write_text(spec.to_yaml())
    again = load_spec(tmp_path / "job.yaml")
    assert again.raw == spec.raw and again.digest() == spec.digest()
    # unset, the new fields leave the digest of a spec written before they existed as it was
    plain = load_spec("jobs/digits_softmax.yaml")
    old = plain.to_dict()
    del old["train"]["early_stopping"], old["train"]["lr_schedule"], old["checkpoint"]["keep_best"]
    assert type(plain)(raw=old).digest() == plain.digest()


def test_a_bad_value_on_the_command_line_is_one_line_and_exit_2(lrjob_bin):
    import procs

    out = procs.run([lrjob_bin, "validate", "jobs/binary_2d.yaml", "--set", "train.early_stopping={patience: 0}"],
                    timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["lrjob: error: train.early_stopping.patience must be >= 1, got 0 "
                                               "(from --set train.early_stopping={patience: 0})"], out.stderr


# --------------------------------------------------------------------------- every world size decides alike
@pytest.mark.distributed
def test_two_workers_stop_and_export_as_the_single_process_run(ray_session, tmp_path):
    """binary_2d with a warmed-up cosine schedule, early stopping and keep_best: 2 Ray + Horovod
    workers stop after the same epoch as the in-process run, export the same epoch, and train
    the same model within the parity tolerance (the decision margins here, 7e-4 and 2e-3, are
    far above the metrics' 1e-6)."""
    from launcher.report.parity import compare

    sets = ["train.epochs=8", "checkpoint.keep_best=true",
            "train.lr_schedule={kind: cosine, min_lr: 0.01, warmup_epochs: 1}",
            "train.early_stopping={metric: val_loss, patience: 1, min_delta: 0.005}"]
    ref = run_job(load_spec("jobs/binary_2d.yaml", [*sets, "resources.workers=0"]), tmp_path / "ref")
    dist = run_job(load_spec("jobs/binary_2d.yaml", [*sets, "resources.workers=2"]), tmp_path / "dist")
    assert len(ref.history) == len(dist.history) == 6
    for key in ("stopped_early", "exported"):
        assert {k: v for k, v in ref.summary[key].items() if k != "val_loss"} == \
            {k: v for k, v in dist.summary[key].items() if k != "val_loss"}, key
    assert dist.summary["exported"]["epoch"] == 5
    report = compare(ref, dist, (), 2)
    assert report.ok, report.render()
    a, b = _exported_params(tmp_path / "ref"), _exported_params(tmp_path / "dist")
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.distributed
def test_horovodrun_ranks_stop_when_rank_0_decides(tmp_path):
    """Under horovodrun every rank runs its own epoch loop: rank 0's driver decides and tells
    the others (one allreduce before each epoch), so rank 1 stops after epoch 6 as well
    instead of waiting forever in epoch 7's first allreduce; the run completes."""
    import sys
    from pathlib import Path

    import procs

    bin_dir = Path(sys.executable).parent
    sets = ["train.epochs=8", "checkpoint.keep_best=true",
            "train.lr_schedule={kind: cosine, min_lr: 0.01, warmup_epochs: 1}",
            "train.early_stopping={metric: val_loss, patience: 1, min_delta: 0.005}"]
    r = procs.run([str(bin_dir / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", str(bin_dir / "lrjob"),
                   "worker", "jobs/binary_2d.yaml", "--output", str(tmp_path / "hvd"),
                   *(x for s in sets for x in ("--set", s))], timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((tmp_path / "hvd" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["stopped_early"]["epoch"] == 6
    assert summary["exported"]["epoch"] == 5


def test_a_lost_best_checkpoint_exports_the_last_epoch_with_a_warning(tmp_path, capsys):
    """The best epoch's checkpoint deleted by hand, the run continued for more epochs: model/
    is the last epoch's, said on stderr and in summary.json, never a model of the wrong epoch
    named as the best. (The same command on the finished run would write nothing.)"""
    import shutil

    from launcher.report.progress import Reporter

    _run(tmp_path, "checkpoint.keep_best=val_loss", "train.epochs=10")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "epoch-0006")
    capsys.readouterr()
    again = _run(tmp_path, "checkpoint.keep_best=val_loss", reporter=Reporter("quiet"))
    err = capsys.readouterr().err
    assert "lrjob: warning: the best epoch's checkpoint (epoch 6, by val_loss) cannot be read; " \
           "the model is the last epoch's (12)" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["exported"] == {"epoch": 12, "selected_by": "last epoch"}
    assert "best_checkpoint_missing" in [w["code"] for w in summary["warnings"]]
    exported = _exported_params(tmp_path / "run")
    assert all(np.array_equal(exported[n], v) for n, v in again.params.items())


def test_the_report_names_the_exported_epoch_and_the_early_stop(tmp_path):
    """report.html's summary shows the final epoch's metrics: it must say that model/ holds
    another epoch, and why training ended before train.epochs."""
    import html as html_

    _run(tmp_path, "train.early_stopping={metric: val_loss, patience: 3}", "checkpoint.keep_best=true")
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    rows = {html_.unescape(k): html_.unescape(v)
            for k, v in re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", page)}
    assert rows["final epoch"] == "9"
    assert re.fullmatch(r"epoch 6, the best by val_loss \(0\.58\d\d\); not the final epoch above \(9\): "
                        r"its metrics are in the per-epoch table", rows["exported model (model/)"])
    assert re.fullmatch(r"after epoch 9: val_loss did not improve for 3 epochs \(best 0\.58\d+ at epoch 6\)",
                        rows["stopped early"])
    _run(tmp_path, name="plain")  # neither: the last epoch, named as such, no early stop
    page = (tmp_path / "plain" / "report.html").read_text(encoding="utf-8")
    assert "<tr><th>exported model (model/)</th><td>epoch 12, the last</td></tr>" in page
    assert "stopped early" not in page


def test_a_metric_without_a_value_never_stops_the_run_and_is_a_warning(tmp_path):
    """val_auc of a validation set with one class is undefined in every epoch: the run is
    not stopped after `patience` epochs for it, trains them all, exports the last epoch
    (no epoch is best) and says why in two warnings, not 'checkpoint (epoch None) cannot be read'."""
    assert stop_reason(_hist([None] * 6, "val_auc"), Watch("val_auc", "max"), 2) is None
    assert stop_reason(_hist([None, None, 0.7, 0.6, 0.6], "val_auc"), Watch("val_auc", "max"), 2) is not None
    d = _crafted()
    one_class = Dataset(d.x_train, d.y_train, d.x_val, np.zeros_like(d.y_val), source="test")
    spec = load_spec("jobs/binary_2d.yaml", [*BASE, "train.epochs=5",
                                             "train.early_stopping={metric: val_auc, patience: 2}",
                                             "checkpoint.keep_best=true"])
    res = run_job(spec, tmp_path / "run", options=DriverOptions(data=one_class))
    assert len(res.history) == 5 and all(h["val_auc"] is None for h in res.history)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "stopped_early" not in summary and summary["exported"] == {"epoch": 5, "selected_by": "last epoch"}
    codes = {w["code"]: w["message"] for w in summary["warnings"]}
    assert codes["early_stopping_undefined"].startswith("val_auc had no value in any of the 5 epochs")
    assert "train.early_stopping never applied" in codes["early_stopping_undefined"]
    assert "no best epoch, the model is the last epoch's (5)" in codes["best_epoch_undefined"]
    assert "best_checkpoint_missing" not in codes and "None" not in json.dumps(summary["warnings"])


def test_with_min_delta_a_better_later_epoch_is_named_beside_the_exported_one(tmp_path, capsys):
    """min_delta 0.008: epoch 4 is the last to improve by more than it, yet epoch 6 has the
    lowest val_loss; the output says so instead of calling epoch 4 simply 'the best'."""
    from launcher.report.progress import Reporter

    res = _run(tmp_path, "train.early_stopping={metric: val_loss, patience: 3, min_delta: 0.008}",
               "checkpoint.keep_best=true", reporter=Reporter("human"))
    _, err = capsys.readouterr()
    losses = [h["val_loss"] for h in res.history]
    assert int(np.argmin(losses)) + 1 == 6 and len(losses) == 7
    assert re.search(r"\nlrjob: model/ holds epoch 4, the best by val_loss \(0\.58\d+\); epoch 6 reached "
                     r"0\.58\d+, better by less than min_delta 0\.008, which is not an improvement\n", err), err
    _run(tmp_path, "train.early_stopping={metric: val_loss, patience: 3}", "checkpoint.keep_best=true",
         name="no-delta", reporter=Reporter("human"))
    _, err = capsys.readouterr()
    assert "lrjob: model/ holds epoch 6, the best by val_loss" in err and "reached" not in err, err
