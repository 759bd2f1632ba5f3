"""Exported models: the hybridized symbol + parameters that ``predict`` serves, and the
metadata it needs (kind, features, threshold, the standardization, the class labels).
Loading needs MXNet only, no training code. ``export_onnx`` writes the same model, its
input scale and standardization included, as ``model.onnx`` for onnxruntime
(docs/design.md#onnx-export); it imports ``onnx`` only when called.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import mxnet as mx
from mxnet import gluon

from .config import LoopConfig
from .data import MIN_STD, standardizer
from .errors import shown
from .files import TooLarge, load_json
from .metrics import from_logits
from .models import build_model

__all__ = ["export_model", "export_onnx", "ExportedModel", "original_units", "class_labels", "ONNX_FILE"]

ONNX_FILE = "model.onnx"


def original_units(weight: np.ndarray, bias: np.ndarray, stats: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """The first layer's (weight, bias) on the features as given, in float64: the model
    computes ``W (x - mean) / std + b``, which is ``(W / std) x + (b - W (mean / std))``."""
    w, b = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    if not stats:
        return w, b
    mean, std = np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64)
    return w / std, b - w @ (mean / std)

_MAX_META_BYTES = 1 << 20   # a model's meta.json holds a few hundred bytes


def class_labels(meta: dict) -> list[str]:
    """The original label of each class, in class order, as text: ``data.label_map``
    inverted (``{"no": 0, "yes": 1}`` gives ``["no", "yes"]``; the first key of a class
    that several keys map to), else the class number (``["0", "1"]``)."""
    k = 2 if meta["kind"] == "binary" else int(meta["num_classes"])
    labels = [str(c) for c in range(k)]
    named = set()
    for key, cls in (meta.get("label_map") or {}).items():
        if isinstance(cls, int) and not isinstance(cls, bool) and 0 <= cls < k and cls not in named:
            labels[cls] = str(key)
            named.add(cls)
    return labels


def _float32_holds(x) -> bool:
    """Whether ``x`` is a number (not a boolean) that float32 holds as a finite value: the
    scale and the standardization are applied in float32 (the training graph, serving, ONNX),
    where a larger one is inf and turns every input into inf or NaN."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not abs(x) <= sys.float_info.max:
        return False  # NaN, or a whole number of 400 digits (float() of it overflows)
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(x)))


def _check_meta(meta: dict) -> None:
    """The fields serving reads from meta.json hold usable values (ValueError otherwise)."""
    if meta["kind"] not in ("binary", "softmax"):
        raise ValueError(f"meta.json kind must be binary or softmax, got {str(meta['kind'])[:40]!r}")
    for key in ("num_classes", "num_features"):
        v = meta[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 24:
            raise ValueError(f"meta.json {key} must be a positive integer, got {str(v)[:40]!r}")
    t = meta["threshold"]
    try:  # a number (or its text, not a boolean) that float holds: 400 digits overflow it
        usable = not isinstance(t, bool) and isinstance(t, (int, float, str)) and 0 < float(t) < 1
    except (OverflowError, ValueError):
        usable = False
    if not usable:
        raise ValueError(f"meta.json threshold must be a number between 0 and 1, got {shown(t, 40)}")
    scale = meta.get("scale")
    if scale is not None and not (_float32_holds(scale) and np.float32(scale) > 0):
        raise ValueError(f"meta.json scale must be null or a positive number that float32 holds (at most "
                         f"{_F32_MAX:.3g}), got {shown(scale, 40)}")


def _check_standardize(meta: dict) -> None:
    """meta.json's ``standardize`` (docs/design.md#standardization): null, or ``mean`` and
    ``std`` as lists of ``num_features`` numbers that float32 holds, every std at least
    :data:`~lr_core.data.MIN_STD` (ValueError otherwise)."""
    stats = meta.get("standardize")
    if stats is None:
        return
    if not isinstance(stats, dict):
        raise ValueError(f"meta.json standardize must be a mapping with mean and std, got {str(stats)[:40]!r}")
    n = meta["num_features"]
    for key in ("mean", "std"):
        v = stats.get(key)
        if not isinstance(v, list) or len(v) != n:
            raise ValueError(f"meta.json standardize.{key} must be a list of {n} numbers, got {str(v)[:40]!r}")
        ok = [_float32_holds(x) and (key == "mean" or x >= MIN_STD) for x in v]
        if not all(ok):
            bad = v[ok.index(False)]
            what = (f"numbers that float32 holds (at most {_F32_MAX:.3g} in size)" if key == "mean" else
                    f"numbers from {MIN_STD:.3g} (1 / float32's largest) to {_F32_MAX:.3g}")
            raise ValueError(f"meta.json standardize.{key} must hold {what}, got {str(bad)[:40]!r}")


def export_model(directory: str | os.PathLike, cfg: LoopConfig, params: dict[str, np.ndarray],
                 num_features: int, meta: dict | None = None) -> Path:
    """Write ``model-symbol.json``, ``model-0000.params`` and ``meta.json`` into ``directory``.
    ``meta["standardize"]`` (the training rows' mean and std, or null) is applied to every
    input by :class:`ExportedModel`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    net = build_model(cfg, num_features)
    for name, p in net.collect_params().items():
        p.set_data(mx.nd.array(params[name], dtype="float32"))
    net.hybridize()
    net(mx.nd.zeros((1, num_features)))
    net.export(str(directory / "model"), epoch=0)
    info = {"kind": cfg.kind, "num_classes": cfg.num_classes, "num_features": num_features,
            "threshold": cfg.threshold, "hidden": list(cfg.hidden), "format": "mxnet-symbol-v1"}
    info.update(meta or {})
    if info.get("label_map"):  # what predict prints for each class, for readers of meta.json
        info["labels"] = class_labels(info)
    (directory / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
    return directory


class ExportedModel:
    """A model read back from an export folder."""

    def __init__(self, directory: str | os.PathLike):
        from .errors import LrjobInputError

        directory = Path(directory)
        self.directory = directory
        try:
            try:
                self.meta = load_json(directory / "meta.json", _MAX_META_BYTES)
            except TooLarge as e:
                raise ValueError(f"meta.json {e}; a model's takes a few KB") from None
            if not isinstance(self.meta, dict):
                raise ValueError(f"meta.json must hold a mapping, got {type(self.meta).__name__}")
            for key in ("kind", "num_classes", "num_features", "threshold"):
                self.meta[key]
            _check_meta(self.meta)
            _check_standardize(self.meta)
            with _quiet_warnings():
                self.net = gluon.SymbolBlock.imports(str(directory / "model-symbol.json"), ["data"],
                                                     str(directory / "model-0000.params"))
            # The weights must be those meta.json describes: one row of zeros goes through,
            # and gives one logit (binary) or num_classes of them.
            out = self.net(mx.nd.zeros((1, self.num_features))).shape
            want = (1, 1 if self.meta["kind"] == "binary" else int(self.meta["num_classes"]))
            if tuple(out) != want:
                raise ValueError(f"meta.json describes a {self.meta['kind']} model with {want[1]} output(s), "
                                 f"the weights give {out[-1]}")
        except (OSError, ValueError, KeyError, TypeError, mx.base.MXNetError) as e:
            lines = str(e).strip().splitlines() or [type(e).__name__]
            # MXNet's message is a C++ traceback whose last line says what failed
            first = (lines[-1].removeprefix("MXNetError: ") if isinstance(e, mx.base.MXNetError)
                     else lines[0])[:200]
            if isinstance(e, mx.base.MXNetError) and "Shape inconsistent" in str(e):
                first = (f"meta.json says {self.meta.get('num_features')} features, the weights expect "
                         f"another number")
            raise LrjobInputError(f"{directory}: damaged or incomplete model export ({first}); "
                                  f"re-export it by resuming or re-running the job") from None

    @property
    def num_features(self) -> int:
        return int(self.meta["num_features"])

    @property
    def labels(self) -> list[str]:
        """The original label of each class, in class order (:func:`class_labels`)."""
        return class_labels(self.meta)

    @property
    def scale(self) -> float | None:
        """The training data's stored scale (MNIST: 1/255): inputs are multiplied by it, as
        the stored uint8 rows were in training; None for features taken as they are."""
        scale = self.meta.get("scale")
        return None if scale is None else float(scale)

    def logits(self, x: np.ndarray, batch: int = 8192, scale: float | None = None) -> np.ndarray:
        """Logits of the rows of ``x``, ``batch`` rows at a time (``x`` may be a memory map).
        ``scale``: the features are ``x * scale`` (a prepared dataset's stored uint8). The
        export's standardization applies after, as in training (docs/design.md#standardization)."""
        stats = self.meta.get("standardize")
        mean, inv_std = standardizer(stats) if stats else (None, None)

        def rows(a):
            chunk = np.asarray(x[a:a + batch], dtype=np.float32)
            # A value near float32's largest (3.4e38) overflows to +-inf here, and the network would
            # make inf - inf = NaN of it: it saturates at +-3.4e38 instead, so the logit keeps its
            # sign (a finite result is left bit for bit as training computes it). NumPy's overflow
            # RuntimeWarning would only print a source line in the middle of predict's output.
            with np.errstate(over="ignore"):
                chunk = chunk * np.float32(scale) if scale is not None else chunk
                if not stats:
                    return chunk
                z = (chunk - mean) * inv_std
            return np.clip(z, -_F32_MAX, _F32_MAX, out=z)

        outs = [self.net(mx.nd.array(rows(a), dtype="float32")).asnumpy() for a in range(0, len(x), batch)]
        return np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, 1))

    def predict(self, x: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class, probability): binary P(class 1); softmax the top class's probability."""
        pred, prob, _ = from_logits(self.meta["kind"], self.logits(x, scale=scale), float(self.meta["threshold"]))
        return pred, prob

    def probabilities(self, x: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class, probability of every class): ``(n,)`` int64 and ``(n, k)``
        float64, column ``j`` the probability of class ``j`` (binary: ``1 - p``, ``p``)."""
        logits = self.logits(x, scale=scale)
        pred, prob, _ = from_logits(self.meta["kind"], logits, float(self.meta["threshold"]))
        if self.meta["kind"] == "binary":
            return pred, np.column_stack([1.0 - prob, prob])
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return pred, e / e.sum(axis=1, keepdims=True)


_F32_MAX = np.float32(np.finfo(np.float32).max)
ONNX_INPUT, ONNX_OUTPUT = "features", "probabilities"
ONNX_TOLERANCE = 1e-6   # onnxruntime's probabilities against ExportedModel.probabilities (at least)


def export_onnx(directory: str | os.PathLike) -> Path:
    """Write ``model.onnx`` beside the MXNet export in ``directory`` and record what it
    expects under ``onnx`` in ``meta.json`` (docs/design.md#onnx-export).

    The graph is the exported network with the input scale (a stored uint8 set's 1/255)
    and the standardization as float32 operations before it, ``x * scale``, ``- mean``,
    ``* (1 / std)``, the arithmetic :class:`ExportedModel` does, and the class
    probabilities after it: input ``features`` (float32, ``[batch, num_features]``, the
    features as ``predict`` takes them), output ``probabilities`` (``[batch, k]``, one
    column per class). Before it is renamed into place, onnxruntime runs it on probe rows
    and must give :meth:`ExportedModel.probabilities` within ``ONNX_TOLERANCE``, or within
    the MXNet model's own float32 rounding when that is larger (:func:`_check_onnx`).

    A damaged MXNet export raises ``LrjobInputError``; a conversion that fails,
    ``LrjobRuntimeError``. Nothing is left behind but a complete ``model.onnx``.
    """
    from . import faults
    from .errors import LrjobRuntimeError

    directory = Path(directory)
    model = ExportedModel(directory)  # checks meta.json against the weights: one line if damaged
    tmp = directory / f".{ONNX_FILE}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        faults.hit("export", format="onnx")
        try:
            import onnx
            import mxnet.onnx as mx_onnx
        except ImportError as e:
            raise LrjobRuntimeError(f"the ONNX export needs the onnx package ({e}); "
                                    f"pip install onnx==1.16.2 onnxruntime==1.19.2") from None
        sym, params = _onnx_symbol(directory, model)
        with _quiet_warnings(), _quiet_logging():
            mx_onnx.export_model(sym, params, in_shapes=[(1, model.num_features)], in_types=[np.float32],
                                 onnx_file_path=str(tmp), dynamic=True,
                                 dynamic_input_shapes=[(None, model.num_features)])
        proto = _tidy_onnx(onnx.load(str(tmp)), model)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        _check_onnx(tmp, model)
        os.replace(tmp, directory / ONNX_FILE)
    except (faults.FaultSpecError, LrjobRuntimeError):
        raise
    except Exception as e:  # noqa: BLE001 - the converter's or onnx's own errors, as one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise LrjobRuntimeError(f"{directory}: ONNX export failed ({type(e).__name__}: {first})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    meta = dict(model.meta)
    meta["labels"] = model.labels
    meta["onnx"] = _onnx_meta(model, proto)
    _write_atomic(directory / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return directory / ONNX_FILE


def _onnx_symbol(directory: Path, model: ExportedModel):
    """The exported network behind the scale and standardization and before the class
    probabilities, as one MXNet symbol, with every parameter it needs."""
    net = mx.sym.load(str(directory / "model-symbol.json"))
    params = {k.split(":", 1)[1]: v for k, v in mx.nd.load(str(directory / "model-0000.params")).items()}
    x = mx.sym.var(ONNX_INPUT)
    if model.scale is not None:
        params["lrjob_input_scale"] = mx.nd.array(np.full((1, 1), model.scale, dtype=np.float32))
        x = mx.sym.broadcast_mul(x, mx.sym.var("lrjob_input_scale"))
    stats = model.meta.get("standardize")
    if stats:
        mean, inv_std = standardizer(stats)
        params["lrjob_standardize_mean"] = mx.nd.array(mean.reshape(1, -1))
        params["lrjob_standardize_inv_std"] = mx.nd.array(inv_std.reshape(1, -1))
        x = mx.sym.broadcast_mul(mx.sym.broadcast_sub(x, mx.sym.var("lrjob_standardize_mean")),
                                 mx.sym.var("lrjob_standardize_inv_std"))
    z = net(data=x)
    if model.meta["kind"] == "binary":  # one logit z: P(class 0) = sigmoid(-z), P(class 1) = sigmoid(z)
        out = mx.sym.concat(mx.sym.sigmoid(mx.sym.negative(z)), mx.sym.sigmoid(z), dim=1)
    else:
        out = mx.sym.softmax(z, axis=1)
    return mx.sym.identity(out, name=ONNX_OUTPUT), params


def _tidy_onnx(proto, model: ExportedModel):
    """One graph input (the converter lists every weight as an input too), no unused
    constant, the batch axis named, the output's shape and the model's labels stated."""
    g = proto.graph
    consts = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    del g.input[:]
    g.input.extend(inputs)
    used = {name for node in g.node for name in node.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    g.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    k = len(model.labels)
    dims = g.output[0].type.tensor_type.shape.dim
    while len(dims) < 2:
        dims.add()
    dims[0].dim_param = "batch"
    dims[1].dim_value = k
    proto.producer_name, proto.producer_version = "lrjob", str(model.meta.get("job") or "")
    proto.doc_string = (f"lrjob {model.meta['kind']} model: {ONNX_INPUT} [batch, {model.num_features}] float32 -> "
                        f"{ONNX_OUTPUT} [batch, {k}], one column per class; see metadata_props")
    del proto.metadata_props[:]
    for key, value in (("classes", model.labels), ("features", _feature_names(model)),
                       ("threshold", float(model.meta["threshold"]))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return proto


def _check_onnx(path: Path, model: ExportedModel) -> None:
    """onnxruntime's probabilities on probe rows equal the MXNet export's: within
    ONNX_TOLERANCE, or within the rounding the MXNet model itself shows in float32
    (:func:`_rounding_allowance`) when that is larger, as it is for wide inputs."""
    import onnxruntime as ort

    from .errors import LrjobRuntimeError

    stats = model.meta.get("standardize")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, model.num_features))
    rows = z * np.asarray(stats["std"]) + np.asarray(stats["mean"]) if stats else z
    rows = (rows / (model.scale or 1.0)).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run([ONNX_OUTPUT], {ONNX_INPUT: rows})[0]
    _, want = model.probabilities(rows, scale=model.scale)
    worst = float(np.max(np.abs(got.astype(np.float64) - want)))
    allowed = max(ONNX_TOLERANCE, _rounding_allowance(model, rows, want))
    if not worst <= allowed:
        raise LrjobRuntimeError(f"{path.parent}: the ONNX model's probabilities differ from the MXNet "
                                f"model's by {worst:.3g} (more than {allowed:.3g}); model.onnx was not written")


def _rounding_allowance(model: ExportedModel, rows: np.ndarray, want: np.ndarray) -> float:
    """How far two float32 evaluations of the model may fairly differ on ``rows``: four times
    the largest distance of the MXNet model's float32 probabilities (``want``) from the same
    network evaluated in float64. A dot product over many features rounds in an order each
    runtime picks (MXNet and onnxruntime differ), and its rounding grows with the width:
    3,000 features give a few 1e-6, every one of them as right as float32 allows
    (docs/design.md#onnx-export). A graph that computes another function is off by far more."""
    directory = model.directory
    with _quiet_warnings():
        net = gluon.SymbolBlock.imports(str(directory / "model-symbol.json"), ["data"],
                                        str(directory / "model-0000.params"))
    net.cast("float64")
    x = rows.astype(np.float64) * (model.scale if model.scale is not None else 1.0)
    stats = model.meta.get("standardize")
    if stats:
        x = (x - np.asarray(stats["mean"], dtype=np.float64)) / np.asarray(stats["std"], dtype=np.float64)
    logits = net(mx.nd.array(x, dtype="float64")).asnumpy().astype(np.float64)
    if model.meta["kind"] == "binary":
        _, p, _ = from_logits("binary", logits, float(model.meta["threshold"]))
        exact = np.column_stack([1.0 - p, p])
    else:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        exact = e / e.sum(axis=1, keepdims=True)
    return 4.0 * float(np.max(np.abs(want - exact)))


def _feature_names(model: ExportedModel) -> list[str] | None:
    columns = list(model.meta.get("columns") or [])
    return columns if len(columns) == model.num_features else None


def _onnx_meta(model: ExportedModel, proto) -> dict:
    """meta.json's ``onnx``: what the ONNX model expects and what it returns."""
    binary = model.meta["kind"] == "binary"
    stats = model.meta.get("standardize")
    return {
        "file": ONNX_FILE,
        "input": ONNX_INPUT, "input_type": "float32", "input_shape": ["batch", model.num_features],
        "features": _feature_names(model),
        "applies": {"scale": model.scale, "standardize": bool(stats)},
        "output": ONNX_OUTPUT, "output_shape": ["batch", len(model.labels)], "classes": model.labels,
        "decision": (f"classes[1] when probabilities[:, 1] >= {float(model.meta['threshold'])!r}, else classes[0]"
                     if binary else "classes[argmax(probabilities, axis=1)]"),
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
    }


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a new file beside it, fsynced and renamed."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _quiet_logging:
    """The ONNX converter logs every operator it converts: not for the user's terminal."""

    def __enter__(self):
        import logging
        self._logging = logging
        self._level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        self._logging.disable(self._level)


class _quiet_warnings:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)
