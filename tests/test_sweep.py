"""Sweeps on Ray Tune (launcher/sweep.py, docs/design.md#sweeps).

Fast tier (no Ray): the plan (grid, random ranges, the job's sweep: section), one-line
errors naming the flag and field for a bad override path or value, and the resource
request that packs trials onto the CPUs.

Distributed tier (real Ray Tune, real trials): an in-process sweep in the session's Ray
with a diverging trial, ASHA and MLflow tracking, whose trial equals ``run_job`` of its
spec; a sweep driver killed (``LRJOB_FAULT`` at point ``sweep``) and resumed; one sweep
whose trials have 2 Horovod workers each, one at a time; two in-process trials that are in
their first epoch at once (fault action ``meet``); Ctrl-C landed by the fault hook (exit
130, then resume; once every trial ended, exit 0 with the table whole); a driver killed the
moment ASHA stops a trial (point ``asha``); a resume that does not read a finished trial's data."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.driver import run_job
from launcher.rundir import latest_checkpoint
from launcher.spec import load_spec
from launcher.sweep import (SweepRequest, concurrent_trials, make_plan, plan_from_args, resume_sweep, run_sweep,
                            trial_resources)
from lr_core.errors import SpecError
from procs import kill_tree

ROOT = Path(__file__).resolve().parent.parent
LRJOB = str(Path(sys.executable).parent / "lrjob")
JOB = str(ROOT / "jobs/binary_2d.yaml")
# A trial of about a second in-process: 200 rows, 3 epochs.
TINY = ["resources.workers=0", "train.epochs=3", "data.options.n_train=200", "data.options.n_val=50"]
# A learning rate that makes the loss inf in the first epoch (DivergenceError) with HIDDEN.
DIVERGES, HIDDEN = "1000", "model.hidden=[8]"


def _cli(capsys, *args):
    from launcher.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _params(run_dir):
    return latest_checkpoint(Path(run_dir))["params"]


# --------------------------------------------------------------------------- the plan
def test_grid_is_the_product_of_its_fields_and_each_trial_spec_is_validated():
    plan = plan_from_args(JOB, TINY, SweepRequest(grid=("train.learning_rate=0.01,0.1,1", "train.batch_size=16,64")))
    assert [t.id for t in plan.trials] == [f"t{i:03d}" for i in range(6)]
    assert plan.trials[0].overrides == ("train.learning_rate=0.01", "train.batch_size=16")
    assert plan.trials[5].values == {"train.learning_rate": 1.0, "train.batch_size": 64}
    assert plan.metric == "val_accuracy" and plan.mode == "max"
    spec = plan.trial_spec(plan.trials[3])
    assert (spec.train.learning_rate, spec.train.batch_size, spec.train.epochs) == (0.1, 64, 3)
    # list values keep their commas
    hidden = plan_from_args(JOB, TINY, SweepRequest(grid=("model.hidden=[4, 4],[8]",)))
    assert [plan.trial_spec(t).model.hidden for t in hidden.trials] == [(4, 4), (8,)]


def test_random_draws_are_seeded_inside_the_range_and_on_its_scale():
    def plan(seed):
        return plan_from_args(JOB, TINY, SweepRequest(
            grid=("train.batch_size=16,32",), ranges=("train.learning_rate=1e-3:1:log", "train.epochs=1:4:int"),
            random=5, seed=seed, asha="val_loss"))

    a = plan(7)
    assert len(a.trials) == 10 and a.metric == "val_loss" and a.mode == "min" and a.asha == "val_loss"
    assert a.trials == plan(7).trials and a.trials != plan(8).trials  # seeded
    lrs = [t.values["train.learning_rate"] for t in a.trials]
    assert all(1e-3 <= v <= 1 for v in lrs) and all(t.values["train.epochs"] in (1, 2, 3, 4) for t in a.trials)


def test_the_jobs_sweep_section_gives_the_same_plan_and_lrjob_run_ignores_it(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(Path(JOB).read_text() + "sweep:\n  grid: {train.learning_rate: [0.01, 0.1]}\n"
                   "  range: {train.momentum: '0:0.9'}\n  random: 2\n  seed: 3\n  asha: val_loss\n"
                   "  concurrent: 1\n")
    plan = plan_from_args(str(job), TINY, SweepRequest())
    same = plan_from_args(JOB, TINY, SweepRequest(grid=("train.learning_rate=0.01,0.1",),
                                                  ranges=("train.momentum=0:0.9",), random=2, seed=3,
                                                  asha="val_loss", concurrent=1))
    assert plan.trials == same.trials and (plan.asha, plan.concurrent) == ("val_loss", 1)
    assert load_spec(job).train.learning_rate == 0.1  # the job itself, for lrjob run


@pytest.mark.parametrize("grid,message", [
    ("train.learning_rat=0.1,1", "unknown field 'learning_rat'; did you mean 'learning_rate'?"),
    ("trian.epochs=1,2", "unknown section 'trian'; did you mean 'train'?"),
    ("train=1,2", "name a field, e.g. --grid train.epochs=..."),
])
def test_a_misspelt_grid_field_ends_with_the_near_match(capsys, tmp_path, grid, message):
    """The whole line, as `--set` gives it: before, "did you mean 'learning_rate'?; name a spec field
    such as train.learning_rate" followed the suggestion."""
    code, out, err = _cli(capsys, "sweep", JOB, "--workers", "0", "--output", tmp_path / "s", "--grid", grid)
    assert code == 2 and err == f"lrjob: error: --grid {grid.partition('=')[0]}: {message}\n", err


@pytest.mark.parametrize("args,message", [
    (["--grid", "train.learning_rat=0.1,1"], "--grid train.learning_rat: unknown field 'learning_rat'; did you "
                                             "mean 'learning_rate'?"),
    (["--grid", "trian.epochs=1,2"], "--grid trian.epochs: unknown section 'trian'; did you mean 'train'?"),
    (["--grid", "train.learning_rate=0.1,-1"], "--grid train.learning_rate=-1: train.learning_rate must be > 0"),
    (["--grid", "train.optimizer=sgd,adamw"], "--grid train.optimizer=adamw: train.optimizer must be one of"),
    (["--grid", "train.batch_size=16,,64"], "--grid train.batch_size: an empty value"),
    (["--grid", "name=a,b"], "--grid name: a sweep cannot vary name"),
    (["--range", "train.learning_rate=0:1:log", "--random", "2"], "--range train.learning_rate: a log range "
                                                                  "needs LOW > 0"),
    (["--range", "train.momentum=0.5:2", "--random", "2", "--seed", "1"], "--range train.momentum=1.22062: "
                                                                         "train.momentum must be in [0, 1)"),
    (["--range", "train.learning_rate=1e-3:1"], "--range needs --random K"),
    (["--grid", "train.epochs=1,2", "--asha", "val_acc"], "--asha 'val_acc': not a metric of a binary model"),
    ([], "nothing to sweep"),
])
def test_a_bad_sweep_is_one_line_naming_the_field_and_writes_nothing(capsys, tmp_path, args, message):
    code, out, err = _cli(capsys, "sweep", JOB, "--workers", "0", "--output", tmp_path / "s", *args)
    assert code == 2, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert err.startswith(f"lrjob: error: {message}"), err
    assert not (tmp_path / "s").exists()


def test_the_readmes_asha_example_draws_learning_rates_across_its_range():
    """README "Sweeps": the ASHA example's draws span its range, so that ASHA has poor trials to
    stop (seed 0 drew four rates below 0.02 of 1e-3..1)."""
    import re
    import shlex

    from launcher.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    line = next(x for x in re.sub(r"\\\n\s*", "", readme).splitlines()
                if x.startswith("lrjob sweep ") and "--asha" in x)
    args = build_parser().parse_args(shlex.split(line)[1:])
    plan = plan_from_args(ROOT / args.job, [*args.overrides, f"resources.workers={args.workers}"],
                          SweepRequest(ranges=tuple(args.ranges), random=args.random, seed=args.seed, asha=args.asha))
    rates = sorted(t.values["train.learning_rate"] for t in plan.trials)
    assert plan.asha == "val_loss" and len(rates) == 4
    assert rates[0] < 0.01 and rates[-1] > 0.3, rates  # a rate too low to learn in 4 epochs, and a good one


def test_a_bad_sweep_section_names_the_key(capsys, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(Path(JOB).read_text() + "sweep:\n  grids: {train.learning_rate: [0.1]}\n")
    code, _, err = _cli(capsys, "sweep", job, "--workers", "0", "--output", tmp_path / "s")
    assert code == 2 and f"{job}: unknown key 'sweep.grids'; did you mean 'grid'?" in err, err
    job.write_text(Path(JOB).read_text() + "sweep:\n  grid: {train.batch_size: [16, 0]}\n")
    code, _, err = _cli(capsys, "sweep", job, "--workers", "0", "--output", tmp_path / "s")
    assert code == 2 and "sweep.grid train.batch_size=0: train.batch_size must be >= 1" in err, err
    assert not (tmp_path / "s").exists()


def test_a_relative_data_path_in_a_grid_means_the_same_file_when_resumed_from_another_folder(tmp_path,
                                                                                              monkeypatch):
    from launcher.sweep import SweepPlan

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("one.csv", "two.csv"):
        (tmp_path / "a" / name).write_text("x1,x2,label\n0.1,0.2,0\n0.3,0.1,1\n")
    job = tmp_path / "a" / "job.yaml"
    job.write_text("name: csvjob\nmodel: {kind: binary}\ndata: {source: csv, path: one.csv, label_column: label}\n"
                   "resources: {workers: 0}\n")
    monkeypatch.chdir(tmp_path / "a")
    spec = load_spec(job)
    plan = make_plan(spec, SweepRequest(grid=("data.path=one.csv,two.csv",)))
    saved = json.loads(json.dumps(plan.to_dict()))  # as plan.json holds it
    monkeypatch.chdir(tmp_path / "b")  # lrjob sweep --resume from elsewhere
    again = SweepPlan.from_dict(saved)
    assert [again.trial_spec(t).data.path for t in again.trials] == [str(tmp_path / "a" / "one.csv"),
                                                                    str(tmp_path / "a" / "two.csv")]
    assert again.trials[1].overrides == (f"data.path={tmp_path / 'a' / 'two.csv'}",)


@pytest.mark.parametrize("given", ["file:./mlruns", "file:mlruns", None])
def test_a_relative_tracking_store_is_absolute_in_the_plan_so_a_resume_from_elsewhere_logs_there(
        tmp_path, monkeypatch, given):
    """``tracking.mlflow.uri: file:./mlruns``, ``--track file:mlruns`` or the default store: plan.json
    names the store of the sweep's folder; ``lrjob sweep --resume`` from another one logs there too."""
    from launcher.sweep import SweepPlan, _SweepTracker

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    track = [f"tracking.mlflow.uri={given}"] if given else ["tracking.mlflow={}"]
    plan = plan_from_args(JOB, [*TINY, *track], SweepRequest(grid=("train.learning_rate=0.01,0.1",)))
    store = (tmp_path / "a" / "mlruns").as_uri()
    saved = json.loads(json.dumps(plan.to_dict()))  # as plan.json holds it
    assert saved["base"]["tracking"]["mlflow"]["uri"] == store
    monkeypatch.chdir(tmp_path / "b")  # lrjob sweep --resume from elsewhere
    again = SweepPlan.from_dict(saved)
    assert [again.trial_spec(t).tracking.mlflow["uri"] for t in again.trials] == [store, store]
    (tmp_path / "sweep").mkdir()
    parent = _SweepTracker.open(again, tmp_path / "sweep")
    assert parent.uri == store and parent.run_id is not None
    assert (tmp_path / "a" / "mlruns").is_dir() and not (tmp_path / "b" / "mlruns").exists()


@pytest.mark.parametrize("login", ["KEY:SECRET", "KEY:SE/CRET"])  # an AWS secret may hold '/'
def test_a_login_in_a_swept_uri_is_in_no_table_plot_or_printed_line_and_the_trial_keeps_it(tmp_path, monkeypatch,
                                                                                         login):
    """sweep.json, sweep.csv and sweep.png (the parent MLflow run's artifacts), the printed
    table and the MLflow params of the sweep and of its trials show a swept URI without its
    ``user:secret@`` part; the trial's spec keeps it."""
    import io

    import launcher.sweep as sweep
    from launcher.tracking import _param_text, flatten

    job = tmp_path / "job.yaml"
    job.write_text("name: csvjob\nmodel: {kind: binary}\ndata: {source: csv, path: a.csv, label_column: label}\n"
                   f"resources: {{workers: 0}}\ntracking: {{mlflow: {{uri: {(tmp_path / 'mlruns').as_uri()}}}}}\n")
    uris = [f"s3://{login}@bucket/a.csv", f"s3://{login}@bucket/b.csv"]
    plan = make_plan(load_spec(job), SweepRequest(grid=(f"data.path={','.join(uris)}",)))
    assert [plan.trial_spec(t).data.path for t in plan.trials] == uris  # what the trial runs
    (tmp_path / "trials/t000").mkdir(parents=True)
    (tmp_path / "trials/t000/metrics.jsonl").write_text('{"epoch": 1, "val_accuracy": 0.5}\n')
    ledger = {"t000": {"status": "completed"},
              "t001": {"status": "failed", "error": f"OSError: {uris[1]}: access denied"}}
    plotted = []
    monkeypatch.setattr(sweep, "_plot", lambda plan_, rows: plotted.append(json.dumps(rows)) or None)
    rows = sweep._write_table(plan, tmp_path, ledger, plots=True)
    out = io.StringIO()
    sweep._print_table(rows, plan, sweep._best(plan, rows), tmp_path, out)
    parent = sweep._SweepTracker.open(plan, tmp_path)  # the sweep's MLflow run and its params
    logged = parent.client.get_run(parent.run_id).data.params
    assert logged["sweep.grid.data.path"] == json.dumps(["s3://bucket/a.csv", "s3://bucket/b.csv"])
    shown = {"sweep.json": (tmp_path / "sweep.json").read_text(), "sweep.csv": (tmp_path / "sweep.csv").read_text(),
             "sweep.png": plotted[0], "stdout": out.getvalue(), "MLflow params": json.dumps(logged),
             # what each trial's run logs as its params (MlflowTracker._start)
             "trial params": json.dumps([_param_text(v) for t in plan.trials
                                         for v in flatten(plan.trial_spec(t).to_dict()).values()])}
    for where, text in shown.items():
        assert "CRET" not in text and "KEY" not in text, (where, text)
    assert "s3://bucket/a.csv" in shown["sweep.csv"] and "s3://bucket/b.csv" in shown["sweep.json"]
    assert "best: t000 (data.path=s3://bucket/a.csv)" in shown["stdout"], shown["stdout"]
    assert "t001 failed: OSError: s3://bucket/b.csv: access denied" in shown["stdout"]


def test_sweep_png_gives_long_values_distinct_short_ticks_that_do_not_overlap(tmp_path):
    """24 data.path URIs of 70 characters (two alike in their last 30) and two list values: each
    value its own tick, labelled by what tells it apart in at most TICK_CHARS characters, slanted so
    that neighbours do not overlap (the panel widens with its ticks), inside the picture."""
    import math

    import matplotlib.pyplot as plt

    import launcher.sweep as sweep

    job = tmp_path / "job.yaml"
    job.write_text("name: csvjob\nmodel: {kind: binary}\ndata: {source: csv, path: a.csv, label_column: label}\n"
                   "resources: {workers: 0}\n")
    paths = [f"s3://bucket/experiments/2026-11/{team}/part-{i:04d}/features/train.csv"
             for team, i in [("ads", 1), ("search", 1)] + [("ads", i) for i in range(2, 24)]]
    plan = make_plan(load_spec(job), SweepRequest(grid=(f"data.path={','.join(paths)}",
                                                        "model.hidden=[64, 64, 64, 64],[8]")))
    rows = [{"values": t.values, "best": 0.5 + i / 100, "status": "completed"} for i, t in enumerate(plan.trials)]
    fig = sweep._figure(plan, rows)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()][:3] == \
            ["…ads/part-0001…", "…search/part-0001…", "…ads/part-0002…"]
        for ax, count in zip(fig.axes, (24, 2)):
            ticks = [t for t in ax.get_xticklabels() if t.get_text()]
            texts = [t.get_text() for t in ticks]
            assert len(set(texts)) == len(texts) == count, texts
            assert all(len(t.partition(": ")[2] if t[0].isdigit() else t) <= sweep.TICK_CHARS for t in texts), texts
            for t in ticks:  # inside the picture
                box = t.get_window_extent(renderer)
                assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1, (t.get_text(), box, fig.bbox)
            # parallel slanted labels anchored on one line clear each other when the tick spacing
            # times sin(angle) is at least a label's height
            angle = math.radians(ticks[0].get_rotation())
            height = max(t.get_window_extent(renderer).height for t in ticks) if angle == 0 else \
                ticks[0].get_fontsize() * fig.dpi / 72 * 1.2
            step = abs(ax.transData.transform((1, 0))[0] - ax.transData.transform((0, 0))[0])
            if angle == 0:
                widths = [t.get_window_extent(renderer).width for t in ticks]
                assert step >= max(widths), (texts, step, widths)
            else:
                assert step * math.sin(angle) >= height, (texts, step, angle, height)
    finally:
        plt.close(fig)
    assert sweep._plot(plan, rows)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trial_reserves_what_its_workers_need_so_two_cores_take_two_inprocess_trials_or_one_of_two_workers():
    inproc = load_spec(JOB, ["resources.workers=0"])
    two = load_spec(JOB, ["resources.workers=2", "resources.cpus_per_worker=1"])
    assert trial_resources(inproc) == [{"CPU": 1.0}]
    assert trial_resources(two) == [{}, {"CPU": 1.0}, {"CPU": 1.0}]  # the trial's driver waits, workers work
    assert trial_resources(load_spec(JOB, ["resources.workers=1", "resources.gpus_per_worker=1"])) == \
        [{}, {"CPU": 1.0, "GPU": 1.0}]
    assert (concurrent_trials(2, inproc), concurrent_trials(2, two), concurrent_trials(4, two)) == (2, 1, 2)
    assert concurrent_trials(2, inproc, limit=1) == 1


def test_the_sweeps_stopper_survives_tunes_state_saves_while_it_holds_the_old_signal_handlers():
    """Tune saves its state, stopper included, with cloudpickle every 10 s or so; the stopper
    sees the sweep's signal state, which holds the previous handlers (and they may hold locks)."""
    import signal
    import threading

    from ray import cloudpickle
    from ray.tune.stopper import NoopStopper

    from launcher.sweep import _Interrupt

    interrupt = _Interrupt()
    interrupt._old = {signal.SIGTERM: threading.Lock()}  # a handler's state that cannot be pickled
    stopper = interrupt.stopper()
    assert stopper.stop_all() is False
    interrupt.signal = signal.SIGINT
    assert stopper.stop_all() is True
    assert isinstance(cloudpickle.loads(cloudpickle.dumps(stopper)), NoopStopper)


def test_a_trial_actor_ended_by_sigterm_exits_at_once_and_prints_nothing(tmp_path):
    """Tune ends trial actors still stopping with SIGTERM; Ray's handler raises SystemExit
    wherever the actor is, so an ``except BaseException`` (or a weakref callback) caught it and
    a traceback reached the sweep's terminal (seen in CI after a Ctrl-C)."""
    import subprocess

    script = tmp_path / "actor.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "def ray_handler(signum, frame):\n"  # what a Ray worker installs (ray/_private/worker.py main_loop)
        "    raise SystemExit(1)\n"
        "signal.signal(signal.SIGTERM, ray_handler)\n"
        "from launcher.sweep import end_quietly_on_sigterm\n"
        "end_quietly_on_sigterm()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "except BaseException as e:\n"
        "    print('caught', repr(e))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert (done.returncode, done.stdout, done.stderr) == (143, "", "")


def test_the_first_ctrl_c_says_running_trials_are_stopped_and_a_cut_one_resumes(capsys):
    """Tune kills a trial's actor ~5 s after the experiment ends: an epoch may be cut."""
    import signal

    from launcher.sweep import _Interrupt

    interrupt = _Interrupt()
    interrupt._handle(signal.SIGINT, None)
    assert interrupt.signal == signal.SIGINT
    assert capsys.readouterr().err == ("lrjob: stopping the sweep: running trials are stopped; one cut mid-epoch "
                                       "continues from its newest checkpoint on --resume (Ctrl-C again to stop at "
                                       "once)\n")
    with pytest.raises(KeyboardInterrupt):
        interrupt._handle(signal.SIGINT, None)


def test_ctrl_c_after_every_trial_ended_lets_the_table_complete_and_the_result_stand(tmp_path):
    """A sweep whose trials have all ended (run here with ``run_job``): ``--resume`` writes its
    table without Ray, and a SIGINT landed just before the table (fault point ``table``) neither
    cuts it nor turns the exit code into 130."""
    import procs

    from launcher.sweep import PLAN_FILE, _write_json

    plan = plan_from_args(JOB, TINY, SweepRequest(grid=("train.learning_rate=0.05,0.1",)))
    out = tmp_path / "s"
    (out / "trials").mkdir(parents=True)
    _write_json(out / PLAN_FILE, plan.to_dict())
    for t in plan.trials:
        run_job(plan.trial_spec(t), out / "trials" / t.id)
    env = {**os.environ, "LRJOB_FAULT": json.dumps({"at": "table", "action": "interrupt"})}
    done = procs.run([LRJOB, "sweep", "--resume", str(out)], timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == "lrjob: every trial had ended when the sweep was interrupted; its " \
                                           "result stands", done.stderr
    assert "Traceback" not in done.stderr and "did not end" not in done.stderr
    assert "best: t00" in done.stdout and (out / "sweep.png").is_file()
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in doc["trials"]] == ["completed", "completed"]


def test_a_second_ctrl_c_while_the_table_is_printed_ends_with_no_trial_unfinished(tmp_path, monkeypatch,
                                                                                    sigint_default):
    """In-process ``resume_sweep`` of a sweep whose trials have all ended: the first SIGINT lands
    just before the table (fault point ``table``), the second while it is printed; the sweep
    ends with ``SweepInterrupted`` naming no unfinished trial, and sweep.json is whole."""
    import signal

    import launcher.sweep as sweep
    from lr_core import faults

    plan = plan_from_args(JOB, TINY, SweepRequest(grid=("train.learning_rate=0.05,0.1",)))
    out = tmp_path / "s"
    (out / "trials").mkdir(parents=True)
    sweep._write_json(out / sweep.PLAN_FILE, plan.to_dict())
    for t in plan.trials:
        run_job(plan.trial_spec(t), out / "trials" / t.id)
    printed = sweep._print_table

    def print_and_signal(*args):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the table is printed
        printed(*args)

    monkeypatch.setattr(sweep, "_print_table", print_and_signal)
    monkeypatch.setenv("LRJOB_FAULT", "")
    faults.arm(json.dumps({"at": "table", "action": "interrupt"}))
    try:
        with pytest.raises(sweep.SweepInterrupted) as e:
            resume_sweep(out)
    finally:
        faults.arm(None)
    assert e.value.unfinished == [] and e.value.path == out
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in doc["trials"]] == ["completed", "completed"]
    assert signal.getsignal(signal.SIGINT) is sigint_default  # the sweep put back the handler it found


def test_a_second_ctrl_c_that_cut_the_table_of_ended_trials_says_so(capsys, monkeypatch, tmp_path):
    import launcher.cli as cli
    from launcher.sweep import SweepInterrupted

    def cut(args):
        raise SweepInterrupted(tmp_path, [])

    monkeypatch.setattr(cli, "_sweep", cut)
    code, _, err = _cli(capsys, "sweep", "--resume", tmp_path)
    assert code == 130 and err == (f"lrjob: interrupted while the table was written; every trial had ended; write "
                                   f"the table again with: lrjob sweep --resume {tmp_path}\n"), err


def test_resume_of_a_folder_that_is_no_sweep_is_one_line(capsys, tmp_path):
    code, _, err = _cli(capsys, "sweep", "--resume", tmp_path)
    assert code == 2 and err.startswith(f"lrjob: error: --resume {tmp_path}: not a sweep directory"), err
    code, _, err = _cli(capsys, "sweep", JOB, "--resume", tmp_path, "--grid", "train.epochs=1,2")
    assert code == 2 and "drop JOB, --grid" in err, err


@pytest.mark.parametrize("args,flag", [
    (["JOB", "--output", "URI"], "--output"),
    (["JOB", "--sweeps-dir", "URI"], "--sweeps-dir"),
    (["--resume", "URI"], "--resume"),
])
def test_a_storage_uri_as_sweep_directory_is_one_line_and_makes_no_folder(capsys, tmp_path, monkeypatch, args,
                                                                           flag):
    monkeypatch.chdir(tmp_path)
    uri = "s3://lrjob:Zq9SECRET@bucket/sweep?endpoint_override=127.0.0.1:9&scheme=http"
    args = [{"JOB": JOB, "URI": uri}.get(a, a) for a in args]
    if args[0] == JOB:
        args += ["--workers", "0", "--set", "train.epochs=1", "--grid", "train.learning_rate=0.1,1"]
    code, out, err = _cli(capsys, "sweep", *args)
    assert (code, out) == (2, "")
    assert err == (f"lrjob: error: {flag} s3://bucket/sweep: a sweep directory must be a local folder (a storage URI "
                   f"is for lrjob run --output); give a path such as sweeps/NAME\n")
    assert list(tmp_path.iterdir()) == [], "nothing written here"


# --------------------------------------------------------------------------- real sweeps
@pytest.mark.distributed
def test_an_inprocess_sweep_reports_each_trial_stops_early_survives_a_failure_and_tracks(
        ray_session, tmp_path, capsys, monkeypatch):
    """Trials one at a time (deterministic ASHA): t000 completes, t001 diverges and fails, and
    the sweep goes on: t002 (a learning rate 1000x smaller) is stopped by ASHA after its first
    epoch. t000 is named best, and its parameters equal run_job of its own job.yaml.
    The stopped t002 is the last trial, and its run's end is slowed past the 5 s that Tune
    gives the actors still stopping when a sweep ends: it still ends ``interrupted``, tracked."""
    from mlflow.tracking import MlflowClient

    from launcher.rundir import RunDir

    # the trial actors are armed from the sweep's environment (faults.arm); this process is not
    monkeypatch.setenv("LRJOB_FAULT", json.dumps({"at": "cleanup", "status": "interrupted", "action": "sleep",
                                                  "seconds": 12}))

    uri = (tmp_path / "mlruns").as_uri()
    spec = load_spec(JOB, TINY + [HIDDEN, f"tracking.mlflow.uri={uri}", "tracking.mlflow.experiment=sw"])
    plan = make_plan(spec, SweepRequest(grid=(f"train.learning_rate=0.5,{DIVERGES},0.0005",), asha="val_loss",
                                        concurrent=1))
    result = run_sweep(plan, tmp_path / "s")
    out = capsys.readouterr().out
    rows = {r["trial"]: r for r in result.rows}
    assert {t: r["status"] for t, r in rows.items()} == {"t000": "completed", "t001": "failed", "t002": "stopped"}
    assert rows["t002"]["epochs_done"] == 1 and rows["t000"]["epochs_done"] == 3
    assert (RunDir(tmp_path / "s/trials/t002").summary() or {}).get("status") == "interrupted"
    assert "loss became inf" in rows["t001"]["error"] and f"t001 failed: {rows['t001']['error']}" in out
    assert result.best["trial"] == "t000" and result.ran == ["t000", "t001", "t002"]
    history = [json.loads(x) for x in (tmp_path / "s/trials/t000/metrics.jsonl").read_text().splitlines()]
    assert rows["t000"]["best"] == min(h["val_loss"] for h in history)
    assert f"best: t000 (train.learning_rate=0.5) val_loss {rows['t000']['best']:.4f}" in out
    # the table, written
    doc = json.loads((tmp_path / "s/sweep.json").read_text())
    assert doc["best"]["trial"] == "t000" and [r["status"] for r in doc["trials"]] == ["completed", "failed",
                                                                                      "stopped"]
    csv_lines = (tmp_path / "s/sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("trial,train.learning_rate,overrides,best_val_loss,epoch,status,run_dir")
    assert len(csv_lines) == 4 and (tmp_path / "s/sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "s/tune").is_dir() and not (Path.home() / "ray_results").exists()
    # parity: the trial is the run of its resolved spec (the plan's, which its job.yaml holds)
    trial_spec = plan.trial_spec(plan.trials[0])
    assert load_spec(tmp_path / "s/trials/t000/job.yaml", run_file=True).diff(trial_spec) == []
    ref = run_job(trial_spec.with_overrides(["tracking.mlflow=null"]), tmp_path / "ref")
    # env.json names the command that ran the trial: the sweep's (here pytest's), not a Ray worker's
    assert json.loads((tmp_path / "s/trials/t000/env.json").read_text())["argv"] == sys.argv
    got = _params(tmp_path / "s/trials/t000")
    assert got.keys() == ref.params.keys()
    for k in ref.params:
        np.testing.assert_array_equal(got[k], ref.params[k], err_msg=k)
    # MLflow: a parent run for the sweep, each trial's run its child
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sw")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("lrjob.kind") == "sweep"]
    assert len(parent) == 1 and parent[0].data.tags["lrjob.best_trial"] == "t000"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert sorted(children) == ["t000", "t001", "t002"]
    assert children["t000"].data.params["train.learning_rate"] == "0.5"
    assert [m.step for m in client.get_metric_history(children["t000"].info.run_id, "val_loss")] == [1, 2, 3]


@pytest.mark.distributed
def test_a_killed_sweep_driver_resumes_with_the_remaining_trials_only(ray_session, tmp_path):
    """The sweep's driver is SIGKILLed right after it recorded its first trial (fault point
    ``sweep``, not a timer); --resume runs the two others and leaves the first as it was."""
    out = tmp_path / "s"
    env = {**os.environ, "LRJOB_FAULT": json.dumps({"at": "sweep", "trials": 1, "action": "kill"})}
    import subprocess

    # the session's Ray, joined by address: the kill ends this driver's job (its trial actors), not Ray
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen([LRJOB, "sweep", JOB, *sum((["--set", o] for o in TINY), []), "--grid",
                             "train.learning_rate=0.05,0.1,0.2", "--concurrent", "1", "--output", "s",  # relative
                             "--address", address],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        kill_tree(proc)
    assert proc.returncode == -9, err
    recorded = json.loads((out / "sweep.json").read_text())["trials"]
    assert [r["status"] for r in recorded] == ["completed", "pending", "pending"]
    first = (out / "trials/t000/summary.json").read_bytes()
    result = resume_sweep(out)
    assert result.ran == ["t001", "t002"]
    assert [r["status"] for r in result.rows] == ["completed"] * 3
    assert (out / "trials/t000/summary.json").read_bytes() == first  # not run again
    assert sorted(p.name for p in (out / "tune").iterdir()) == ["attempt-1", "attempt-2"]


def _interval(run_dir) -> tuple[int, int]:
    """When a trial wrote its run directory: the times of its first and last file."""
    times = [p.stat().st_mtime_ns for p in Path(run_dir).rglob("*") if p.is_file()]
    return min(times), max(times)


def _sweep_cli(ray_session, tmp_path, faults_, *args):
    """``lrjob sweep JOB --set TINY... ARGS --output s`` in a subprocess that joins the session's Ray
    (its end ends its trial actors, not Ray), with ``LRJOB_FAULT`` armed."""
    import procs

    env = {**os.environ, "LRJOB_FAULT": json.dumps(faults_)}
    address = ray_session.get_runtime_context().gcs_address
    return procs.run([LRJOB, "sweep", JOB, *sum((["--set", o] for o in TINY), []), *args, "--output", "s",
                      "--address", address], timeout=240, env=env, cwd=tmp_path)


@pytest.mark.distributed
def test_ctrl_c_ends_the_sweep_with_130_a_consistent_table_and_the_command_that_resumes_it(ray_session, tmp_path):
    """t000 (1 epoch) and t001 (4 epochs) run at once (they meet at their first step); the end of
    t000 is recorded, and right then the sweep's driver gets SIGINT (fault action ``interrupt``),
    while t001 is held at the start of its epoch 2 until that moment. t001 ends ``interrupted``
    with its checkpoints, t002 never started; --resume continues t001 and runs t002."""
    fired = tmp_path / "fired"
    done = _sweep_cli(ray_session, tmp_path, [
        {"at": "step", "epoch": 1, "step": 1, "action": "meet", "dir": str(tmp_path / "meet"), "count": 2,
         "timeout": 90},
        {"at": "step", "epoch": 2, "step": 1, "action": "wait", "until": str(fired), "timeout": 90},
        {"at": "sweep", "trials": 1, "action": "interrupt", "once": str(fired)}],
        "--grid", "train.epochs=1,4,2", "--set", "resources.cpus_per_worker=2")
    out = tmp_path / "s"
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (f"lrjob: interrupted; 2 trial(s) did not end; continue with: "
                                            f"lrjob sweep --resume {out}")
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in doc["trials"]] == ["completed", "unfinished", "pending"]
    assert doc["best"]["trial"] == "t000"
    t001 = json.loads((out / "trials/t001/summary.json").read_text())
    assert t001["status"] == "interrupted" and 1 <= t001["epochs_done"] < 4
    assert not (out / ".lock").exists() and not (out / "trials/t001/.lock").exists()
    assert "t001" in done.stdout and "unfinished" in done.stdout  # the table, printed as at the end

    result = resume_sweep(out)
    assert result.ran == ["t001", "t002"]
    assert [r["status"] for r in result.rows] == ["completed"] * 3
    env = json.loads((out / "trials/t001/env.json").read_text())
    assert env["resumed_from"].endswith(f"epoch-{t001['epochs_done']:04d}"), "continued, not started again"
    epochs = [json.loads(x)["epoch"] for x in (out / "trials/t001/metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


@pytest.mark.distributed
def test_ctrl_c_once_tune_has_returned_every_trial_leaves_the_sweeps_result_standing(ray_session, tmp_path):
    """SIGINT at the moment the sweep's driver, its trials all ended on Ray, starts the table
    (fault point ``table``): the table, plot and best run as without it, exit 0."""
    done = _sweep_cli(ray_session, tmp_path, {"at": "table", "action": "interrupt"},
                      "--grid", "train.epochs=1,2")
    out = tmp_path / "s"
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == "lrjob: every trial had ended when the sweep was interrupted; its " \
                                           "result stands", done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "did not end" not in done.stderr
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in doc["trials"]] == ["completed", "completed"] and doc["best"] is not None
    assert (out / "sweep.png").is_file() and "best: t00" in done.stdout


@pytest.mark.distributed
def test_a_trial_asha_stopped_is_not_run_again_when_the_driver_dies_before_tune_stops_it(ray_session, tmp_path):
    """ASHA stops t001 after its first epoch; the sweep's driver is SIGKILLed the moment that
    decision is taken (fault point ``asha``), before Tune has stopped the trial or called any
    callback. sweep.json already says ``stopped``: --resume leaves t001 as it was."""
    killed = _sweep_cli(ray_session, tmp_path, {"at": "asha", "trial": "t001", "action": "kill"},
                        "--grid", "train.learning_rate=0.5,0.0005", "--asha", "val_loss", "--concurrent", "1")
    out = tmp_path / "s"
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [r["status"] for r in json.loads((out / "sweep.json").read_text())["trials"]] == ["completed", "stopped"]
    result = resume_sweep(out)
    assert result.ran == []
    assert [(r["status"], r["epochs_done"]) for r in result.rows] == [("completed", 3), ("stopped", 1)]


@pytest.mark.distributed
def test_a_resume_reads_the_data_of_the_trials_it_runs_only(ray_session, tmp_path, monkeypatch):
    """t000 ended (its run directory says completed) and its CSV is gone since: --resume runs t001
    and does not read t000's file."""
    from launcher.sweep import PLAN_FILE

    for name in ("a.csv", "b.csv"):
        rows = "\n".join(f"{i / 40:.3f},{(i * 7 % 40) / 40:.3f},{int(i % 2)}" for i in range(40))
        (tmp_path / name).write_text("x1,x2,label\n" + rows + "\n")
    job = tmp_path / "job.yaml"
    job.write_text("name: csvjob\nmodel: {kind: binary}\ndata: {source: csv, path: a.csv, label_column: label}\n"
                   "resources: {workers: 0}\ntrain: {epochs: 1, batch_size: 10}\n")
    monkeypatch.chdir(tmp_path)
    plan = make_plan(load_spec(job), SweepRequest(grid=("data.path=a.csv,b.csv",)))
    out = tmp_path / "s"
    (out / "trials").mkdir(parents=True)
    (out / PLAN_FILE).write_text(json.dumps(plan.to_dict()))
    run_job(plan.trial_spec(plan.trials[0]), out / "trials/t000")  # a driver killed after t000 ended
    (tmp_path / "a.csv").unlink()
    result = resume_sweep(out)
    assert result.ran == ["t001"]
    assert [r["status"] for r in result.rows] == ["completed", "completed"]


@pytest.mark.distributed
def test_two_inprocess_trials_run_at_the_same_time(ray_session, tmp_path, monkeypatch):
    """The session's Ray has 4 CPUs and each trial asks for 2 (cpus_per_worker 2): the 2-core
    machine with one CPU per trial. Both trials must be inside their first epoch at once: each
    stops at its first step until two trials have arrived there (fault action ``meet``); trials
    run one after the other would leave the first alone until the hang guard fails it."""
    meet = tmp_path / "meet"
    monkeypatch.setenv("LRJOB_FAULT", json.dumps({"at": "step", "epoch": 1, "step": 1, "action": "meet",
                                                  "dir": str(meet), "count": 2, "timeout": 90}))
    spec = load_spec(JOB, [*TINY, "train.epochs=1", "resources.cpus_per_worker=2"])
    plan = make_plan(spec, SweepRequest(grid=("train.learning_rate=0.1,0.2",)))
    artifacts = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "artifacts"
    before = set(artifacts.glob("*/*"))
    result = run_sweep(plan, tmp_path / "s")
    assert [(r["status"], r["error"]) for r in result.rows] == [("completed", None)] * 2
    assert len({p.name.split("-")[0] for p in meet.iterdir()}) == 2, "two trial processes met"
    # Tune's staging folders in the Ray session's directory (its trials' working directories) are gone
    assert set(artifacts.glob("*/*")) - before == set()


@pytest.mark.distributed
def test_trials_of_two_horovod_workers_equal_the_inprocess_run_of_their_spec(ray_session, tmp_path):
    """Two trials of 2 workers each (placement groups of 2 bundles); each trial's parameters
    equal the in-process run of its job.yaml within the parity tolerance
    (docs/design.md#parity-rule). With 2 CPUs a worker a trial takes the session's 4 CPUs (as
    a trial of 2 one-CPU workers takes a 2-core machine): the trials never overlap."""
    spec = load_spec(JOB, ["resources.workers=2", "resources.cpus_per_worker=2", "train.epochs=2",
                           "data.options.n_train=64", "data.options.n_val=16"])
    plan = make_plan(spec, SweepRequest(grid=("train.learning_rate=0.05,0.2",)))
    result = run_sweep(plan, tmp_path / "s")
    assert [r["status"] for r in result.rows] == ["completed", "completed"]
    first, second = sorted(_interval(r["run_dir"]) for r in result.rows)
    assert first[1] < second[0], "the second trial started after the first one ended"
    for t, r in zip(plan.trials, result.rows):
        env = json.loads((Path(r["run_dir"]) / "env.json").read_text())
        assert env["workers"] == 2 and len(env["placement"]) == 2
        trial_spec = plan.trial_spec(t)
        ref = run_job(trial_spec.with_overrides(["resources.workers=0"]), tmp_path / f"ref-{r['trial']}")
        got = _params(r["run_dir"])
        for k in ref.params:
            assert np.max(np.abs(got[k] - ref.params[k])) <= 1e-5, k


@pytest.mark.slow
@pytest.mark.distributed
def test_a_3x2_grid_on_digits_with_2_workers_per_trial_keeps_parity_in_every_trial(ray_session, tmp_path):
    """The acceptance sweep: 3 learning rates x 2 batch sizes on digits_softmax, 2 Horovod
    workers per trial; every trial completes and equals the in-process run of its job.yaml
    within the parity tolerance."""
    spec = load_spec(ROOT / "jobs/digits_softmax.yaml", ["resources.workers=2", "train.epochs=2"])
    plan = make_plan(spec, SweepRequest(grid=("train.learning_rate=0.01,0.1,1", "train.batch_size=64,256")))
    result = run_sweep(plan, tmp_path / "s")
    assert [r["status"] for r in result.rows] == ["completed"] * 6 and result.best is not None
    for t, r in zip(plan.trials, result.rows):
        trial_spec = plan.trial_spec(t)
        ref = run_job(trial_spec.with_overrides(["resources.workers=0"]), tmp_path / f"ref-{r['trial']}")
        got = _params(r["run_dir"])
        for k in ref.params:
            assert np.max(np.abs(got[k] - ref.params[k])) <= 1e-5, (r["trial"], k)


def test_a_sweep_asking_more_gpus_than_the_machine_has_is_refused_before_ray_starts(tmp_path):
    """The same check as run's and parity's, before Ray starts (nothing would place the trials). In
    a process of its own: a Ray this test process has up would be used as it is, unchecked."""
    import procs

    from launcher.backends.cluster import embedded_gpus

    assert embedded_gpus() is not None, "Ray's GPU detection is reachable before ray.init"
    per = embedded_gpus() + 1
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = procs.run([str(Path(sys.executable).parent / "lrjob"), "sweep", "jobs/binary_synthetic.yaml", "--workers", "1",
                   "--gpus-per-worker", f"{per:g}", "--grid", "train.learning_rate=0.1,0.2",
                   "--output", str(tmp_path / "sweep")], timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines()[-1].startswith(f"lrjob: error: resources.gpus_per_worker: 1 worker x {per:g} GPU = "
                                                f"{per:g} GPUs asked, this machine has {per - 1:g}; "), r.stderr
    assert not (tmp_path / "sweep").exists()
