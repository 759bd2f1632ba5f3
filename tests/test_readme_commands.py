"""README.md's commands as a user types them, each claim asserted: the quickstart's `run`
and `predict` lines and the "Your own data" walkthrough as written, `lrjob validate --data`,
`predict` on CSV/NPY/NPZ input, `doctor --gpu`, Fashion-MNIST through `data.path` or the
cache folder, `RAY_ADDRESS`, the Ray auth token, and `lrjob parity`.

Tests that start Ray or Horovod are marked `distributed`; each Ray head started here runs
in its own process group and its own HOME (so no token file is left in the real HOME)
and is stopped in every case."""
import gzip
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from launcher.driver import run_job
from launcher.spec import load_spec
from lr_core.data import write_idx
from procs import start_ray_head, stop_session

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LRJOB = str(BIN / "lrjob")
AUTH_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "LRJOB_ADDRESS",
             "RAY_API_SERVER_ADDRESS")


def lrjob(*args, env=None, timeout=300):
    return subprocess.run([LRJOB, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(capsys, *args):
    """The CLI's ``main`` in this process (what the ``lrjob`` script calls): exit code, stdout,
    stderr. Used where a fresh interpreter per call would only add start-up time."""
    from launcher.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _error_lines(stderr):
    return [x for x in stderr.splitlines() if x.startswith("lrjob: error")]


def _own_home_env(home: Path, **extra) -> dict:
    """This environment without any Ray address or token settings, HOME moved to ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env["MPLCONFIGDIR"] = str(home / ".matplotlib")
    env["HOME"] = str(home)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env.update(extra)
    return env


# --------------------------------------------------------------------------- validate
def test_validate_data_prints_the_resolved_spec_with_absolute_paths_and_checks_the_data(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 3))
    rows = "".join(f"{a:.5f},{b:.5f},{c:.5f},{int(a + b > 0)}\n" for a, b, c in x)
    (tmp_path / "train.csv").write_text("f0,f1,f2,label\n" + rows)
    job = tmp_path / "job.yaml"
    job.write_text("name: csvjob\nmodel: {kind: binary}\n"
                   "data: {source: csv, path: train.csv, val_fraction: 0.2}\n")
    code, out, err = cli(capsys, "validate", job, "--data")  # the path is relative to the job file
    assert code == 0, err
    doc = yaml.safe_load(out)
    assert doc["data"]["path"] == str(tmp_path / "train.csv")
    assert doc["train"]["optimizer"] == "sgd" and doc["train"]["batch_size"] == 64  # defaults filled
    assert doc["checkpoint"] == {"every_epochs": 1, "keep": 3, "every_steps": 0, "keep_best": None}
    assert "data ok: 24 train / 6 validation rows, 3 features" in err


@pytest.mark.parametrize("content,message", [
    ("f0,f1,label\n1,2,1\n3,4,-1\n", "re-encode with data.label_map: {-1: 0, 1: 1}"),
    ("f0,f1,label\n1,2,1\n3,oops,0\n", "line 3, column 'f1': 'oops' is not a number"),
    ("f0,f1,label\n1,2,1\n3,inf,0\n", "row 2, f1: value inf is not finite"),
])
def test_validate_data_on_a_bad_csv_is_one_line_exit_2(tmp_path, capsys, content, message):
    (tmp_path / "bad.csv").write_text(content)
    job = tmp_path / "job.yaml"
    job.write_text("name: badcsv\nmodel: {kind: binary}\ndata: {source: csv, path: bad.csv}\n")
    code, _, err = cli(capsys, "validate", job)  # without --data the data is not read
    assert code == 0, err
    code, out, err = cli(capsys, "validate", job, "--data")
    assert code == 2 and out == "", (out, err)  # the error alone, not under the printed spec
    errors = _error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert str(tmp_path / "bad.csv") in errors[0] and message in errors[0], errors[0]


def test_validate_data_names_the_row_of_a_bad_binary_label(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("f0,f1,label\n1,2,1\n3,4,-1\n")
    job = tmp_path / "job.yaml"
    job.write_text("name: badcsv\nmodel: {kind: binary}\ndata: {source: csv, path: bad.csv}\n")
    code, _, err = cli(capsys, "validate", job, "--data")
    assert code == 2 and "row 2" in err and "label" in err, err


# --------------------------------------------------------------------------- prepare
def test_prepare_converts_once_reuses_and_rebuilds_a_damaged_folder(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    pq.write_table(pa.table({"a": rng.standard_normal(40), "b": rng.standard_normal(40),
                             "label": rng.integers(0, 2, 40)}), tmp_path / "t.parquet")
    job = tmp_path / "job.yaml"
    job.write_text("name: pq\nmodel: {kind: binary}\n"
                   "data: {source: parquet, path: t.parquet, cache: prepared, val_fraction: 0.25}\n")
    code, out, err = cli(capsys, "prepare", job)
    assert code == 0, err
    home = Path(out.strip())
    assert home.parent == tmp_path / "prepared" and (home / "manifest.json").is_file()
    assert "# prepared: 30 train / 10 validation rows, 2 features (float32)" in err
    code, out, _ = cli(capsys, "prepare", job, "--json")
    info = json.loads(out)
    assert code == 0 and info["prepared"] == str(home) and info["train_rows"] == 30 and info["reused"]
    with open(home / "train-x.bin", "r+b") as f:  # a bit flips on disk
        f.seek(5)
        byte = f.read(1)
        f.seek(5)
        f.write(bytes([byte[0] ^ 1]))
    code, out, err = cli(capsys, "prepare", job)
    assert code == 0 and Path(out.strip()) == home
    assert "fail their checksum (damaged); preparing it again" in err


def test_prepare_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    for data, message in [
        ("{source: parquet, path: missing.parquet, cache: c}", "missing.parquet: file not found"),
        ("{source: csv, path: t.csv, cache: c, label_column: y}", "no column 'y' (columns: a, label)"),
        ("{source: csv, path: t.csv, cache: c, features: [a, zz]}", "no column 'zz' for data.features"),
        ("{source: csv, path: bad.csv, cache: c}", "line 3, column 'a': 'x1' is not a number"),
    ]:
        (tmp_path / "t.csv").write_text("a,label\n1,0\n2,1\n3,0\n")
        (tmp_path / "bad.csv").write_text("a,label\n1,0\nx1,1\n")
        job.write_text(f"name: bad\nmodel: {{kind: binary}}\ndata: {data}\n")
        code, out, err = cli(capsys, "prepare", job)
        errors = _error_lines(err)
        assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, (data, err)
        assert out == "" and not any((tmp_path / "c").glob("*")), "nothing half-written is left"


# --------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("trained")
    return {
        "binary": run_job(load_spec(ROOT / "jobs/binary_2d.yaml", ["resources.workers=0", "train.epochs=1"]),
                          output=base / "binary"),
        "softmax": run_job(load_spec(ROOT / "jobs/digits_softmax.yaml", ["resources.workers=0", "train.epochs=1"]),
                           output=base / "softmax"),
    }


def _read_predictions(text):
    """(predicted class, P(class 1) for binary, else the predicted class's probability) of
    predict's CSV for a model without a label map."""
    lines = text.strip().splitlines()
    k = len(lines[0].split(",")) - 2
    assert lines[0] == "row,prediction," + ",".join(f"prob_{c}" for c in range(k))
    table = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert np.array_equal(table[:, 0], np.arange(1, len(table) + 1))
    pred, probs = table[:, 1].astype(int), table[:, 2:]
    return pred, probs[:, 1] if k == 2 else probs[np.arange(len(pred)), pred]


@pytest.mark.parametrize("kind", ["binary", "softmax"])
def test_predict_csv_npy_and_npz_give_the_same_predictions_of_the_trained_parameters(trained, kind, tmp_path,
                                                                                     capsys):
    run = trained[kind]
    features = 2 if kind == "binary" else 64
    x = np.random.default_rng(7).uniform(-2 if kind == "binary" else 0, 2 if kind == "binary" else 1,
                                         (25, features)).astype(np.float32)
    header = ",".join(f"f{j}" for j in range(features))
    (tmp_path / "x.csv").write_text(header + "\n" + "".join(",".join(repr(float(v)) for v in row) + "\n"
                                                            for row in x))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    outputs = {}
    r = lrjob("predict", run.path, "--input", tmp_path / "x.csv")  # the command itself, once
    assert r.returncode == 0, r.stderr
    outputs["x.csv"] = r.stdout
    for name in ("x.npy", "x.npz"):
        code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / name)
        assert code == 0, (name, err)
        outputs[name] = out
    assert outputs["x.npy"] == outputs["x.csv"] and outputs["x.npz"] == outputs["x.csv"]
    pred, prob = _read_predictions(outputs["x.csv"])
    assert len(pred) == len(x)
    # the README's meaning of the columns, from the trained parameters (a linear model)
    w, b = run.params["lrjob_layer0_weight"].astype(np.float64), run.params["lrjob_layer0_bias"].astype(np.float64)
    z = x.astype(np.float64) @ w.T + b
    if kind == "binary":
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))  # P(class 1)
        assert np.allclose(prob, p1, atol=2e-6, rtol=0)
        clear = np.abs(p1 - 0.5) > 1e-4
        assert np.array_equal(pred[clear], (p1 > 0.5).astype(int)[clear])
        assert 0 < pred.sum() < len(pred)
    else:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        assert np.array_equal(pred, p.argmax(axis=1))
        assert np.allclose(prob, p.max(axis=1), atol=2e-6, rtol=0)  # the top class's probability
    # --output writes the same rows to a file
    out = tmp_path / "pred.csv"
    code, _, err = cli(capsys, "predict", run.path, "--input", tmp_path / "x.npz", "--output", out)
    assert code == 0 and out.read_text() == outputs["x.csv"], err


def test_predict_applies_the_training_data_checks_to_npy_and_npz(trained, tmp_path, capsys):
    run = trained["binary"]
    cases = {}
    bad = np.array([[0.0, 1.0], [np.nan, 2.0]])
    np.save(tmp_path / "nan.npy", bad)
    cases["nan.npy"] = "not finite"
    np.save(tmp_path / "wide.npy", np.zeros((3, 5)))
    cases["wide.npy"] = "the model expects 2"
    np.savez(tmp_path / "nox.npz", features=np.zeros((3, 2)))
    cases["nox.npz"] = "no array 'x'"
    np.savez(tmp_path / "inf.npz", x=np.array([[np.inf, 0.0]]))
    cases["inf.npz"] = "not finite"
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases["obj.npy"] = "not a readable .npy"
    for name, message in cases.items():
        code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / name)
        assert code == 2, (name, out, err)
        errors = _error_lines(err)
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, (name, err)
        assert out == "", name


# --------------------------------------------------------------------------- doctor --gpu
def test_doctor_gpu_on_a_machine_without_gpus_names_the_fix_and_exits_1():
    import mxnet as mx

    if mx.context.num_gpus() > 0:
        pytest.skip("this machine has a GPU: the GPU checks would pass")
    r = lrjob("doctor", "--gpu", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    for name in ("numpy", "mxnet", "horovod", "ray", "data"):
        assert f"] {name}:" in out, name  # the base checks still run
    assert "[  ok] horovod: horovod 0.28.1: MXNet yes, Gloo yes" in out
    assert "[FAIL] gpu: MXNet sees 0 GPU(s)\n       fix: pip install mxnet-cu112 (CUDA 11.2) instead of mxnet" in out
    assert "[FAIL] nccl: Horovod NCCL: no\n       fix: rebuild Horovod with HOROVOD_GPU_OPERATIONS=NCCL" in out
    failed = out.count("[FAIL]")
    assert f"{failed} check(s) failed" in r.stderr and failed >= 2
    if "[  ok] data" in out:
        assert failed == 2


# --------------------------------------------------------------------------- fashion-mnist
def _write_fashion_folder(folder: Path, n_train=120, n_test=40, gz=("train-images-idx3-ubyte",)):
    """Four standard IDX files (some gzipped), 28x28 images whose class sets the brightness of
    one row band: learnable, like Fashion-MNIST's ten classes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        img = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            img[i, 2 * c + 4:2 * c + 6, :] = 250
        for array, name in ((img, f"{split}-images-idx3-ubyte"), (y.astype(np.uint8), f"{split}-labels-idx1-ubyte")):
            write_idx(folder / name, array)
            if name in gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress((folder / name).read_bytes()))
                (folder / name).unlink()


def test_fashion_mnist_without_data_is_a_one_line_error_naming_the_folder(tmp_path, capsys, monkeypatch):
    # The real Fashion-MNIST files do not ship with lrjob and are not in the offline cache:
    # without them the run stops before writing anything.
    monkeypatch.setenv("LRJOB_DATA_HOME", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "jobs/mnist_softmax.yaml", "--workers", 0, "--set", "data.source=fashion-mnist",
                       "--output", out)
    assert code == 2, err
    errors = _error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert str(tmp_path / "cache" / "fashion-mnist") in errors[0] and "set data.path" in errors[0], errors[0]
    assert not out.exists()


@pytest.mark.pictures
def test_fashion_mnist_runs_from_data_path_or_the_cache_folder(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "fm"
    _write_fashion_folder(folder)
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "run", "jobs/mnist_softmax.yaml", "--workers", 0, "--set",
                            "data.source=fashion-mnist", "--set", f"data.path={folder}", "--set", "train.epochs=3",
                            "--set", "train.batch_size=16", "--set", "train.learning_rate=0.5", "--output", out,
                            "--quiet")
    assert code == 0, err
    assert stdout.strip() == str(out)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and metrics[-1]["val_accuracy"] >= 0.9  # 40 test images, learnable classes
    assert len(metrics[-1]["confusion"]) == 10 and sum(map(sum, metrics[-1]["confusion"])) == 40
    for name in ("samples.png", "confusion.png", "curves.png", "report.html", "model/meta.json"):
        assert (out / name).is_file(), name
    # the same files in $LRJOB_DATA_HOME/fashion-mnist are found without data.path
    _write_fashion_folder(tmp_path / "home" / "fashion-mnist", gz=())
    monkeypatch.setenv("LRJOB_DATA_HOME", str(tmp_path / "home"))
    code, out, err = cli(capsys, "validate", "jobs/mnist_softmax.yaml", "--set", "data.source=fashion-mnist", "--data")
    assert code == 0, err
    assert yaml.safe_load(out)["data"]["path"] is None
    assert "data ok: 120 train / 40 test rows, 784 features" in err


# --------------------------------------------------------------------------- addresses (no Ray started)
def test_ray_address_env_is_the_run_address(tmp_path, capsys):
    dead = _free_port()
    # a fresh process: this one may already hold the test session's Ray, which a run joins first
    env = _own_home_env(tmp_path, RAY_ADDRESS=f"127.0.0.1:{dead}")
    r = lrjob("run", "jobs/binary_2d.yaml", "--workers", 1, "--output", tmp_path / "a", env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    errors = _error_lines(r.stderr)
    assert len(errors) == 1 and f"no Ray cluster answers at 127.0.0.1:{dead}" in errors[0], r.stderr
    assert not (tmp_path / "a").exists()
    # the Ray Jobs commands: a dashboard that does not answer is bad input too
    code, _, err = cli(capsys, "list", "--address", f"http://127.0.0.1:{dead}")
    assert code == 2 and "no Ray dashboard answers" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- a real head with a token
def _start_head(home: Path, num_cpus: int, dashboard: bool):
    """`ray start --head` run to its end (procs.start_ray_head): the process, its output, its
    temp folder and the addresses."""
    env = _own_home_env(home)
    temp = tempfile.mkdtemp(prefix="lrjob-head-")

    def command(port, dash, agent):
        cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
               f"--num-cpus={num_cpus}", f"--temp-dir={temp}", "--disable-usage-stats"]
        if dashboard:
            return cmd + ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                          f"--dashboard-agent-listen-port={agent}"]
        return cmd + ["--include-dashboard=false"]

    proc, out, (port, dash, _) = start_ray_head(command, env)
    return proc, out, temp, {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}


def _stop_head(proc, temp):
    """The head's process group stopped (SIGTERM, SIGKILL after 2 s), its folder removed."""
    stop_session(proc.pid)  # its session: SIGTERM, SIGKILL after 2 s
    if proc.poll() is None:
        proc.wait(timeout=10)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """`ray start --head` (2 CPUs, dashboard) by a user whose ~/.ray/auth_token exists:
    Ray 2.60 then starts the cluster in token mode."""
    home = tmp_path_factory.mktemp("head-home")
    (home / ".ray").mkdir()
    token = secrets.token_hex(32)
    (home / ".ray" / "auth_token").write_text(token)
    proc, out, temp, head = _start_head(home, num_cpus=2, dashboard=True)
    try:
        assert proc.returncode == 0, out
        assert "Token authentication is enabled" in out, out
        deadline = time.time() + 60
        while time.time() < deadline:  # the Jobs API answers a little after `ray start` returns
            if lrjob("list", "--address", head["dashboard"], env=head["env"], timeout=60).returncode == 0:
                break
            time.sleep(1)
        session = Path(temp) / "session_latest"
        head.update(home=home, token=token,
                    node_id=next(session.glob("gcs_server_port_*")).name.rsplit("_", 1)[1])
        yield head
    finally:
        _stop_head(proc, temp)


@pytest.mark.distributed
def test_jobs_commands_use_the_token_file_or_ray_auth_token(token_head, tmp_path):
    address = token_head["dashboard"]
    with_file = lrjob("list", "--address", address, env=token_head["env"], timeout=60)
    assert with_file.returncode == 0 and with_file.stdout.startswith("ID"), with_file.stderr
    empty_home = tmp_path / "home"
    empty_home.mkdir()
    with_env = lrjob("list", "--address", address, timeout=60,
                     env=_own_home_env(empty_home, RAY_AUTH_TOKEN=token_head["token"]))
    assert with_env.returncode == 0 and with_env.stdout.startswith("ID"), with_env.stderr
    for extra in ({}, {"RAY_AUTH_TOKEN": secrets.token_hex(32)}):  # no token, a wrong token
        r = lrjob("list", "--address", address, env=_own_home_env(empty_home, **extra), timeout=60)
        assert r.returncode == 2, (extra, r.stdout, r.stderr)
        errors = _error_lines(r.stderr)
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "wants its token" in errors[0] and "~/.ray/auth_token" in errors[0] and "RAY_AUTH_TOKEN" in errors[0]


@pytest.mark.distributed
def test_run_joins_the_cluster_named_by_ray_address(token_head, tmp_path):
    # RAY_AUTH_MODE=token is Ray's own switch; see the next test for the token file alone.
    env = dict(token_head["env"], RAY_ADDRESS=token_head["gcs"], RAY_AUTH_MODE="token")
    # 3 workers fit a local Ray on this machine (it is sized to the request) but not the 2-CPU head
    r = lrjob("run", "jobs/binary_2d.yaml", "--workers", 3, "--output", tmp_path / "big", env=env, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "3 CPUs asked, the Ray cluster has 2" in r.stderr and not (tmp_path / "big").exists(), r.stderr
    out = tmp_path / "run"
    r = lrjob("run", "jobs/binary_2d.yaml", "--workers", 2, "--set", "train.epochs=2", "--output", out,
              "--quiet", env=env, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    placement = json.loads((out / "env.json").read_text())["placement"]
    assert [p["rank"] for p in placement] == [0, 1]
    assert {p["node_id"] for p in placement} == {token_head["node_id"]}  # the head's node, not a new Ray
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


@pytest.mark.distributed
def test_run_on_a_token_cluster_uses_the_token_file(token_head, tmp_path):
    env = dict(token_head["env"], RAY_ADDRESS=token_head["gcs"])
    r = lrjob("run", "jobs/binary_2d.yaml", "--workers", 3, "--output", tmp_path / "big", env=env, timeout=120)
    assert r.returncode == 2 and "the Ray cluster has 2" in r.stderr, r.stderr[-1500:]


# --------------------------------------------------------------------------- parity
@pytest.mark.distributed
def test_parity_command_prints_every_row_and_parity_holds(tmp_path):
    keep = tmp_path / "kept"
    r = lrjob("parity", "jobs/digits_softmax.yaml", "--workers", 2, "--set", "train.epochs=2",
              "--set", "train.batch_size=20", "--keep", keep, env=_own_home_env(tmp_path), timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("parity holds: largest parameter difference "), r.stdout
    rows = {x.split()[0]: x.split() for x in lines if x.startswith("  ") and x.split()[-1] in ("yes", "NO")}
    assert {"lrjob_layer0_weight", "lrjob_layer0_bias"} <= set(rows), r.stdout
    assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1", "confusion"} <= set(rows), r.stdout
    for name, cols in rows.items():
        diff, tol = float(cols[-3]), float(cols[-2])
        assert cols[-1] == "yes" and diff <= tol, cols
        assert tol == (1e-5 if name.startswith("lrjob_") else 1e-6), cols
    assert (keep / "workers-0" / "summary.json").is_file() and (keep / "workers-2" / "summary.json").is_file()
    env = json.loads((keep / "workers-2" / "env.json").read_text())
    assert env["workers"] == 2 and len({p["pid"] for p in env["placement"]}) == 2


def test_predict_streams_blocks_and_writes_nothing_for_a_late_bad_row(trained, tmp_path, capsys, monkeypatch):
    from lr_core import tables

    monkeypatch.setattr(tables, "BLOCK_ROWS", 4)  # the file is read in blocks of 4 rows
    run = trained["binary"]
    good = "x0,x1\n" + "".join(f"{i / 10},{-i / 10}\n" for i in range(10))
    (tmp_path / "good.csv").write_text(good)
    code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / "good.csv")
    assert code == 0, err
    whole = np.loadtxt(tmp_path / "good.csv", delimiter=",", skiprows=1, dtype=np.float32)
    from lr_core.export import ExportedModel

    pred, prob = ExportedModel(run.path / "model").probabilities(whole)
    assert out == "row,prediction,prob_0,prob_1\n" + "".join(f"{i},{c},{p:.9g},{q:.9g}\n" for i, (c, (p, q))
                                                               in enumerate(zip(pred, prob), 1))
    (tmp_path / "bad.csv").write_text(good + "1.0,nan\n")  # row 11: in the third block
    for extra in ([], ["--output", tmp_path / "preds.csv"]):
        code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / "bad.csv", *extra)
        assert code == 2 and "row 11, x1: value nan is not finite" in err, err
        assert out == "" and not (tmp_path / "preds.csv").exists()


def test_predict_and_evaluate_take_the_trained_columns_by_name(tmp_path, capsys):
    """A model trained on data.features [b, a] reads those columns, in that order, from
    any file that names its columns, whatever their order there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    a, b, noise = rng.standard_normal(200), rng.standard_normal(200), rng.standard_normal(200)
    label = (2 * b - a > 0).astype(int)
    pq.write_table(pa.table({"a": a, "noise": noise, "b": b, "label": label}), tmp_path / "t.parquet")
    job = tmp_path / "job.yaml"
    job.write_text("name: ab\nmodel: {kind: binary}\ndata: {source: parquet, path: t.parquet, features: [b, a], "
                   "cache: c, val_fraction: 0.5}\ntrain: {epochs: 20, learning_rate: 0.5}\nresources: {workers: 0}\n")
    run = run_job(load_spec(job), output=tmp_path / "run")
    code, own, err = cli(capsys, "evaluate", run.path, "--json")
    assert code == 0, err
    lines = ["label,noise,a,b"] + [f"{l},{n},{x},{y}" for l, n, x, y in zip(label, noise, a, b)]
    (tmp_path / "shuffled.csv").write_text("\n".join(lines) + "\n")
    code, out, err = cli(capsys, "evaluate", run.path, "--data", tmp_path / "shuffled.csv", "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] > 0.9 and json.loads(own)["accuracy"] > 0.9
    code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / "shuffled.csv")
    from lr_core.export import ExportedModel

    pred, _ = ExportedModel(run.path / "model").predict(np.column_stack([b, a]).astype(np.float32))
    assert code == 0 and _read_predictions(out)[0].tolist() == pred.tolist()
    assert "1 column(s) the model was not trained on, ignored: noise" in err, err  # listed, not used
    (tmp_path / "no_b.csv").write_text("a,label\n1,0\n")
    code, _, err = cli(capsys, "evaluate", run.path, "--data", tmp_path / "no_b.csv")
    assert code == 2 and "no column 'b'" in err
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    code, out, err = cli(capsys, "predict", run.path, "--input", tmp_path / "empty.npy")
    assert code == 2 and out == "" and "empty.npy: no rows" in err, err


def test_prepare_list_and_clean_the_cache(tmp_path, capsys):
    import socket as _socket

    (tmp_path / "d.csv").write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    job = tmp_path / "job.yaml"
    job.write_text("name: c\nmodel: {kind: binary}\ndata: {source: csv, path: d.csv, cache: cache}\n")
    code, first, _ = cli(capsys, "prepare", job)
    code2, second, _ = cli(capsys, "prepare", job, "--set", "train.seed=9")  # another hold-out: another folder
    assert code == code2 == 0 and first != second
    dead = tmp_path / "cache" / f".tmp-csv-0-{_socket.gethostname().replace('-', '_')}-999999999-abcd"
    dead.mkdir()  # a preparation that was killed: its pid is gone
    code, out, _ = cli(capsys, "prepare", "--list", job)
    assert code == 0 and "2 prepared folder(s)" in out
    assert Path(first.strip()).name in out and Path(second.strip()).name in out and str(tmp_path / "d.csv") in out
    code, out, _ = cli(capsys, "prepare", "--clean", "--json", job)
    result = json.loads(out)
    assert code == 0 and result == {"removed": [second.strip()], "kept": [first.strip()]}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [Path(first.strip()).name]


# --------------------------------------------------------------------------- quickstart, your own data
def _readme_block(after: str) -> str:
    """The first ```bash block of README.md after the line ``after``."""
    text = (ROOT / "README.md").read_text()
    rest = text[text.index(after + "\n"):]
    start = rest.index("```bash\n") + len("```bash\n")
    return rest[start:rest.index("\n```\n", start) + 1]


def _readme_output_blocks(after: str) -> list[str]:
    """The plain ``` blocks (shown output, no language) of README.md's section ``after``."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index(after + "\n"):]
    section = section[:section.index("\n## ", 1)]
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M) if not lang]


def _quickstart_runs() -> tuple[list[str], set[str], list[str]]:
    """The quickstart's command lines (comments cut), the run folders its `lrjob run` lines
    name with --output, and the run folders its predict/evaluate lines read."""
    lines = [line.split("  #")[0].strip() for line in _readme_block("## Quickstart").splitlines()]
    made = {line.split("--output ")[1].split()[0] for line in lines if line.startswith("lrjob run ")
            and "--output " in line}
    used = [line.split()[2] for line in lines if line.startswith(("lrjob predict ", "lrjob evaluate "))]
    return lines, made, used


def test_quickstart_predict_and_evaluate_read_runs_the_quickstart_makes():
    _, made, used = _quickstart_runs()
    assert used and set(used) <= made, (used, made)


def test_quickstart_predict_works_as_written(tmp_path):
    lines, _, _ = _quickstart_runs()
    first = next(i for i, line in enumerate(lines) if line.startswith("lrjob run jobs/binary_2d.yaml"))
    last = next(i for i, line in enumerate(lines) if line.startswith("lrjob predict "))
    script = "\n".join(lines[first:last + 1]) + "\n"
    (tmp_path / "jobs").symlink_to(ROOT / "jobs")  # the clone's folder, as the quickstart runs in
    r = subprocess.run(["bash", "-ec", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=_own_home_env(tmp_path / "home"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    predictions = r.stdout[r.stdout.index("row,prediction"):].splitlines()
    assert predictions[0] == "row,prediction,prob_0,prob_1"
    assert [p.split(",")[:2] for p in predictions[1:]] == [["1", "0"], ["2", "1"]]  # the two blob centres' sides


def test_your_own_data_walkthrough_runs_as_written(tmp_path):
    """README's "Your own data", run in a fresh folder holding the clone's .venv: string
    labels in and out, the id passed through, onnxruntime's probabilities those predict
    prints (to 1e-6, plus the walkthrough's rounding to 6 decimals), and the output the
    README shows."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    r = subprocess.run(["bash", "-e", "-c", _readme_block("## Your own data")], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=_own_home_env(tmp_path / "home"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "lrjob: warning" not in r.stderr, r.stderr
    out = r.stdout.splitlines()
    at = out.index("customer_id,prediction,prob_no,prob_yes")
    predicted = {row.split(",")[0]: row.split(",")[1:] for row in out[at + 1:at + 3]}
    onnx = {line.split(" ", 1)[0]: eval(line.split(" ", 1)[1]) for line in out[at + 3:at + 5]}  # noqa: S307
    assert list(predicted) == list(onnx) == ["N-1", "N-2"]
    for name, (label, p_no, p_yes) in predicted.items():
        assert label in ("yes", "no") and label == ("yes" if float(p_yes) >= 0.5 else "no")
        assert abs(onnx[name]["no"] - float(p_no)) <= 1.5e-6 and abs(onnx[name]["yes"] - float(p_yes)) <= 1.5e-6
    shown_predict, shown_onnx = _readme_output_blocks("## Your own data")
    shown = {row.split(",")[0]: row.split(",")[1:] for row in shown_predict.splitlines()[1:]}
    assert shown_predict.splitlines()[0] == out[at]
    for name, (label, p_no, p_yes) in shown.items():  # the README shows what the run gives
        assert predicted[name][0] == label and abs(float(predicted[name][2]) - float(p_yes)) <= 1e-4, (name, shown)
    assert [line.split(" ", 1)[0] for line in shown_onnx.splitlines()] == ["N-1", "N-2"]
