"""``ExportedModel`` serving scaled inputs (a prepared set's stored uint8 rows): the same
float32 arithmetic as training's ``Dataset.features``, where `make mutants` found the
fast tests silent."""
import json
import sys
import warnings

import mxnet as mx
import numpy as np
import pytest

from lr_core.config import LoopConfig
from lr_core.data import Dataset
from lr_core.export import ExportedModel, export_model
from lr_core.metrics import from_logits
from lr_core.models import build_model, initial_parameters


def _model(tmp_path, kind="binary", classes=2):
    cfg = LoopConfig(kind=kind, num_classes=classes, threshold=0.4)
    params = initial_parameters(cfg, 5)
    net = build_model(cfg, 5)
    for name, p in net.collect_params().items():
        p.set_data(mx.nd.array(params[name]))
    return ExportedModel(export_model(tmp_path / kind, cfg, params, 5)), net


def test_scaled_inputs_are_served_as_training_saw_them(tmp_path):
    model, net = _model(tmp_path)
    x = np.random.default_rng(1).normal(size=(7, 5)) * 3       # float64 rows, as a CSV gives them
    scale = 0.37
    seen = Dataset(x, np.zeros(7, np.int64), x[:0], np.zeros(0, np.int64), source="t", scale=scale).features(x)
    want = net(mx.nd.array(seen, dtype="float32")).asnumpy().astype(np.float64)
    assert np.array_equal(model.logits(x, scale=scale), want)   # bit for bit: float32 x times float32 scale
    assert not np.allclose(model.logits(x), want, atol=1e-3)     # the scale is not ignored
    pred, prob = model.predict(x, scale=scale)
    want_pred, want_prob, _ = from_logits("binary", want, 0.4)
    assert np.array_equal(pred, want_pred) and np.array_equal(prob, want_prob)


def test_a_standardized_export_serves_training_features(tmp_path):
    """meta.json's standardize: the features are (x * scale - mean) * (1 / std) in float32, as
    ``Dataset.features`` gives them in training (docs/design.md#standardization)."""
    cfg = LoopConfig(kind="binary", threshold=0.4)
    params = initial_parameters(cfg, 5)
    net = build_model(cfg, 5)
    for name, p in net.collect_params().items():
        p.set_data(mx.nd.array(params[name]))
    stats = {"mean": [0.5, -1.0, 2.0, 0.0, 3.0], "std": [2.0, 0.25, 1.0, 4.0, 0.5], "constant": []}
    model = ExportedModel(export_model(tmp_path / "m", cfg, params, 5, {"standardize": stats}))
    x = np.random.default_rng(2).normal(size=(6, 5)) * 3
    for scale in (None, 0.5):
        seen = Dataset(x, np.zeros(6, np.int64), x[:0], np.zeros(0, np.int64), source="t", scale=scale,
                       stats=stats).features(x)
        want = net(mx.nd.array(seen, dtype="float32")).asnumpy().astype(np.float64)
        assert np.array_equal(model.logits(x, scale=scale), want)
    assert not np.allclose(model.logits(x), net(mx.nd.array(x, dtype="float32")).asnumpy(), atol=1e-3)


def test_original_units_are_float64_with_or_without_statistics():
    """summary.json's coefficients and the export's are computed in float64, also for a model
    trained on unstandardized features (no statistics to map back)."""
    from lr_core.export import original_units

    w, b = np.array([[0.5, -1.25]], np.float32), np.array([0.125], np.float32)
    for stats in (None, {"mean": [1.0, 2.0], "std": [2.0, 4.0]}):
        ow, ob = original_units(w, b, stats)
        assert (ow.dtype, ob.dtype) == (np.float64, np.float64)
    assert original_units(w, b, None)[0].tolist() == [[0.5, -1.25]]


# ---------------------------------------------------------------- the ONNX export of small models
# A small binary model on standardized, named features and a softmax one on scaled, unnamed ones,
# exported to ONNX and read back with onnx and onnxruntime: everything export_onnx promises
# (docs/design.md#onnx-export) compared exactly, the probabilities against NumPy in float64.
N = 4   # features: not the number of classes, so an axis or a shape mixed up cannot pass


def _small_export(tmp_path, kind):
    """(model folder, weight, bias, meta given) of a linear model with weights of order 1."""
    k = 2 if kind == "binary" else 3
    cfg = LoopConfig(kind=kind, num_classes=k, threshold=0.4 if kind == "binary" else 0.5)
    rng = np.random.default_rng(7)
    params = initial_parameters(cfg, N)
    w = rng.normal(size=params["lrjob_layer0_weight"].shape).astype(np.float32)
    b = rng.normal(size=params["lrjob_layer0_bias"].shape).astype(np.float32)
    params.update(lrjob_layer0_weight=w, lrjob_layer0_bias=b)
    if kind == "binary":
        meta = {"job": "buyers", "columns": ["age", "income", "tenure", "visits"],
                "label_map": {"no": 0, "yes": 1}, "scale": None,
                "standardize": {"mean": [40.0, 5e4, 3.0, -2.0], "std": [10.0, 2e4, 1.5, 4.0]}}
    else:   # columns of another length than the features: no names
        meta = {"columns": [], "scale": 0.25, "standardize": None}
    return export_model(tmp_path / kind, cfg, params, N, meta), w.astype(np.float64), b.astype(np.float64), meta


def _expected_probabilities(kind, x, w, b, meta):
    """The export's arithmetic in float64: x * scale, standardized, the linear layer, then
    (binary) [P(class 0), P(class 1)] or (softmax) the class probabilities."""
    x = x.astype(np.float64) * (meta["scale"] if meta["scale"] is not None else 1.0)
    if meta["standardize"]:
        x = (x - np.array(meta["standardize"]["mean"])) / np.array(meta["standardize"]["std"])
    z = x @ w.T + b
    if kind == "binary":
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.column_stack([1.0 - p, p])
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _rows(kind, meta, n=5):
    """Rows in the units the model takes (the training file's, before scale and standardization)."""
    z = np.random.default_rng(11).normal(size=(n, N))
    if meta["standardize"]:
        z = z * meta["standardize"]["std"] + meta["standardize"]["mean"]
    return (z / (meta["scale"] or 1.0)).astype(np.float32)


def _dims(value_info):
    return [(d.dim_param, d.dim_value) for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("kind", ["binary", "softmax"])
def test_a_small_onnx_export_is_what_meta_json_and_the_file_say(tmp_path, kind):
    import onnx
    import onnxruntime as ort

    from lr_core.export import export_onnx

    model_dir, w, b, given = _small_export(tmp_path, kind)
    before = json.loads((model_dir / "meta.json").read_text())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert export_onnx(model_dir) == model_dir / "model.onnx"
    # nothing for the user's terminal (onnxruntime warns of a provider it does not have)
    assert [str(w.message) for w in seen if not issubclass(w.category, DeprecationWarning)] == []
    assert sorted(p.name for p in model_dir.iterdir()) == ["meta.json", "model-0000.params", "model-symbol.json",
                                                          "model.onnx"]
    binary = kind == "binary"
    labels = ["no", "yes"] if binary else ["0", "1", "2"]
    features = given["columns"] if binary else None
    proto = onnx.load(str(model_dir / "model.onnx"))
    (opset,) = [o.version for o in proto.opset_import if o.domain == ""]
    want = dict(before, labels=labels, onnx={
        "file": "model.onnx", "input": "features", "input_type": "float32", "input_shape": ["batch", N],
        "features": features, "applies": {"scale": given["scale"], "standardize": binary},
        "output": "probabilities", "output_shape": ["batch", len(labels)], "classes": labels,
        "decision": ("classes[1] when probabilities[:, 1] >= 0.4, else classes[0]" if binary
                     else "classes[argmax(probabilities, axis=1)]"),
        "opset": opset})
    assert (model_dir / "meta.json").read_text() == json.dumps(want, indent=2) + "\n"

    g = proto.graph
    assert [i.name for i in g.input] == ["features"] and _dims(g.input[0]) == [("batch", 0), ("", N)]
    assert [o.name for o in g.output] == ["probabilities"]
    assert _dims(g.output[0]) == [("batch", 0), ("", len(labels))]
    used = {name for node in g.node for name in node.input}
    assert all(i.name in used for i in g.initializer)
    assert (proto.producer_name, proto.producer_version) == ("lrjob", "buyers" if binary else "")
    assert proto.doc_string == (f"lrjob {kind} model: features [batch, {N}] float32 -> probabilities "
                                f"[batch, {len(labels)}], one column per class; see metadata_props")
    assert [(p.key, p.value) for p in proto.metadata_props] == [
        ("classes", json.dumps(labels)), ("features", json.dumps(features)),
        ("threshold", json.dumps(0.4 if binary else 0.5))]

    x = _rows(kind, given)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"features": x})[0]
    assert got.shape == (len(x), len(labels))
    assert np.max(np.abs(got - _expected_probabilities(kind, x, w, b, given))) < 1e-6
    _, served = ExportedModel(model_dir).probabilities(x, scale=given["scale"])
    assert np.max(np.abs(got - served)) < 1e-6


def test_onnx_meta_names_the_standard_opset_or_none(tmp_path):
    """``opset``: the version of the standard domain, named "" or "ai.onnx"; None if the file
    imports no standard operators."""
    import onnx
    import onnx.helper

    from lr_core.export import _onnx_meta

    model = ExportedModel(_small_export(tmp_path, "binary")[0])
    proto = onnx.ModelProto()
    proto.opset_import.extend([onnx.helper.make_opsetid("ai.onnx.ml", 3), onnx.helper.make_opsetid("ai.onnx", 13)])
    assert _onnx_meta(model, proto)["opset"] == 13
    del proto.opset_import[1]
    assert _onnx_meta(model, proto)["opset"] is None


def test_an_onnx_export_without_the_onnx_package_is_one_line(tmp_path, monkeypatch):
    from lr_core.errors import LrjobRuntimeError
    from lr_core.export import export_onnx

    model_dir = _small_export(tmp_path, "binary")[0]
    before = sorted(p.name for p in model_dir.iterdir()), (model_dir / "meta.json").read_bytes()
    monkeypatch.setitem(sys.modules, "onnx", None)   # as if onnx were not installed
    with pytest.raises(LrjobRuntimeError) as e:
        export_onnx(model_dir)
    assert str(e.value) == ("the ONNX export needs the onnx package (import of onnx halted; None in sys.modules); "
                            "pip install onnx==1.16.2 onnxruntime==1.19.2")
    assert (sorted(p.name for p in model_dir.iterdir()), (model_dir / "meta.json").read_bytes()) == before


@pytest.mark.parametrize("error,shown", [
    (ValueError("the first line " + "x" * 300 + "\nthe second"), "ValueError: the first line " + "x" * 185),
    (KeyError(), "KeyError: KeyError"),
])
def test_a_failed_onnx_conversion_is_one_line_naming_the_error(tmp_path, monkeypatch, error, shown):
    import lr_core.export as export
    from lr_core.errors import LrjobRuntimeError

    model_dir = _small_export(tmp_path, "binary")[0]

    def fails(directory, model):
        raise error

    monkeypatch.setattr(export, "_onnx_symbol", fails)
    with pytest.raises(LrjobRuntimeError) as e:
        export.export_onnx(model_dir)
    assert str(e.value) == f"{model_dir}: ONNX export failed ({shown})"
    assert sorted(p.name for p in model_dir.iterdir()) == ["meta.json", "model-0000.params", "model-symbol.json"]


def test_the_onnx_export_fault_point_fires_before_the_conversion(tmp_path, monkeypatch):
    """``LRJOB_FAULT={"at": "export", "format": "onnx", ...}`` (lr_core/faults.py) fires in export_onnx."""
    from lr_core import faults
    from lr_core.errors import LrjobRuntimeError
    from lr_core.export import export_onnx

    model_dir = _small_export(tmp_path, "binary")[0]
    monkeypatch.setattr(faults, "ARMED", True)
    monkeypatch.setattr(faults, "_SPEC", {"at": "export", "format": "onnx", "action": "raise"})
    with pytest.raises(LrjobRuntimeError) as e:
        export_onnx(model_dir)
    assert str(e.value) == f"{model_dir}: ONNX export failed (RuntimeError: injected fault at export {{'format': 'onnx'}})"
    assert not (model_dir / "model.onnx").exists()
