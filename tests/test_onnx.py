"""model/model.onnx: onnxruntime alone gives the probabilities ``lrjob predict`` prints, to
1e-6, for binary and softmax models, linear and MLP, standardized and with a stored uint8
scale; ``meta.json`` says what it expects; ``lrjob export RUN --format onnx`` writes it
for a run without one; a failed ONNX export leaves a completed run with its MXNet model.
Real runs (in-process), real onnxruntime."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from launcher.cli import main
from launcher.driver import run_job
from launcher.spec import load_spec
from test_predict_output import _people, _pets
from test_readme_commands import _write_fashion_folder

ROOT = Path(__file__).resolve().parent.parent
LRJOB = str(Path(sys.executable).parent / "lrjob")
TOLERANCE = 1e-6


def cli(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _errors(err):
    return [line for line in err.splitlines() if line.startswith("lrjob: error")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """binary linear on raw age/income (standardized), softmax linear on string labels,
    a binary MLP (binary_synthetic's 10-10 hidden layers), and a softmax MLP on 28x28 uint8
    images with the 1/255 scale (a Fashion-MNIST-shaped folder)."""
    base = tmp_path_factory.mktemp("onnx")
    age, income, bought = _people(300, 0)
    with open(base / "people.csv", "w") as f:
        f.write("age,income,bought\n")
        f.writelines(f"{a:.2f},{b:.0f},{c}\n" for a, b, c in zip(age, income, bought))
    (base / "buyers.yaml").write_text(
        "name: buyers\nmodel: {kind: binary}\n"
        "data: {source: csv, path: people.csv, label_column: bought, label_map: {'no': 0, 'yes': 1}}\n"
        "train: {epochs: 5}\nresources: {workers: 0}\n")
    x, pet = _pets(300, 1)
    with open(base / "pets.csv", "w") as f:
        f.write("a,b,pet\n")
        f.writelines(f"{u:.4f},{v:.4f},{p}\n" for (u, v), p in zip(x, pet))
    (base / "pets.yaml").write_text(
        "name: pets\nmodel: {kind: softmax, num_classes: 3}\n"
        "data: {source: csv, path: pets.csv, label_column: pet, label_map: {cat: 0, dog: 1, bird: 2}}\n"
        "train: {epochs: 3}\nresources: {workers: 0}\n")
    _write_fashion_folder(base / "fm")
    return {
        "binary": run_job(load_spec(base / "buyers.yaml"), base / "run-binary"),
        "softmax": run_job(load_spec(base / "pets.yaml"), base / "run-softmax"),
        "binary-mlp": run_job(load_spec(ROOT / "jobs/binary_synthetic.yaml",
                                        ["resources.workers=0", "train.epochs=1"]), base / "run-binary-mlp"),
        "softmax-mlp-uint8": run_job(load_spec(ROOT / "jobs/mnist_softmax.yaml", [
            "resources.workers=0", "train.epochs=1", "data.source=fashion-mnist", f"data.path={base / 'fm'}",
            "model.hidden=[8]", "train.batch_size=16"]), base / "run-softmax-mlp-uint8"),
    }


def _raw_rows(kind, meta, n):
    """Rows in the units predict takes: the training file's (age in years, income in
    dollars; pixel values 0-255 for the images)."""
    rng = np.random.default_rng(5)
    if kind == "binary":
        age, income, _ = _people(n, 8)
        return np.column_stack([age, income]).astype(np.float32)
    if kind == "softmax":
        return _pets(n, 8)[0].astype(np.float32)
    if kind == "binary-mlp":
        return rng.normal(size=(n, meta["num_features"])).astype(np.float32)
    return rng.integers(0, 256, size=(n, meta["num_features"])).astype(np.uint8)


def _errors_or_warnings(capsys, run, path):
    code, _, err = cli(capsys, "predict", run, "--input", path)
    assert code == 0, err
    return err


def _predict_probabilities(capsys, run, path):
    code, out, err = cli(capsys, "predict", run, "--input", path)
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    return rows[0], np.array([[float(v) for v in r[2:]] for r in rows[1:]])


def _session(model_dir):
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", ["binary", "softmax", "binary-mlp", "softmax-mlp-uint8"])
def test_onnxruntime_alone_gives_what_predict_prints(runs, kind, tmp_path, capsys):
    model_dir = runs[kind].path / "model"
    meta = json.loads((model_dir / "meta.json").read_text())
    onnx_meta = meta["onnx"]
    x = _raw_rows(kind, meta, 50)
    if meta["columns"] and kind != "softmax-mlp-uint8":  # a CSV whose columns are in another order
        order = list(reversed(meta["columns"]))
        cols = [meta["columns"].index(c) for c in order]
        (tmp_path / "in.csv").write_text(",".join(order) + "\n" + "".join(
            ",".join(repr(float(v)) for v in row[cols]) + "\n" for row in x))
        inp = tmp_path / "in.csv"
    else:
        np.save(tmp_path / "in.npy", x)  # uint8 pixels, as stored
        inp = tmp_path / "in.npy"
    header, want = _predict_probabilities(capsys, runs[kind].path, inp)

    # what meta.json promises, and the file keeps
    assert onnx_meta["file"] == "model.onnx" and onnx_meta["input"] == "features"
    assert onnx_meta["input_shape"] == ["batch", meta["num_features"]] and onnx_meta["input_type"] == "float32"
    assert onnx_meta["features"] == (meta["columns"] or None)
    assert header[2:] == [f"prob_{c}" for c in onnx_meta["classes"]] and onnx_meta["output"] == "probabilities"
    assert onnx_meta["applies"] == {"scale": meta["scale"], "standardize": meta["standardize"] is not None}
    if kind == "softmax-mlp-uint8":
        assert meta["scale"] == pytest.approx(1 / 255) and meta["standardize"] is None
    else:
        assert meta["scale"] is None
    if kind in ("binary", "softmax"):
        assert meta["standardize"] is not None
    session = _session(model_dir)
    (inp_info,), (out_info,) = session.get_inputs(), session.get_outputs()
    assert (inp_info.name, inp_info.shape, inp_info.type) == ("features", ["batch", meta["num_features"]],
                                                              "tensor(float)")
    assert (out_info.name, out_info.shape) == ("probabilities", ["batch", len(onnx_meta["classes"])])

    got = session.run(["probabilities"], {"features": x.astype(np.float32)})[0]
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= TOLERANCE, np.max(np.abs(got - want))
    one = session.run(None, {"features": x[:1].astype(np.float32)})[0]  # the batch axis is free
    assert np.max(np.abs(one - want[:1])) <= TOLERANCE
    if kind == "softmax-mlp-uint8":  # pixels divided by 255 already: said, not silently scaled again
        np.save(tmp_path / "scaled.npy", x.astype(np.float32) / 255)
        code, _, err = cli(capsys, "predict", runs[kind].path, "--input", tmp_path / "scaled.npy")
        assert code == 0 and "lrjob: warning: every value of" in err and "pixels 0-255" in err, err
        assert "warning" not in _errors_or_warnings(capsys, runs[kind].path, inp)


def _without_onnx(run_path, dest):
    """A copy of a run as lrjob wrote it before the ONNX export: no model.onnx, and a
    meta.json without onnx, labels and scale."""
    shutil.copytree(run_path, dest)
    (dest / "model" / "model.onnx").unlink()
    meta = json.loads((dest / "model" / "meta.json").read_text())
    for key in ("onnx", "labels", "scale"):
        meta.pop(key, None)
    (dest / "model" / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def test_export_writes_onnx_for_a_run_without_it(runs, tmp_path, capsys):
    old = _without_onnx(runs["binary"].path, tmp_path / "old")
    r = subprocess.run([LRJOB, "export", old, "--format", "onnx"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(old / "model" / "model.onnx") and r.stderr == ""
    meta = json.loads((old / "model" / "meta.json").read_text())
    assert meta["onnx"]["classes"] == meta["labels"] == ["no", "yes"]
    assert sorted(p.name for p in (old / "model").iterdir()) == ["meta.json", "model-0000.params",
                                                                 "model-symbol.json", "model.onnx"]
    x = _raw_rows("binary", meta, 20)
    np.save(tmp_path / "x.npy", x)
    _, want = _predict_probabilities(capsys, old, tmp_path / "x.npy")
    got = _session(old / "model").run(None, {"features": x})[0]
    assert np.max(np.abs(got - want)) <= TOLERANCE


def test_export_replaces_a_damaged_onnx_file(runs, tmp_path, capsys):
    run = shutil.copytree(runs["softmax"].path, tmp_path / "run")
    (run / "model" / "model.onnx").write_bytes(b"\x08\x07not a model")
    with pytest.raises(Exception):
        _session(run / "model")
    code, out, err = cli(capsys, "export", run, "--format", "onnx")
    assert code == 0, err
    x = _raw_rows("softmax", {}, 10)
    np.save(tmp_path / "x.npy", x)
    _, want = _predict_probabilities(capsys, run, tmp_path / "x.npy")
    assert np.max(np.abs(_session(run / "model").run(None, {"features": x})[0] - want)) <= TOLERANCE


@pytest.mark.parametrize("damage,message,code", [
    ("no model", "no exported model", 2),
    ("params cut", "damaged or incomplete model export", 2),
    ("meta not json", "damaged or incomplete model export", 2),
    ("no onnx package", "the ONNX export needs the onnx package", 1),
])
def test_export_of_a_damaged_or_absent_model_is_one_line(runs, tmp_path, capsys, monkeypatch, damage, message,
                                                         code):
    run = _without_onnx(runs["binary"].path, tmp_path / "run")
    model = run / "model"
    if damage == "no model":
        shutil.rmtree(model)
    elif damage == "params cut":
        data = (model / "model-0000.params").read_bytes()
        (model / "model-0000.params").write_bytes(data[: len(data) // 2])
    elif damage == "meta not json":
        (model / "meta.json").write_text("{not json")
    else:
        monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    before = sorted(p.name for p in model.iterdir()) if model.exists() else None
    got, out, err = cli(capsys, "export", run, "--format", "onnx")
    errors = _errors(err)
    assert got == code and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    assert out == ""
    assert (sorted(p.name for p in model.iterdir()) if model.exists() else None) == before  # nothing left


def test_a_failed_onnx_export_leaves_a_completed_run_and_its_mxnet_model(tmp_path, capsys):
    out = tmp_path / "run"
    env = dict(os.environ, LRJOB_FAULT=json.dumps({"at": "export", "format": "onnx", "action": "raise"}))
    r = subprocess.run([LRJOB, "run", "jobs/binary_2d.yaml", "--workers", "0", "--set", "train.epochs=1",
                        "--output", out, "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    warnings = [line for line in r.stderr.splitlines() if line.startswith("lrjob: warning")]
    assert len(warnings) == 1 and "model.onnx not written" in warnings[0], r.stderr
    assert f"retry with: lrjob export {out} --format onnx" in warnings[0] and "Traceback" not in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [w["code"] for w in summary["warnings"]] == ["onnx-export"]
    assert sorted(p.name for p in (out / "model").iterdir()) == ["meta.json", "model-0000.params",
                                                                 "model-symbol.json"]
    assert "onnx" not in json.loads((out / "model" / "meta.json").read_text())
    (tmp_path / "p.csv").write_text("x0,x1\n-1,-1\n1,1\n")
    code, _, err = cli(capsys, "predict", out, "--input", tmp_path / "p.csv")
    assert code == 0, err
    code, _, err = cli(capsys, "export", out, "--format", "onnx")  # the retry it names
    assert code == 0 and (out / "model" / "model.onnx").is_file(), err


def _wide_export(tmp_path, n=3000, hidden=()):
    """A binary export over ``n`` standardized features whose first-layer weights are of
    order 1: its logits are sums of thousands of terms, which MXNet and onnxruntime round
    in their own orders (a few 1e-6 apart in probability at 3,000 features)."""
    from lr_core.config import LoopConfig
    from lr_core.export import export_model
    from lr_core.models import initial_parameters

    cfg = LoopConfig(kind="binary", hidden=hidden)
    params = initial_parameters(cfg, n)
    rng = np.random.default_rng(3)
    params["lrjob_layer0_weight"] = rng.normal(0, 1.0, size=params["lrjob_layer0_weight"].shape).astype(np.float32)
    stats = {"mean": list(rng.normal(0, 100, n)), "std": list(rng.uniform(0.5, 50, n))}
    return export_model(tmp_path / "model", cfg, params, n, {"standardize": stats, "scale": None}), stats


@pytest.mark.parametrize("hidden", [(), (8,)])
def test_a_wide_model_is_exported_within_float32_rounding(tmp_path, hidden):
    from lr_core.export import ExportedModel, export_onnx

    model_dir, stats = _wide_export(tmp_path, hidden=hidden)
    export_onnx(model_dir)  # raised 'differ ... by 6.8e-06 (more than 1e-06)' on a correct graph
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["onnx"]["file"] == "model.onnx"
    rows = (np.random.default_rng(9).normal(size=(32, 3000)) * stats["std"] + stats["mean"]).astype(np.float32)
    got = _session(model_dir).run(["probabilities"], {"features": rows})[0]
    _, want = ExportedModel(model_dir).probabilities(rows)
    assert np.max(np.abs(got - want)) < 1e-4  # float32 rounding of 3,000-term sums, no more


def test_a_wide_graph_off_by_a_little_is_still_refused(tmp_path, monkeypatch):
    import lr_core.export as export
    from lr_core.errors import LrjobRuntimeError

    model_dir, _ = _wide_export(tmp_path)
    right = export._onnx_symbol

    def off(directory, model):  # every 1 / std 0.1 % too large: another function, near the right one
        sym, params = right(directory, model)
        params["lrjob_standardize_inv_std"] = params["lrjob_standardize_inv_std"] * 1.001
        return sym, params

    monkeypatch.setattr(export, "_onnx_symbol", off)
    with pytest.raises(LrjobRuntimeError, match="differ from the MXNet model's"):
        export.export_onnx(model_dir)
    assert not (model_dir / "model.onnx").exists()
    assert "onnx" not in json.loads((model_dir / "meta.json").read_text())
