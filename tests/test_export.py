"""Exported models (``lr_core.export``) in-process: what ``export_model`` writes, that
``ExportedModel`` serves the trained network's logits and predictions, and the one-line
error for a damaged export."""
import json

import mxnet as mx
import numpy as np
import pytest

from lr_core.config import LoopConfig
from lr_core.errors import LrjobInputError
from lr_core.export import ExportedModel, export_model
from lr_core.metrics import from_logits
from lr_core.models import build_model, initial_parameters

X = np.random.default_rng(0).normal(size=(9, 5))


def _export(tmp_path, cfg, meta=None, where="a/b/model"):
    params = initial_parameters(cfg, 5)
    out = export_model(tmp_path / where, cfg, params, 5, meta)
    return out, params


def _reference_logits(cfg, params, x):
    net = build_model(cfg, 5)
    for name, p in net.collect_params().items():
        p.set_data(mx.nd.array(params[name]))
    return net(mx.nd.array(x, dtype="float32")).asnumpy().astype(np.float64)


def test_export_writes_symbol_params_and_meta(tmp_path):
    cfg = LoopConfig(kind="softmax", num_classes=3, hidden=(4,), threshold=0.3)
    out, _ = _export(tmp_path, cfg, {"job": "x", "label_map": {"no": 0, "yes": 1}})
    assert out == tmp_path / "a" / "b" / "model"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model-0000.params", "model-symbol.json"]
    text = (out / "meta.json").read_text()
    assert json.loads(text) == {"kind": "softmax", "num_classes": 3, "num_features": 5, "threshold": 0.3,
                                "hidden": [4], "format": "mxnet-symbol-v1", "job": "x",
                                "label_map": {"no": 0, "yes": 1}, "labels": ["no", "yes", "2"]}
    assert text.startswith('{\n  "kind": ') and text.endswith("\n}\n")


def test_export_again_into_the_same_folder(tmp_path):
    cfg = LoopConfig(kind="binary")
    _export(tmp_path, cfg)
    out, params = _export(tmp_path, cfg)
    assert json.loads((out / "meta.json").read_text())["kind"] == "binary"
    assert np.allclose(ExportedModel(out).logits(X), _reference_logits(cfg, params, X), atol=1e-6)


@pytest.mark.parametrize("kind,classes,hidden", [("binary", 2, ()), ("softmax", 4, (3,))])
def test_served_logits_and_predictions_are_the_networks(tmp_path, kind, classes, hidden):
    cfg = LoopConfig(kind=kind, num_classes=classes, hidden=hidden, threshold=0.4)
    out, params = _export(tmp_path, cfg)
    model = ExportedModel(out)
    assert model.num_features == 5 and type(model.num_features) is int
    want = _reference_logits(cfg, params, X)
    got = model.logits(X)                         # float64 rows in, float64 logits out
    assert got.dtype == np.float64 and got.shape == (9, cfg.num_outputs)
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(model.logits(X, batch=2), got, atol=1e-6)   # in batches: the same rows
    pred, prob = model.predict(X)
    want_pred, want_prob, _ = from_logits(kind, want, 0.4)
    assert np.array_equal(pred, want_pred) and np.allclose(prob, want_prob, atol=1e-6)
    empty = model.logits(X[:0])
    assert empty.shape == (0, 1) and empty.dtype == np.float64


def test_predict_uses_the_exported_threshold(tmp_path):
    cfg = LoopConfig(kind="binary", threshold=0.9)
    out, params = _export(tmp_path, cfg)
    _, prob = ExportedModel(out).predict(X)
    pred, _ = ExportedModel(out).predict(X)
    assert np.array_equal(pred, (prob >= 0.9).astype(np.int64))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "threshold": "0.1"}))   # a string reads as a number
    pred, prob = ExportedModel(out).predict(X)
    assert np.array_equal(pred, (prob >= 0.1).astype(np.int64))


@pytest.mark.parametrize("damage,first", [
    ("list", "meta.json must hold a mapping, got list"),
    ("no threshold", "'threshold'"),
    ("no params", None),
])
def test_a_damaged_export_is_a_one_line_input_error(tmp_path, damage, first):
    out, _ = _export(tmp_path, LoopConfig(kind="binary"))
    meta = json.loads((out / "meta.json").read_text())
    if damage == "list":
        (out / "meta.json").write_text("[]")
    elif damage == "no threshold":
        del meta["threshold"]
        (out / "meta.json").write_text(json.dumps(meta))
    else:
        (out / "model-0000.params").unlink()
    with pytest.raises(LrjobInputError) as e:
        ExportedModel(out)
    msg = str(e.value)
    assert msg.startswith(f"{out}: damaged or incomplete model export (")
    assert msg.endswith("); re-export it by resuming or re-running the job")
    assert "\n" not in msg and e.value.__cause__ is None
    inner = msg[len(f"{out}: damaged or incomplete model export ("):-len("); re-export it by resuming or "
                                                                          "re-running the job")]
    assert inner and inner != "None"
    if first:
        assert inner == first


def test_a_long_error_is_cut_to_200_characters(tmp_path):
    missing = tmp_path / ("x" * 230)
    with pytest.raises(LrjobInputError) as e:
        ExportedModel(missing)
    inner = str(e.value).split(": damaged or incomplete model export (", 1)[1].rsplit("); re-export", 1)[0]
    assert len(inner) == 200 and inner.startswith("[Errno 2] No such file or directory")


def test_class_labels_invert_the_label_map():
    from lr_core.export import class_labels

    binary = {"kind": "binary", "num_classes": 2}
    assert class_labels(binary) == ["0", "1"]
    assert class_labels({**binary, "label_map": {"no": 0, "yes": 1}}) == ["no", "yes"]
    assert class_labels({**binary, "label_map": {"-1": 0, "1": 1}}) == ["-1", "1"]
    # several keys for one class: the first names it; a class no key maps to keeps its number
    assert class_labels({"kind": "softmax", "num_classes": 3, "label_map": {"n": 0, "no": 0, "y": 2}}) == \
        ["n", "1", "y"]


@pytest.mark.parametrize("scale", ["0.5", -1, 0, True, float("inf")])
def test_a_meta_scale_that_is_not_a_positive_number_is_a_damaged_export(tmp_path, scale):
    out, _ = _export(tmp_path, LoopConfig(kind="binary"), {"scale": 0.5})
    assert ExportedModel(out).scale == 0.5
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "scale": scale}))
    with pytest.raises(LrjobInputError, match="meta.json scale must be null or a positive number"):
        ExportedModel(out)


def test_probabilities_are_every_class_and_agree_with_predict(tmp_path):
    for kind, classes in (("binary", 2), ("softmax", 4)):
        cfg = LoopConfig(kind=kind, num_classes=classes, threshold=0.4)
        out, _ = _export(tmp_path, cfg, where=kind)
        model = ExportedModel(out)
        pred, prob = model.predict(X, scale=2.0)
        pred2, probs = model.probabilities(X, scale=2.0)
        assert probs.shape == (len(X), classes) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-12)
        assert np.array_equal(pred, pred2)
        top = probs[:, 1] if kind == "binary" else probs[np.arange(len(X)), pred]
        assert np.allclose(top, prob, atol=1e-12)
