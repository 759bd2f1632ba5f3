"""Exported models: the hybridized symbol + parameters that ``predict`` serves, and the
metadata it needs (kind, features, threshold). Loading needs MXNet only, no training code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import mxnet as mx
from mxnet import gluon

from .config import LoopConfig
from .metrics import from_logits
from .models import build_model

__all__ = ["export_model", "ExportedModel"]


def export_model(directory: str | os.PathLike, cfg: LoopConfig, params: dict[str, np.ndarray],
                 num_features: int, meta: dict | None = None) -> Path:
    """Write ``model-symbol.json``, ``model-0000.params`` and ``meta.json`` into ``directory``."""
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
            self.meta = json.loads((directory / "meta.json").read_text())
            for key in ("kind", "num_classes", "num_features", "threshold"):
                self.meta[key]
            with _quiet_warnings():
                self.net = gluon.SymbolBlock.imports(str(directory / "model-symbol.json"), ["data"],
                                                     str(directory / "model-0000.params"))
        except (OSError, ValueError, KeyError, TypeError, mx.base.MXNetError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise LrjobInputError(f"{directory}: damaged or incomplete model export ({first}); "
                                  f"re-export it by resuming or re-running the job") from None

    @property
    def num_features(self) -> int:
        return int(self.meta["num_features"])

    def logits(self, x: np.ndarray, batch: int = 8192, scale: float | None = None) -> np.ndarray:
        """Logits of the rows of ``x``, ``batch`` rows at a time (``x`` may be a memory map).
        ``scale``: the features are ``x * scale`` (a prepared dataset's stored uint8)."""
        def rows(a):
            chunk = np.asarray(x[a:a + batch], dtype=np.float32)
            return chunk * np.float32(scale) if scale is not None else chunk

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
