"""The scaling map's pure parts (benchmarks/scaling.py): the grid, the figure taken from a
cell's epochs, and the JSON, report and PNG written from a synthetic result. Nothing here
runs the map."""
import json

import pytest

from benchmarks import scaling


def _cell(method, workers, model, batch, seconds):
    return {"method": method, "workers": workers, "model": model, "batch": batch, "epoch_seconds": seconds,
            "median_s": scaling.samples_per_s(1000, seconds)[0],
            "samples_per_s": scaling.samples_per_s(1000, seconds)[1]}


def _result():
    p = scaling.Plan(workers=(0, 2), batches=(64, 4096), models=("linear",), rows=1000, val_rows=10, epochs=3)
    cells = [_cell("lrjob", 0, "linear", 64, [9.0, 0.5, 0.5]),
             _cell("lrjob", 0, "linear", 4096, [9.0, 0.25, 0.25]),
             _cell("lrjob", 2, "linear", 64, [9.0, 2.0, 2.0]),           # 500/s: 0.25x in-process
             _cell("horovodrun", 2, "linear", 64, [9.0, 1.0, 1.0]),      # Ray / horovodrun = 2
             _cell("bare", 2, "linear", 64, [9.0, 1.6, 1.6]),            # Ray / bare = 1.25
             _cell("lrjob", 2, "linear", 4096, [9.0, 0.125, 0.125]),     # 8000/s: 2x in-process
             _cell("horovodrun", 2, "linear", 4096, [9.0, 0.125, 0.125]),
             {"method": "bare", "workers": 2, "model": "linear", "batch": 4096, "error": "exit 1: boom",
              "median_s": None, "samples_per_s": None}]
    return {"machine": {"cpus": 2, "load_average_start": [1.0, 2.0, 3.0], "load_average_end": [4.0, 5.0, 6.0]},
            "plan": {"workers": list(p.workers), "batches": list(p.batches), "models": list(p.models),
                     "rows": p.rows, "val_rows": p.val_rows, "epochs": p.epochs, "warmup_epochs": 1},
            "cells": cells, "seconds": 60.0}


def test_the_full_grid_is_every_worker_batch_and_model_with_three_methods_beside_in_process():
    todo = scaling.cells(scaling.plan())
    assert len(todo) == 2 * 3 * (1 + 3 * 3)
    for w in (0, 1, 2, 3):
        for model in ("linear", "mlp"):
            for b in (64, 512, 4096):
                methods = sorted(c["method"] for c in todo if (c["workers"], c["model"], c["batch"]) == (w, model, b))
                assert methods == (["lrjob"] if w == 0 else ["bare", "horovodrun", "lrjob"])
    # grouped by worker count: a change of load falls on the three methods alike
    assert [c["workers"] for c in todo] == sorted(c["workers"] for c in todo)
    quick = scaling.cells(scaling.plan(quick=True))
    assert 0 < len(quick) < len(todo) and {c["workers"] for c in quick} == {0, 2}


def test_the_figure_is_the_median_after_the_warm_up_epoch():
    assert scaling.samples_per_s(1000, [100.0, 1.0, 4.0, 2.0]) == (2.0, 500.0)
    assert scaling.samples_per_s(1000, [100.0]) == (None, None)
    with pytest.raises(ValueError, match="epochs must be >= 2"):
        scaling.Plan(epochs=1)
    with pytest.raises(ValueError, match="workers must include 0"):
        scaling.Plan(workers=(1, 2))


def test_json_report_and_png_are_written_from_a_result(tmp_path):
    paths = scaling.write_outputs(_result(), tmp_path / "out" / "s.json")
    assert [p.name for p in paths] == ["s.json", "s.md", "s.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[2].stat().st_size > 10_000
    r = json.loads(paths[0].read_text())
    q = {(x["batch"], x["workers"]): x for x in r["ratios"]}
    assert q[(64, 2)]["ray_over_horovodrun"] == pytest.approx(2.0)
    assert q[(64, 2)]["ray_over_bare"] == pytest.approx(1.25)
    assert q[(64, 2)]["ray_vs_in_process"] == pytest.approx(0.25)
    assert q[(4096, 2)]["ray_vs_in_process"] == pytest.approx(2.0) and q[(4096, 2)]["ray_over_bare"] is None
    md = paths[1].read_text()
    assert "![scaling map](s.png)" in md
    assert "| in-process | 2,000 | 4,000 |" in md
    assert "| 2 | 500 (0.25x) | 8,000 (2.00x) |" in md
    assert "| linear | 64 | 2 | 500 / 1,000 / 625 | 2.00 | 1.25 | 0.62 |" in md
    assert "at the start 1.0, 2.0, 3.0, at the end 4.0, 5.0, 6.0" in md
    assert "- bare workers 2 linear batch 4096: exit 1: boom" in md


def test_from_json_redraws_and_a_bad_file_is_one_line_exit_2(tmp_path, capsys):
    src = tmp_path / "a.json"
    scaling.write_outputs(_result(), src)
    assert scaling.main(["--from-json", str(src), "--out", str(tmp_path / "b" / "s-2026.json")]) == 0
    assert "![scaling map](s-2026.png)" in (tmp_path / "b" / "s-2026.md").read_text()
    assert (tmp_path / "b" / "s-2026.png").is_file()
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert scaling.main(["--from-json", str(bad), "--out", str(tmp_path / "c" / "s.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--from-json" in err and str(bad) in err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("doc", [{"plan": {"workers": [0]}}, {**_result(), "seconds": "x"}, []],
                         ids=["another file", "a result whose report cannot be written", "a list"])
def test_from_json_of_another_file_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, doc):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    assert scaling.main(["--from-json", str(other), "--out", str(tmp_path / "c" / "s.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a result of this script" in err
    assert not (tmp_path / "c").exists()
