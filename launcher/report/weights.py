"""The weights of a linear model per named feature, for ``weights.png`` and its table in
``report.html`` (docs/design.md#plots-and-report).

Features are ranked by the magnitude of the model's own weight. With standardization that is
the weight on the standardized feature (log-odds per standard deviation), which compares
features measured in different units; the coefficient in the feature's original units
(``lr_core.export.original_units``) is shown beside it, as ``summary.json``'s
``coefficients`` holds it. Softmax ranks by the norm of a feature's weights over the classes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["LinearWeights", "read_linear_weights", "top_features", "feature_names", "TOP"]

TOP = 20   # features shown


class LinearWeights(NamedTuple):
    """A linear model's first (only) layer: ``weight`` (classes or 1, features) on the
    features the model sees, ``original`` the same on the features as given (equal to
    ``weight`` without standardization), ``bias`` per output and ``original_bias`` the
    bias on the features as given."""

    weight: np.ndarray
    original: np.ndarray
    bias: np.ndarray
    standardized: bool
    original_bias: np.ndarray


def read_linear_weights(model_dir: Path) -> LinearWeights:
    """The weights of the export in ``model_dir`` (MXNet's ``model-0000.params``; its
    ``meta.json`` for the standardization)."""
    import mxnet as mx

    from lr_core.export import original_units

    params = mx.nd.load(str(Path(model_dir) / "model-0000.params"))
    # Gluon's export names arguments 'arg:<parameter name>'; the model's layers are
    # 'lrjob_layer<i>_' (lr_core.models), so a linear model is layer 0 alone.
    try:
        w = params["arg:lrjob_layer0_weight"].asnumpy().astype(np.float64)
        b = params["arg:lrjob_layer0_bias"].asnumpy().astype(np.float64)
    except KeyError as e:
        raise KeyError(f"{model_dir}: no {e} in model-0000.params (keys: {', '.join(sorted(params))})") from e
    stats = json.loads((Path(model_dir) / "meta.json").read_text()).get("standardize")
    w0, b0 = original_units(w, b, stats)
    return LinearWeights(w, w0, b, bool(stats), b0)


def top_features(weight: np.ndarray, k: int = TOP, exclude=()) -> np.ndarray:
    """Column indices of the ``k`` features with the largest weights by magnitude (the norm
    over the rows, one row per output), largest first; ties keep column order. ``exclude``:
    columns never shown (a constant feature's weight only trades off against the bias)."""
    w = np.atleast_2d(np.asarray(weight, dtype=np.float64))
    size = np.sqrt((w ** 2).sum(axis=0))
    order = np.argsort(-size, kind="stable")
    if len(exclude):
        order = order[~np.isin(order, np.asarray(list(exclude), dtype=np.int64))]
    return order[:k]


def feature_names(data, n: int) -> list[str]:
    """The training columns' names (table sources), ``pixel (row, col)`` for images, else ``x[i]``."""
    columns = list(data.extra.get("columns") or [])
    if len(columns) == n:
        return [str(c) for c in columns]
    if data.image_shape and int(np.prod(data.image_shape[-2:])) == n:
        width = int(data.image_shape[-1])
        return [f"pixel ({i // width}, {i % width})" for i in range(n)]
    return [f"x[{i}]" for i in range(n)]
