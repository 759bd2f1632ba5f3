"""``ExportedModel`` serving scaled inputs (a prepared set's stored uint8 rows): the same
float32 arithmetic as training's ``Dataset.features``, where `make mutants` found the
fast tests silent."""
import mxnet as mx
import numpy as np

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
