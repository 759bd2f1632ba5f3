"""The run header ``lrjob run`` prints on stderr (``launcher.report.progress.Reporter.header``):
epochs in the singular and plural, each rank's host, pid and device labelled, and a line for
the ranks past the eighth; and the final box's throughput, named as the median it is."""
import io
from types import SimpleNamespace as NS

import pytest

from launcher.report.progress import Reporter


def _header(epochs, ranks, startup=1.0, where=None, class_weight=None):
    spec = NS(name="job", model=NS(kind="softmax", num_classes=3, hidden=()),
              train=NS(epochs=epochs, batch_size=64, optimizer="sgd", learning_rate=0.1, lr_schedule=None, seed=1,
                       early_stopping=None, class_weight=class_weight))
    data = NS(x_train=[0] * 12345, x_val=[0] * 2, source="digits", val_name="validation", num_features=4, home=None)
    backend = NS(workers=ranks, where=where or f"{ranks} Horovod workers on 1 node", startup_seconds=startup,
                 placement=[{"rank": r, "host": "node-a", "pid": 100 + r, "device": "cpu(0)"} for r in range(ranks)])
    err = io.StringIO()
    Reporter("human", stream=io.StringIO(), err=err).header(spec, data, backend, "runs/job")
    return err.getvalue().splitlines()


@pytest.mark.parametrize("epochs, words", [(1, "1 epoch,"), (2, "2 epochs,")])
def test_epochs_are_counted_in_words(epochs, words):
    train = [line for line in _header(epochs, 2) if line.startswith("  train ")]
    assert len(train) == 1 and f"  train    {words} global batch 64" in train[0]


def test_class_weights_say_the_losses_are_not_comparable():
    """With train.class_weight the table's train_loss is weighted and val_loss is not: the header says so."""
    note = ", class weights: train_loss is weighted, val_loss is not"
    assert [line for line in _header(2, 2, class_weight="balanced") if line.startswith("  train ")][0].endswith(note)
    assert not any(note in line for line in _header(2, 2))
    # {} weighs every class 1, yet summary.json says train_loss_weighted: the header agrees
    assert [line for line in _header(2, 2, class_weight={}) if line.startswith("  train ")][0].endswith(note)


def test_row_counts_have_thousands_separators():
    assert "  data     digits: 12,345 train / 2 validation rows, 4 features" in _header(1, 2)


def test_each_rank_names_its_host_pid_and_device():
    lines = _header(3, 2)
    assert "  workers  2 Horovod workers on 1 node (ready 1.0 s after Ray)" in lines
    assert "           rank 0: host node-a, pid 100, device cpu(0)" in lines
    assert "           rank 1: host node-a, pid 101, device cpu(0)" in lines
    assert not any("more ranks" in line for line in lines)


def test_ranks_past_the_eighth_are_counted():
    lines = _header(3, 11)
    assert sum(line.startswith("           rank ") for line in lines) == 8
    assert "           and 3 more ranks (all in the run's env.json)" in lines
    assert "           and 1 more rank (all in the run's env.json)" in _header(3, 9)


def test_ranks_without_ray_have_no_ray_start_up():
    """horovodrun's ranks (ThisRankBackend: no Ray, start-up 0) show where they run, no Ray time."""
    lines = _header(3, 2, startup=0.0, where="2 Horovod processes (horovodrun)")
    assert "  workers  2 Horovod processes (horovodrun)" in lines


def test_the_final_box_names_its_throughput_a_median():
    out = io.StringIO()
    Reporter("human", stream=out, err=io.StringIO()).summary(
        {"status": "completed", "epochs_done": 2, "wall_seconds": 3.0, "samples_per_s": 12345.6,
         "final": {"val_accuracy": 0.5, "val_loss": 0.7}}, "runs/job")
    assert "| samples/s    12,346 (median of the epochs)" in out.getvalue()


@pytest.mark.parametrize("kind, names", [("softmax", ["val_macro_f1"]), ("binary", ["val_f1", "val_auc"])])
def test_the_epoch_table_names_its_validation_columns_as_metrics_jsonl_does(kind, names):
    """Every column but the epoch's, the throughput and the seconds is a key of metrics.jsonl, and
    each value sits under its name (the widest names set their column's width)."""
    spec = NS(name="job", model=NS(kind=kind, num_classes=2 if kind == "binary" else 3, hidden=()),
              train=NS(epochs=2, batch_size=64, optimizer="sgd", learning_rate=0.1, lr_schedule=None, seed=1,
                       early_stopping=None, class_weight=None))
    data = NS(x_train=[0] * 10, x_val=[0] * 2, source="digits", val_name="validation", num_features=4, home=None)
    backend = NS(workers=0, where="in-process", startup_seconds=0, placement=[])
    out = io.StringIO()
    reporter = Reporter("human", stream=out, err=io.StringIO())
    reporter.header(spec, data, backend, "runs/job")
    m = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.875, "samples_per_s": 12345.0,
         "epoch_seconds": 1234.5}  # every value distinct; the seconds wider than their name
    m.update({"val_f1": 0.8125, "val_auc": 0.9375} if kind == "binary" else {"val_macro_f1": 0.6875})
    reporter.epoch(m, 2)
    head, row = out.getvalue().splitlines()
    cols = head.split()
    assert cols == ["epoch", "train_loss", "val_loss", "val_accuracy", *names, "samples/s", "sec"]
    shown = {"epoch": "1/2", "samples/s": "12,345", "sec": "1234.50", **{n: f"{m[n]:.4f}" for n in cols[1:-2]}}
    assert len(row) == len(head) and row.split() == [shown[c] for c in cols]
    for name in cols:  # each value ends where its name ends, a blank before both (columns of 10 at least)
        end, value = head.index(name) + len(name), shown[name]
        width = max(10, len(name))
        assert head[end - width:end] == name.rjust(width) and row[end - width:end] == value.rjust(width), name


def test_a_huge_loss_keeps_its_column():
    """A diverging loss (424593.1813 is 11 characters) is shown in scientific notation, so the row
    stays under the header."""
    from launcher.report.progress import _fmt

    assert _fmt(424593.18127, 10) == " 4.246e+05" and _fmt(0.5, 10) == "    0.5000" and _fmt(-12345.6789, 10) == "-1.235e+04"
