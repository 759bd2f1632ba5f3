"""The lrjob command as a user runs it: real subprocesses (the bad-input table in-process,
through the same ``main``), real files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def lrjob(*args, cwd=ROOT, timeout=300):
    exe = Path(sys.executable).parent / "lrjob"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_help_has_examples():
    r = lrjob("run", "--help")
    assert r.returncode == 0 and "example:" in r.stdout and "--workers" in r.stdout


def test_version_prints_the_installed_version_and_exits_0():
    import tomllib
    from importlib.metadata import version

    import launcher

    r = lrjob("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"lrjob {version('lrjob')}\n", "")
    # one version: pyproject.toml's, launcher.__version__ (what --version and the k8s image tag read)
    # and the installed package's
    with open(ROOT / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert launcher.__version__ == declared == version("lrjob")


def test_run_workers_0_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    r = lrjob("run", "jobs/binary_synthetic.yaml", "--workers", "0", "--output", out, "--set", "train.epochs=3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    for name in ("job.yaml", "env.json", "metrics.jsonl", "summary.json", "model/model-symbol.json",
                 "model/model-0000.params", "model/meta.json", "checkpoints/epoch-0003/params.npz"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 3
    assert summary["final"]["val_accuracy"] == lines[-1]["val_accuracy"]
    env = json.loads((out / "env.json").read_text())
    assert env["versions"]["mxnet"] == "1.9.1" and env["workers"] == 0
    assert len(list((out / "checkpoints").iterdir())) == 3


def test_json_lines_match_metrics_file(tmp_path):
    out = tmp_path / "run"
    r = lrjob("run", "jobs/digits_softmax.yaml", "--workers", "0", "--output", out, "--json",
              "--set", "train.epochs=2")
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    stored = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2
    for e, s in zip(epochs, stored):
        assert e["val_accuracy"] == s["val_accuracy"] and e["train_loss"] == s["train_loss"]
    assert events[-1]["event"] == "summary"


def test_json_ends_a_failed_run_with_an_error_event(tmp_path, capsys, monkeypatch):
    """A script reading run --json's events learns why the run ended: the last event names the
    error as stderr does, with the exit code; without --json stdout stays empty."""
    from launcher.cli import main

    monkeypatch.chdir(ROOT)
    args = ["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--set", "train.epochs=x",
            "--output", str(tmp_path / "run")]
    capsys.readouterr()
    assert main([*args, "--json"]) == 2
    out, err = capsys.readouterr()
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event == {"event": "error", "message": err.strip().removeprefix("lrjob: error: "), "exit_code": 2}
    assert "train.epochs" in event["message"] and len(err.splitlines()) == 1
    assert main(args) == 2 and capsys.readouterr().out == ""
    monkeypatch.setattr(sys, "stdout", None)  # stdout closed (>&-): the error still ends it as bad input
    assert main([*args, "--json"]) == 2
    monkeypatch.undo()


def test_an_option_of_another_command_shows_this_commands_usage():
    """`lrjob evaluate RUN --id-column x` (predict's option): evaluate's usage, not the top level's."""
    r = lrjob("evaluate", "runs/any", "--id-column", "x")
    assert r.returncode == 2 and r.stderr.startswith("usage: lrjob evaluate "), r.stderr
    assert r.stderr.rstrip().endswith("unrecognized arguments: --id-column x"), r.stderr
    r = lrjob("--bogus", "evaluate", "runs/any")  # before the command: the top level's
    assert r.returncode == 2 and r.stderr.startswith("usage: lrjob [-h]"), r.stderr


@pytest.mark.parametrize("args,suffix", [
    (["--set", "train.epochs=x"], " (from --set train.epochs=x)"),
    (["--set", "train.epochs=3", "--set", "train.epochs=x"], " (from --set train.epochs=x)"),  # the one applied
    (["--workers", "-1"], " (from --workers -1)"),
    (["--set", "model.kind=foo"], " (from --set model.kind=foo)"),
    (["--set", "train.lr=1"], ""),  # says --set already
    (["--set", "data.options.n_train=x", "--set", "data.options={n_train: y}"],
     " (from --set data.options={n_train: y})"),  # the mapping that replaced the field is the one applied
    (["--gpus-per-worker", "-1"], " (from --gpus-per-worker -1)"),  # as typed, not -1.0
])
def test_a_bad_value_given_on_the_command_line_names_where(capsys, monkeypatch, args, suffix):
    """The user looks at the command, not at the spec file, when the command line gave the value."""
    monkeypatch.chdir(ROOT)
    code, stderr = _main(capsys, "validate", "jobs/binary_synthetic.yaml", *args)
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert stderr.rstrip("\n").endswith(suffix) and stderr.count("(from ") == (1 if suffix else 0), stderr


@pytest.mark.parametrize("command", [["sweep", "--grid", "train.learning_rate=0.1,0.2"], ["k8s"]],
                         ids=["sweep", "k8s"])
def test_sweep_and_k8s_name_the_command_line_value_too(capsys, monkeypatch, command):
    """As `run` and `validate` do: the bad value came from --set, so the message says so, and
    nothing starts (a sweep's Ray, a manifest on stdout)."""
    monkeypatch.chdir(ROOT)
    code, stderr = _main(capsys, command[0], "jobs/binary_synthetic.yaml", *command[1:], "--set", "train.epochs=x")
    assert code == 2 and len(stderr.splitlines()) == 1, stderr
    assert stderr.rstrip("\n").endswith(" (from --set train.epochs=x)"), stderr


def test_k8s_names_the_set_that_gave_a_bad_value_not_a_flag_applied_after_it(capsys, monkeypatch):
    """k8s checks the spec with its --set values before it applies --workers: a bad --set value is
    blamed on the --set, not on the --workers that was fine."""
    monkeypatch.chdir(ROOT)
    code, stderr = _main(capsys, "k8s", "jobs/binary_synthetic.yaml", "--set", "resources.workers=-1", "--workers", 2)
    assert code == 2 and stderr.rstrip("\n").endswith("(from --set resources.workers=-1)"), stderr
    code, stderr = _main(capsys, "k8s", "jobs/binary_synthetic.yaml", "--workers", 0)  # k8s's own check: the flag
    assert code == 2 and stderr.rstrip("\n").endswith("(from --workers 0)"), stderr


def test_only_runs_has_its_sort_value_attached():
    """`lrjob runs --sort -wall` reads the value; any other command's error shows the arguments as
    given, not as `--sort=-x`."""
    r = lrjob("validate", "jobs/binary_synthetic.yaml", "--sort", "-val_loss")
    assert r.returncode == 2 and "--sort=" not in r.stderr, r.stderr
    r = lrjob("runs", "--dir", str(ROOT / "jobs"), "--sort", "-wall")
    assert r.returncode == 0 and "unrecognized" not in r.stderr, r.stderr


def test_a_run_stopped_before_its_first_checkpoint_gives_the_command_that_starts_it_again(
        tmp_path, capsys, monkeypatch):
    import launcher.driver
    from launcher import cli

    monkeypatch.chdir(ROOT)

    def interrupted(*a, **k):
        raise KeyboardInterrupt  # no checkpoint: nothing to resume

    monkeypatch.setattr(launcher.driver, "run_job", interrupted)
    out = tmp_path / "my runs" / "a"
    capsys.readouterr()
    assert cli.main(["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--output", str(out)]) == 130
    assert capsys.readouterr().err == (f"lrjob: interrupted before the first checkpoint; start it again with: lrjob run "
                                       f"jobs/binary_synthetic.yaml --workers 0 --output '{out}'\n")
    # a URI's login is not printed (the credentials come from the environment)
    assert cli.main(["run", "jobs/binary_synthetic.yaml", "--output", "s3://me:s3cret@bucket/run?scheme=http"]) == 130
    err = capsys.readouterr().err
    assert "s3cret" not in err and err.endswith("--output 's3://bucket/run?scheme=http'\n"), err


def test_a_run_stopped_in_its_first_epoch_names_the_folder_it_made(tmp_path, capsys, monkeypatch):
    """Without --output, the same command again would make a second folder beside the stopped
    one: the command given names the folder the run made, which stays."""
    import json as _json

    from launcher import cli
    from lr_core import faults

    monkeypatch.chdir(ROOT)
    faults.arm(_json.dumps({"at": "step", "epoch": 1, "step": 3, "rank": 0, "action": "interrupt"}))
    try:
        capsys.readouterr()
        code = cli.main(["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--runs-dir", str(tmp_path)])
    finally:
        faults.arm(None)
    err = capsys.readouterr().err
    (made,) = list(tmp_path.iterdir())
    assert code == 130 and err.endswith(f"start it again with: lrjob run jobs/binary_synthetic.yaml --workers 0 "
                                        f"--runs-dir {tmp_path} --output {made}\n"), err
    assert cli.main(["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--runs-dir", str(tmp_path), "--output",
                     str(made), "--quiet"]) == 0
    assert list(tmp_path.iterdir()) == [made]


def test_json_ends_an_interrupted_or_crashed_run_with_its_event(tmp_path, capsys, monkeypatch):
    import launcher.driver
    from launcher import cli

    monkeypatch.chdir(ROOT)
    args = ["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--json", "--output", str(tmp_path / "run")]

    def interrupted(*a, **k):
        e = KeyboardInterrupt()
        e.checkpoint, e.resume = "epoch-0001", "lrjob run --resume RUN"
        raise e

    monkeypatch.setattr(launcher.driver, "run_job", interrupted)
    capsys.readouterr()
    assert cli.main(args) == 130
    out = capsys.readouterr().out
    assert [json.loads(line) for line in out.splitlines()] == [
        {"event": "interrupted", "resume": "lrjob run --resume RUN", "exit_code": 130}]

    def crashed(_):
        raise RuntimeError("boom")

    monkeypatch.setitem(cli.COMMANDS, "run", crashed)
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [
        {"event": "error", "message": "internal error: RuntimeError: boom", "exit_code": 1}]
    assert "Traceback" in err and "please report it" in err


def _bad(tmp_path, ro: Path):
    csv_pm = tmp_path / "pm.csv"
    csv_pm.write_text("a,b,label\n" + "".join(f"{i},{i},{1 if i % 2 else -1}\n" for i in range(10)))
    csv_nan = tmp_path / "nan.csv"
    csv_nan.write_text("a,b,label\n1,2,1\n3,nan,0\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: {kind: binary\n")
    return [
        (["run", bad_yaml, "--workers", "0"], "malformed YAML"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--set", "train.epohcs=3"], "did you mean 'epochs'"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--set", "train.epochs=0"], "train.epochs must be >= 1"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--set", "train.learning_rate=1e299"],
         "train.learning_rate must be at most 1,000 (the upper bound)"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--set", "data.source=csv",
          "--set", "data.options={}", "--set", f"data.path={csv_pm}"], "data.label_map: {-1: 0, 1: 1}"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--set", "data.source=csv",
          "--set", "data.options={}", "--set", f"data.path={csv_nan}"], "not finite"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--set", "data.source=csv",
          "--set", "data.options={}", "--set", "data.path=/nonexistent.csv"], "file not found"),
        (["run", "jobs/mnist_softmax.yaml", "--workers", "0", "--set", f"data.path={tmp_path}"], "has no train-images"),
        (["run", "missing.yaml"], "job spec not found"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "0", "--output", ro / "x"], "not writable"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "1", "--address", "127.0.0.1:1"], "no Ray cluster answers"),
        (["run", "jobs/binary_synthetic.yaml", "--workers", "x"], "invalid int value"),
    ]


def _read_only_dir(path: Path) -> Path:
    """A directory nobody may write to, root included (root ignores mode bits, so as
    root the folder is made immutable; the fixture below lifts that again)."""
    path.mkdir()
    os.chmod(path, 0o500)
    if os.geteuid() == 0:
        r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, f"chattr +i {path} failed (needed to test a read-only --output as root): {r.stderr}"
    return path


@pytest.fixture
def read_only(tmp_path):
    path = _read_only_dir(tmp_path / "ro")
    try:
        yield path
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def _main(capsys, *args):
    """``lrjob`` in this process (the script calls the same ``main``): exit code, stderr.
    The table runs in-process: an interpreter start per case would only add seconds;
    the tests above and below run the real script."""
    from launcher.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def test_bad_input_table(tmp_path, read_only, capsys, monkeypatch):
    """Every case: exit 2, one line naming the problem, no traceback, no run directory."""
    assert not os.access(read_only, os.W_OK)
    monkeypatch.chdir(ROOT)
    for args, message in _bad(tmp_path, read_only):
        code, stderr = _main(capsys, *args, "--runs-dir", tmp_path / "runs")
        assert code == 2, (args, stderr)
        assert message in stderr, (args, stderr)
        assert "Traceback" not in stderr, stderr
        error_lines = [x for x in stderr.splitlines() if x.startswith("lrjob: error")]
        assert len(error_lines) == 1, stderr
        assert not (tmp_path / "runs").exists(), args
        if "--output" in args:
            assert not Path(args[args.index("--output") + 1]).exists(), args


def test_parity_refuses_more_workers_than_cpus_before_the_reference_run(tmp_path, capsys, monkeypatch):
    from launcher.backends.cluster import machine_cpus

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    n = machine_cpus() + 1
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", n, "--keep", tmp_path / "kept")
    assert code == 2 and f"{n} workers x 1 CPU = {n} CPUs asked" in stderr, stderr
    assert "reference run" not in stderr and not (tmp_path / "kept").exists(), stderr


def test_parity_takes_its_worker_count_from_the_spec(tmp_path, capsys, monkeypatch):
    """Without --workers, parity compares against the spec's resources.workers (2 when it is 0):
    here one more than the machine's CPUs, so the refusal names that count."""
    from launcher.backends.cluster import machine_cpus

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    n = max(3, machine_cpus() + 1)  # never 2, parity's count when the spec has none
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--set", f"resources.workers={n}",
                         "--keep", tmp_path / "kept")
    assert code == 2 and f"{n} workers x 1 CPU = {n} CPUs asked" in stderr, stderr
    assert "reference run" not in stderr and not (tmp_path / "kept").exists(), stderr


@pytest.mark.parametrize("driver, visible, want", [(4, None, 4), (4, ["0"], 1), (4, ["0", "1"], 2), (4, [], 0),
                                                  (1, ["0", "1"], 1), (0, None, 0)])
def test_embedded_gpus_counts_as_ray_does(monkeypatch, driver, visible, want):
    """The NVIDIA driver's devices, at most as many as CUDA_VISIBLE_DEVICES names (Ray's own rule when
    it starts: ResourceAndLabelSpec._get_current_node_accelerator)."""
    import ray._private.accelerators as accelerators

    from launcher.backends.cluster import embedded_gpus

    class Manager:
        @staticmethod
        def get_current_node_num_accelerators():
            return driver

        @staticmethod
        def get_current_process_visible_accelerator_ids():
            return visible

    monkeypatch.setattr(accelerators, "get_accelerator_manager_for_resource", lambda name: Manager)
    assert embedded_gpus() == want
    from launcher.backends.cluster import ResourceError, check_embedded_gpus

    check_embedded_gpus(want, 1)  # as many as there are: fine
    check_embedded_gpus(5, 0)     # none asked: fine
    has = f"{driver}, {len(visible)} of them visible through CUDA_VISIBLE_DEVICES" if want < driver else f"{want}"
    with pytest.raises(ResourceError) as e:
        check_embedded_gpus(want + 1, 1)
    workers = f"{want + 1} worker{'s' if want + 1 != 1 else ''}"
    assert str(e.value).startswith(f"resources.gpus_per_worker: {workers} x 1 GPU = {want + 1} GPUs asked, "
                                   f"this machine has {has}; "), str(e.value)


def test_parity_refuses_gpus_this_machine_lacks_before_the_reference_run(tmp_path, capsys, monkeypatch):
    from launcher.backends.cluster import embedded_gpus

    gpus = embedded_gpus()
    assert gpus is not None, "Ray's GPU detection is reachable before ray.init"
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    per = gpus + 1  # one worker asking more GPUs than the machine has
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", 1, "--gpus-per-worker", per,
                         "--keep", tmp_path / "kept")
    assert code == 2, stderr
    assert f"resources.gpus_per_worker: 1 worker x {per:g} GPU = {per:g} GPUs asked, this machine has {gpus:g}" in stderr
    assert "reference run" not in stderr and not (tmp_path / "kept").exists(), stderr


def test_parity_refuses_a_keep_path_that_is_a_file_before_the_reference_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    (tmp_path / "afile").write_text("x")
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", 1, "--keep", tmp_path / "afile")
    assert code == 2 and stderr.splitlines() == [
        f"lrjob: error: --keep {tmp_path / 'afile'}: exists and is not a folder; give a folder to keep both runs in"], stderr
    assert (tmp_path / "afile").read_text() == "x"
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", 1, "--keep",
                         tmp_path / "afile" / "sub")
    assert code == 2 and stderr.startswith(f"lrjob: error: --keep {tmp_path / 'afile' / 'sub'}: cannot make the "
                                           f"folder ("), stderr
    # a check that fails before writing anything leaves no folder of its own, and says nothing was kept
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", 1, "--set", "data.source=csv",
                         "--set", "data.options={}",
                         "--set", f"data.path={tmp_path / 'missing.csv'}", "--keep", tmp_path / "new" / "a" / "b")
    assert code == 2 and "missing.csv" in stderr and "runs kept" not in stderr, stderr
    assert not (tmp_path / "new").exists(), "the parents it made go too"
    # a path through ".." makes no folder on the way; a folder that cannot be made leaves no parent
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", 1, "--set", "data.source=csv",
                         "--set", "data.options={}", "--set", f"data.path={tmp_path / 'missing.csv'}",
                         "--keep", f"{tmp_path}/via/../other")
    assert code == 2 and not (tmp_path / "via").exists() and not (tmp_path / "other").exists(), stderr
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", 1, "--keep",
                         tmp_path / "made" / ("x" * 300))
    assert code == 2 and "cannot make the folder" in stderr and not (tmp_path / "made").exists(), stderr
    # the finished runs of an earlier check are not read again as if trained now (a stale verdict)
    for names in (["workers-1"], ["workers-0", "workers-1"]):
        for name in names:
            (tmp_path / "kept" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "kept" / name / "summary.json").write_text('{"status": "completed"}')
        code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", 1, "--keep",
                             tmp_path / "kept")
        assert code == 2 and stderr.splitlines() == [
            f"lrjob: error: --keep {tmp_path / 'kept'}: already holds the finished {' and '.join(names)} of an "
            f"earlier check, which would be read again rather than trained; give a new folder, or remove them"], stderr
    # the same folder reached through a missing one and "..": still that folder, still refused
    code, stderr = _main(capsys, "parity", "jobs/binary_synthetic.yaml", "--workers", 1, "--keep",
                         f"{tmp_path}/nope/../kept")
    assert code == 2 and "already holds the finished" in stderr, stderr


def test_a_missing_job_names_an_example_of_its_own_command(capsys):
    for command in ("run", "parity", "validate"):
        code, stderr = _main(capsys, command)
        assert code == 2 and f"e.g. lrjob {command} jobs/" in stderr, stderr


def test_not_writable_output_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = lrjob("run", "jobs/binary_synthetic.yaml", "--workers", "0", "--output", f / "run")
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr


def test_validate_prints_resolved_spec():
    r = lrjob("validate", "jobs/binary_synthetic.yaml", "--set", "train.epochs=4")
    assert r.returncode == 0
    import yaml
    doc = yaml.safe_load(r.stdout)
    assert doc["train"]["epochs"] == 4 and doc["train"]["init"] == "xavier"


def test_determinism_two_runs_identical(tmp_path):
    from launcher.driver import run_job
    from launcher.spec import load_spec

    spec = load_spec("jobs/binary_synthetic.yaml", ["resources.workers=0", "train.epochs=3"])
    a = run_job(spec, output=tmp_path / "a")
    b = run_job(spec, output=tmp_path / "b")
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])
    assert [m["val_loss"] for m in a.history] == [m["val_loss"] for m in b.history]


def test_doctor_checks_the_stack_and_names_the_fix(tmp_path):
    import os

    r = lrjob("doctor")
    assert "[  ok] horovod: horovod 0.28.1: MXNet yes, Gloo yes" in r.stdout, r.stdout
    assert "[  ok] mxnet" in r.stdout and "[  ok] ray" in r.stdout
    # a success is output (stdout), beside the checks it sums up; nothing on stderr
    assert r.returncode == 0 and r.stdout.endswith("\nall checks passed\n") and r.stderr == "", r.stderr
    env = dict(os.environ, LRJOB_DATA_HOME=str(tmp_path))  # an empty cache
    broken = subprocess.run([str(Path(sys.executable).parent / "lrjob"), "doctor"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert broken.returncode == 1
    assert "[FAIL] data" in broken.stdout and "fix: python -m launcher.datacache ensure" in broken.stdout
    assert broken.stderr.endswith("1 check(s) failed\n") and "all checks passed" not in broken.stdout


def test_a_closed_pipe_ends_the_run_quietly_as_completed(tmp_path):
    """`lrjob run JOB | head -1`: the reader leaves after the first line; every later line
    meets a closed pipe. The run still trains every epoch, exits 0 and says completed."""
    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "lrjob"
    p = subprocess.Popen([str(exe), "run", "jobs/binary_2d.yaml", "--workers", "0", "--output", str(out),
                          "--set", "train.epochs=3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    first = p.stdout.readline()
    p.stdout.close()  # what head does after one line
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0, err
    assert first.split()[0] == "epoch"
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 3


def test_a_broken_pipe_that_is_not_our_output_is_a_failure(tmp_path):
    """A BrokenPipeError from a socket or file of the run's (here: exporting the model) is no
    reader gone away: exit 1 and summary.json says failed."""
    out = tmp_path / "run"
    code = ("import sys; from launcher import cli; from launcher.rundir import RunDir\n"
            "def export(*a, **k): raise BrokenPipeError(32, 'Broken pipe')\n"
            "RunDir.export_model = export\n"
            f"sys.exit(cli.main(['run', 'jobs/binary_2d.yaml', '--workers', '0', '--output', {str(out)!r}, "
            "'--set', 'train.epochs=1']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_a_broken_pipe_on_stdout_is_the_reader_going_away(tmp_path):
    """A write to a stdout whose reader left raises BrokenPipeError out of a command: exit 0."""
    code = ("import sys; from launcher import cli\n"
            "def chatty(args):\n"
            "    for _ in range(10000): print('x' * 100)\n"
            "    return 3\n"
            "cli.COMMANDS['runs'] = chatty\n"
            "sys.exit(cli.main(['runs']))")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err, err


# --------------------------------------------------------------------------- the embedded Ray's CPUs
def test_an_embedded_ray_declares_the_machines_cpus_unless_told_to_oversubscribe(monkeypatch):
    from launcher.backends import cluster

    monkeypatch.setattr(cluster, "machine_cpus", lambda: 2)
    assert cluster.embedded_cpus(1, 1) == 2 and cluster.embedded_cpus(2, 1) == 2
    with pytest.raises(cluster.ResourceError) as e:
        cluster.embedded_cpus(64, 1)
    assert str(e.value) == ("resources.workers: 64 workers x 1 CPU = 64 CPUs asked, this machine has 2; lower "
                            "--workers or resources.cpus_per_worker, join a cluster with --address, or pass "
                            "--oversubscribe to share the CPUs anyway (slower, for tests)")
    with pytest.raises(cluster.ResourceError, match="2 workers x 1.5 CPU = 3 CPUs asked"):
        cluster.embedded_cpus(2, 1.5)
    assert cluster.embedded_cpus(64, 1, oversubscribe=True) == 64
    assert cluster.embedded_cpus(2, 1.5, oversubscribe=True) == 3
    assert cluster.machine_cpus.__module__ and cluster.RaySession(None, 64, 1).oversubscribe is False


@pytest.mark.parametrize("files,want", [
    ({}, None),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 2),                    # 1.5 CPUs: 2 for Ray, rounded up
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage"}, None),
])
def test_machine_cpus_honours_the_cgroup_cpu_quota(tmp_path, files, want):
    from launcher.backends import cluster

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cpus = len(os.sched_getaffinity(0))
    assert cluster.machine_cpus(tmp_path) == (cpus if want is None else min(cpus, want))


def test_more_workers_than_cpus_is_refused_before_anything_starts(tmp_path):
    import procs  # kills the whole tree on a time-out (were the check gone, Ray and n workers would start)

    n = len(os.sched_getaffinity(0)) + 1
    r = procs.run([str(Path(sys.executable).parent / "lrjob"), "run", "jobs/binary_synthetic.yaml", "--workers",
                   str(n), "--output", str(tmp_path / "run")], timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith(f"lrjob: error: resources.workers: {n} workers x 1 CPU = {n} CPUs asked, this "
                               f"machine has {n - 1}; ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "run").exists(), "nothing is left behind"


def test_more_gpus_than_the_machine_has_are_refused_before_ray_starts(tmp_path):
    """A local run asking more GPUs than Ray would find is refused by the same check as parity's,
    before ray.init (after it, the refusal would speak of "the Ray cluster" and GPU nodes)."""
    import procs

    from launcher.backends.cluster import embedded_gpus

    assert embedded_gpus() is not None, "Ray's GPU detection is reachable before ray.init"
    per = embedded_gpus() + 1
    r = procs.run([str(Path(sys.executable).parent / "lrjob"), "run", "jobs/binary_synthetic.yaml", "--workers", "1",
                   "--gpus-per-worker", f"{per:g}", "--output", str(tmp_path / "run")], timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith(f"lrjob: error: resources.gpus_per_worker: 1 worker x {per:g} GPU = {per:g} GPUs "
                               f"asked, this machine has {per - 1:g}; ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "run").exists(), "nothing is left behind"


def test_oversubscribe_is_explained_in_help():
    for command in ("run", "parity"):
        r = lrjob(command, "--help")
        text = " ".join(r.stdout.split())
        assert "--oversubscribe" in text and "more workers x cpus_per_worker than this machine has CPUs" in text


@pytest.mark.distributed
def test_a_dead_address_is_refused_where_this_process_has_a_ray_up(ray_session, tmp_path, capsys, monkeypatch):
    """In a process that already has a Ray (a library caller's, this test session's), lrjob uses
    that Ray; an ``--address`` that nothing answers at is still one line, exit 2, nothing written."""
    assert ray_session.is_initialized()
    monkeypatch.chdir(ROOT)
    code, stderr = _main(capsys, "run", "jobs/binary_synthetic.yaml", "--workers", "1", "--address", "127.0.0.1:1",
                         "--runs-dir", tmp_path / "runs")
    assert code == 2 and "no Ray cluster answers" in stderr, stderr
    assert [x for x in stderr.splitlines() if x.startswith("lrjob: error")] == stderr.strip().splitlines()[-1:]
    assert not (tmp_path / "runs").exists() and ray_session.is_initialized()


@pytest.mark.distributed
def test_oversubscribe_starts_more_workers_than_cpus(tmp_path):
    import procs

    n = len(os.sched_getaffinity(0)) + 1
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # the embedded Ray, not a cluster
    r = procs.run([str(Path(sys.executable).parent / "lrjob"), "run", "jobs/binary_2d.yaml", "--workers", str(n),
                   "--oversubscribe", "--set", "train.epochs=1", "--output", str(tmp_path / "run"), "--quiet"],
                  timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    env_json = json.loads((tmp_path / "run" / "env.json").read_text())
    assert [p["rank"] for p in env_json["placement"]] == list(range(n))
