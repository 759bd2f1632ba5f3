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
from lr_core.data import MIN_STD, Dataset
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
        e = np.exp(-np.abs(z[:, 0]))
        p = np.where(z[:, 0] >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
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


def _export_with(tmp_path, kind, weight, bias, meta):
    """A linear model with the given weights (float32) and meta.json fields."""
    k = 2 if kind == "binary" else len(weight)
    cfg = LoopConfig(kind=kind, num_classes=k)
    params = {"lrjob_layer0_weight": np.asarray(weight, np.float32), "lrjob_layer0_bias": np.asarray(bias, np.float32)}
    return export_model(tmp_path / f"{kind}-model", cfg, params, len(weight[0]), meta)


@pytest.mark.parametrize("name,meta", [
    ("lrjob_input_scale", {"scale": 1e-3, "standardize": None}),
    ("lrjob_standardize_inv_std", {"scale": None, "standardize": {"mean": [5.0] * N, "std": [1e3] * N}}),
])
def test_a_graph_one_percent_off_on_strongly_scaled_features_is_refused(tmp_path, monkeypatch, name, meta):
    """The probe rows are in the units the model takes: their scaled, standardized features are
    of order 1, where a graph that computes another function shows it."""
    import lr_core.export as export
    from lr_core.errors import LrjobRuntimeError

    w = np.random.default_rng(5).normal(size=(1, N))
    model_dir = _export_with(tmp_path, "binary", w, [0.25], meta)
    right = export._onnx_symbol

    def off(directory, model):
        sym, params = right(directory, model)
        params[name] = params[name] * 1.01
        return sym, params

    monkeypatch.setattr(export, "_onnx_symbol", off)
    with pytest.raises(LrjobRuntimeError, match="differ from the MXNet model's"):
        export.export_onnx(model_dir)
    assert not (model_dir / "model.onnx").exists()


def test_an_onnx_model_as_far_from_the_mxnet_one_as_allowed_is_written(tmp_path, monkeypatch):
    """The check refuses only a difference above the allowance: one equal to it passes."""
    import onnxruntime as ort

    import lr_core.export as export

    model_dir, *_ = _small_export(tmp_path, "binary")

    def exactly_the_difference(model, rows, want):   # the worst difference itself, from the file being checked
        (tmp,) = model.directory.glob(".model.onnx.*")
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"features": rows})[0]
        return float(np.max(np.abs(got.astype(np.float64) - want)))

    monkeypatch.setattr(export, "ONNX_TOLERANCE", 0.0)
    monkeypatch.setattr(export, "_rounding_allowance", exactly_the_difference)
    export.export_onnx(model_dir)
    assert (model_dir / "model.onnx").is_file()


@pytest.mark.parametrize("kind", ["binary", "softmax"])
def test_the_rounding_allowance_is_four_times_the_float32_models_distance_from_float64(tmp_path, kind):
    """``_rounding_allowance``: 4 x the largest distance of the float32 probabilities from the
    same model in float64 (scaled and standardized features), computed here with NumPy; a row
    whose logits are a thousand below another row's still has probabilities (no 0 / 0)."""
    from lr_core.export import _rounding_allowance

    rng = np.random.default_rng(8)
    k = 1 if kind == "binary" else 3
    w, b = rng.normal(size=(k, N)), rng.normal(size=k)
    stats = {"mean": [1.0, -2.0, 0.5, 3.0], "std": [2.0, 0.5, 4.0, 1.0]}
    meta = {"scale": 0.5, "standardize": stats}
    model = ExportedModel(_export_with(tmp_path, kind, w, b, meta))
    w, b = w.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    z = np.vstack([rng.normal(size=(6, N)), np.full((1, N), 300.0) * np.sign(w[0]), np.full((1, N), -600.0) * np.sign(w[0])])
    rows = ((z * stats["std"] + stats["mean"]) / 0.5).astype(np.float32)
    _, want = model.probabilities(rows, scale=0.5)
    exact = _expected_probabilities(kind, rows, w, b, meta)
    assert np.isfinite(exact).all()
    distance = float(np.max(np.abs(want - exact)))
    assert 0 < distance < 1e-5
    assert _rounding_allowance(model, rows, want) == pytest.approx(4 * distance, rel=1e-6)


def test_original_units_undo_the_standardization():
    """``W (x - mean) / std + b`` is ``(W / std) x + (b - W (mean / std))``."""
    from lr_core.export import original_units

    w, b = np.array([[0.5, -1.25]], np.float32), np.array([0.125], np.float32)
    ow, ob = original_units(w, b, {"mean": [1.0, 2.0], "std": [2.0, 4.0]})
    assert ow.tolist() == [[0.25, -0.3125]] and ob.tolist() == [0.5]   # 0.125 - (0.5 * 0.5 - 1.25 * 0.5)
    x = np.array([3.0, -1.0])
    assert (ow @ x + ob).tolist() == (w.astype(np.float64) @ ((x - [1.0, 2.0]) / [2.0, 4.0]) + b).tolist()


def test_class_labels_of_a_binary_model_are_two_whatever_num_classes_says():
    from lr_core.export import class_labels

    assert class_labels({"kind": "binary", "num_classes": 5}) == ["0", "1"]
    # a class number past the model's classes names nothing
    assert class_labels({"kind": "binary", "num_classes": 2, "label_map": {"no": 0, "maybe": 2, "yes": 1}}) == \
        ["no", "yes"]
    assert class_labels({"kind": "softmax", "num_classes": 3, "label_map": {"c": 2}}) == ["0", "1", "c"]


def test_overflowing_features_saturate_quietly_and_keep_their_sign(tmp_path):
    """A feature near float32's largest, times the scale, overflows to +-inf: it is served as
    +-3.4e38 (a finite logit of the right sign), with no NumPy RuntimeWarning in the output."""
    model = ExportedModel(_export_with(tmp_path, "binary", [[0.5, 0.0, 0.0]], [0.125],
                                       {"standardize": {"mean": [0.0] * 3, "std": [1.0] * 3}}))
    x = np.array([[3e38, 1.0, 1.0], [-3e38, 1.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        logits = model.logits(x, scale=10.0)[:, 0]
    f32_max = float(np.finfo(np.float32).max)
    assert logits.tolist() == [float(np.float32(0.5 * f32_max)), float(np.float32(-0.5 * f32_max))]


def test_softmax_probabilities_of_logits_far_apart_are_exact(tmp_path):
    """Each row's softmax is shifted by that row's largest logit: a row of logits near 400 does not
    overflow, and a row of logits near -800 beside it does not underflow to 0 / 0."""
    eye = np.eye(3, 4)
    model = ExportedModel(_export_with(tmp_path, "softmax", eye, [0.0, 0.0, 0.0], {}))
    x = np.array([[400.0, 0.0, 0.0, 9.0], [-800.0, -801.0, -800.0, 9.0]])
    pred, prob = model.probabilities(x)
    e = np.exp(-1.0)
    assert pred.tolist() == [0, 0]
    assert np.allclose(prob, [[1.0, 0.0, 0.0], [1 / (2 + e), e / (2 + e), 1 / (2 + e)]], rtol=1e-12, atol=1e-170)


X40 = "x" * 40
LONG = "x" * 50   # cut to its first 40 characters in the message
SHOWN_LONG = "'xxxxxxxxxxxxxxxxxxxx... (50 characters)"


@pytest.mark.parametrize("field,value,problem", [
    ("kind", LONG, f"kind must be binary or softmax, got '{X40}'"),
    ("num_classes", 0, "num_classes must be a positive integer, got '0'"),
    ("num_classes", True, "num_classes must be a positive integer, got 'True'"),
    ("num_classes", LONG, f"num_classes must be a positive integer, got '{X40}'"),
    ("num_classes", (1 << 24) + 1, "num_classes must be a positive integer, got '16777217'"),
    ("num_classes", 1, None), ("num_classes", 1 << 24, None),   # a binary model's num_classes is not used
    ("threshold", 0, "threshold must be a number between 0 and 1, got 0"),
    ("threshold", 1, "threshold must be a number between 0 and 1, got 1"),
    ("threshold", 1.5, "threshold must be a number between 0 and 1, got 1.5"),
    ("threshold", True, "threshold must be a number between 0 and 1, got True"),
    ("threshold", [0.5], "threshold must be a number between 0 and 1, got [0.5]"),
    ("threshold", LONG, f"threshold must be a number between 0 and 1, got {SHOWN_LONG}"),
    ("threshold", "0.25", None),
    ("scale", 0, "scale must be null or a positive number that float32 holds (at most 3.4e+38), got 0"),
    ("scale", True, "scale must be null or a positive number that float32 holds (at most 3.4e+38), got True"),
    ("scale", LONG, f"scale must be null or a positive number that float32 holds (at most 3.4e+38), got {SHOWN_LONG}"),
    # the scale is applied in float32: a whole number of 400 digits, float64's largest and a value
    # float32 rounds to 0 are refused; float32's largest (also as it is usually printed, which
    # rounds to it) and its smallest normal and subnormal values hold
    pytest.param("scale", 10 ** 400, "scale must be null or a positive number that float32 holds (at most 3.4e+38), "
                 "got an integer of about 400 digits", id="scale-of-400-digits"),
    ("scale", float(np.finfo(np.float32).max), None),
    ("scale", 3.4028235e+38, None),
    ("scale", float(np.finfo(np.float32).tiny), None),
    ("scale", 1e-45, None),
    ("scale", sys.float_info.max, "scale must be null or a positive number that float32 holds (at most 3.4e+38), "
                                  f"got {sys.float_info.max!r}"),
    ("scale", 3.5e+38, "scale must be null or a positive number that float32 holds (at most 3.4e+38), got 3.5e+38"),
    ("scale", 1e-46, "scale must be null or a positive number that float32 holds (at most 3.4e+38), got 1e-46"),
    ("standardize", LONG, f"standardize must be a mapping with mean and std, got '{X40}'"),
    ("standardize", {"mean": [0.0] * 3, "std": [1.0, 1.0]},
     f"standardize.mean must be a list of 2 numbers, got '{str([0.0] * 3)[:40]}'"),
    ("standardize", {"mean": "ab", "std": [1.0, 1.0]}, "standardize.mean must be a list of 2 numbers, got 'ab'"),
    ("standardize", {"mean": [0.0, 0.0], "std": [1.0] * 20},
     f"standardize.std must be a list of 2 numbers, got '{str([1.0] * 20)[:40]}'"),
    ("standardize", {"mean": [1.0, "x"], "std": [1.0, 1.0]}, "standardize.mean must hold numbers that float32 holds (at most 3.4e+38 in size), got 'x'"),
    ("standardize", {"mean": [0.0, 0.0], "std": [0.5, 0.0]},
     "standardize.std must hold numbers from 2.94e-39 (1 / float32's largest) to 3.4e+38, got '0.0'"),
    ("standardize", {"mean": [0.0, 0.0], "std": [0.5, LONG]},
     f"standardize.std must hold numbers from 2.94e-39 (1 / float32's largest) to 3.4e+38, got '{X40}'"),
    ("standardize", {"mean": [0.0, 0.0], "std": [0.5, 2.0]}, None),
    # a mean may be 0 or below: the value named is the one that is not a finite number
    ("standardize", {"mean": [0.0, "x"], "std": [1.0, 1.0]}, "standardize.mean must hold numbers that float32 holds (at most 3.4e+38 in size), got 'x'"),
    # whole numbers beyond int64 that float32 holds are numbers like any other (NumPy alone would make
    # an object array of them); 400 digits, or float64's largest, would be inf in float32: named, not
    # a traceback nor NaN predictions; a std below MIN_STD (1 / float32's largest) would make 1 / std inf
    ("standardize", {"mean": [1 << 70, 0], "std": [1, 1 << 70]}, None),
    ("standardize", {"mean": [float(np.finfo(np.float32).max), -3.4028235e+38],
                     "std": [MIN_STD, float(np.finfo(np.float32).max)]}, None),
    ("standardize", {"mean": [sys.float_info.max, 0.0], "std": [1.0, 1.0]},
     f"standardize.mean must hold numbers that float32 holds (at most 3.4e+38 in size), got '{sys.float_info.max!r}'"),
    ("standardize", {"mean": [0.0, 0.0], "std": [1.0, 2.9e-39]},
     "standardize.std must hold numbers from 2.94e-39 (1 / float32's largest) to 3.4e+38, got '2.9e-39'"),
    ("standardize", {"mean": [0.0, 0.0], "std": [1.0, 3.5e+38]},
     "standardize.std must hold numbers from 2.94e-39 (1 / float32's largest) to 3.4e+38, got '3.5e+38'"),
    # the smallest std is a std like any other: the value named is the one below it
    ("standardize", {"mean": [0.0, 0.0], "std": [MIN_STD, 0.0]},
     "standardize.std must hold numbers from 2.94e-39 (1 / float32's largest) to 3.4e+38, got '0.0'"),
    pytest.param("standardize", {"mean": [0.0, 10 ** 400], "std": [1.0, 1.0]},
                 f"standardize.mean must hold numbers that float32 holds (at most 3.4e+38 in size), got '1{'0' * 39}'", id="standardize-mean-of-400-digits"),
    pytest.param("standardize", {"mean": [0.0, 0.0], "std": [-(10 ** 400), 1.0]},
                 f"standardize.std must hold numbers from 2.94e-39 (1 / float32's largest) to 3.4e+38, got '-1{'0' * 38}'",
                 id="standardize-std-of-400-digits"),
])
def test_meta_json_fields_serving_reads_are_checked_with_one_line(tmp_path, field, value, problem):
    """Each field of meta.json that serving reads: a usable value loads, any other is named in the
    one-line error with its value (at most 40 characters of it)."""
    from lr_core.errors import LrjobInputError

    model_dir = _export_with(tmp_path, "binary", [[1.0, -1.0]], [0.0], {})
    meta = json.loads((model_dir / "meta.json").read_text())
    meta[field] = value
    (model_dir / "meta.json").write_text(json.dumps(meta))
    if problem is None:
        assert ExportedModel(model_dir).meta[field] == value
        return
    with pytest.raises(LrjobInputError) as e:
        ExportedModel(model_dir)
    assert str(e.value) == (f"{model_dir}: damaged or incomplete model export (meta.json {problem}); "
                            f"re-export it by resuming or re-running the job")


def test_a_meta_json_over_its_bound_is_one_line(tmp_path):
    from lr_core.errors import LrjobInputError

    model_dir = _export_with(tmp_path, "binary", [[1.0, -1.0]], [0.0], {})
    meta = json.loads((model_dir / "meta.json").read_text())
    (model_dir / "meta.json").write_text(json.dumps(dict(meta, pad="x" * (1 << 20))))
    with pytest.raises(LrjobInputError) as e:
        ExportedModel(model_dir)
    assert str(e.value).startswith(f"{model_dir}: damaged or incomplete model export (meta.json ")
    assert str(e.value).endswith("; a model's takes a few KB); re-export it by resuming or re-running the job")


@pytest.mark.parametrize("damage,problem", [
    ("a list", "meta.json must hold a mapping, got list"),
    ("more features", "meta.json says 3 features, the weights expect another number"),
    ("softmax", "meta.json describes a softmax model with 3 output(s), the weights give 1"),
    ("binary", "meta.json describes a binary model with 1 output(s), the weights give 3"),
    ("params cut", "Check failed: fi->Read(data): Invalid NDArray file format"),   # MXNet 1.9.1's last line
    # a symbol file edited to sum the logit away: one row gives a 1-D output of one value
    ("1-d output", "meta.json describes a binary model with 1 output(s), the weights give 1"),
])
def test_an_export_whose_parts_disagree_is_one_line(tmp_path, damage, problem):
    """meta.json against the weights: the one-line error says which of them disagree; a cut params
    file gives the last line of MXNet's message (a C++ traceback), without its ``MXNetError: `` prefix."""
    from lr_core.errors import LrjobInputError

    if damage == "binary":   # softmax weights of 3 classes
        model_dir = _export_with(tmp_path, "softmax", np.eye(3, 2), [0.0] * 3, {})
    else:
        model_dir = _export_with(tmp_path, "binary", [[1.0, -1.0]], [0.0], {})
    meta = json.loads((model_dir / "meta.json").read_text())
    if damage == "binary":
        (model_dir / "meta.json").write_text(json.dumps(dict(meta, kind="binary", num_classes=2)))
    elif damage == "a list":
        (model_dir / "meta.json").write_text("[1, 2]")
    elif damage == "more features":
        (model_dir / "meta.json").write_text(json.dumps(dict(meta, num_features=3)))
    elif damage == "softmax":
        (model_dir / "meta.json").write_text(json.dumps(dict(meta, kind="softmax", num_classes=3)))
    elif damage == "1-d output":
        import mxnet as mx

        symbol = mx.sym.load(str(model_dir / "model-symbol.json"))
        mx.sym.sum(symbol, axis=1).save(str(model_dir / "model-symbol.json"))
    else:
        data = (model_dir / "model-0000.params").read_bytes()
        (model_dir / "model-0000.params").write_bytes(data[:len(data) // 2])
    with pytest.raises(LrjobInputError) as e:
        ExportedModel(model_dir)
    assert str(e.value) == (f"{model_dir}: damaged or incomplete model export ({problem}); "
                            f"re-export it by resuming or re-running the job")
