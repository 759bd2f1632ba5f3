"""Exported models: the hybridized symbol + parameters that ``predict`` serves, and the
metadata it needs (kind, features, threshold, the standardization). Loading needs MXNet
only, no training code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import mxnet as mx
from mxnet import gluon

from .config import LoopConfig
from .data import standardizer
from .errors import shown
from .files import TooLarge, load_json
from .metrics import from_logits
from .models import build_model

__all__ = ["export_model", "ExportedModel", "original_units"]


def original_units(weight: np.ndarray, bias: np.ndarray, stats: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """The first layer's (weight, bias) on the features as given, in float64: the model
    computes ``W (x - mean) / std + b``, which is ``(W / std) x + (b - W (mean / std))``."""
    w, b = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    if not stats:
        return w, b
    mean, std = np.asarray(stats["mean"], dtype=np.float64), np.asarray(stats["std"], dtype=np.float64)
    return w / std, b - w @ (mean / std)

_MAX_META_BYTES = 1 << 20   # a model's meta.json holds a few hundred bytes


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


def _check_standardize(meta: dict) -> None:
    """meta.json's ``standardize`` (docs/design.md#standardization): null, or ``mean`` and
    ``std`` as lists of ``num_features`` finite numbers, every std above 0 (ValueError otherwise)."""
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
        a = np.array([x if isinstance(x, (int, float)) and not isinstance(x, bool) else np.nan for x in v],
                     dtype=np.float64)
        if not np.isfinite(a).all() or (key == "std" and not (a > 0).all()):
            bad = next(x for x, ok in zip(v, np.isfinite(a) & ((a > 0) if key == "std" else True)) if not ok)
            raise ValueError(f"meta.json standardize.{key} must hold finite numbers"
                             f"{', each above 0' if key == 'std' else ''}, got {str(bad)[:40]!r}")


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
    (directory / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
    return directory


class ExportedModel:
    """A model read back from an export folder."""

    def __init__(self, directory: str | os.PathLike):
        from .errors import LrjobInputError

        directory = Path(directory)
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
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            if isinstance(e, mx.base.MXNetError) and "Shape inconsistent" in str(e):
                first = (f"meta.json says {self.meta.get('num_features')} features, the weights expect "
                         f"another number")
            raise LrjobInputError(f"{directory}: damaged or incomplete model export ({first}); "
                                  f"re-export it by resuming or re-running the job") from None

    @property
    def num_features(self) -> int:
        return int(self.meta["num_features"])

    def logits(self, x: np.ndarray, batch: int = 8192, scale: float | None = None) -> np.ndarray:
        """Logits of the rows of ``x``, ``batch`` rows at a time (``x`` may be a memory map).
        ``scale``: the features are ``x * scale`` (a prepared dataset's stored uint8). The
        export's standardization applies after, as in training (docs/design.md#standardization)."""
        stats = self.meta.get("standardize")
        mean, inv_std = standardizer(stats) if stats else (None, None)

        def rows(a):
            chunk = np.asarray(x[a:a + batch], dtype=np.float32)
            chunk = chunk * np.float32(scale) if scale is not None else chunk
            return (chunk - mean) * inv_std if stats else chunk

        outs = [self.net(mx.nd.array(rows(a), dtype="float32")).asnumpy() for a in range(0, len(x), batch)]
        return np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, 1))

    def predict(self, x: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class, probability): binary P(class 1); softmax the top class's probability."""
        pred, prob, _ = from_logits(self.meta["kind"], self.logits(x, scale=scale), float(self.meta["threshold"]))
        return pred, prob


class _quiet_warnings:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)
