"""Pictures and an HTML report for a finished run, written into its run directory
(docs/design.md#plots-and-report).

The driver calls :func:`write_plots` after a completed run (``launcher/driver.py``); the
same pictures can be redrawn later from the run directory alone:

    python -m launcher.report.plots runs/binary_2d-<stamp>

Files (each only where it means something):

- ``curves.png``     loss (train, validation) and validation metrics per epoch
- ``confusion.png``  softmax: the exported epoch's confusion matrix (the model in ``model/``)
- ``samples.png``    image data: validation images with predicted and true class
- ``boundary.png``   binary data with 2 features: the points, P(class 1) and the boundary
- ``roc_pr.png``     binary: ROC and precision-recall curves of the exported model on the
                     validation rows, with the AUC and the average precision
- ``weights.png``    linear models: the weights of the top features by magnitude, by name
- ``report.html``    one self-contained page: warnings, summary, the pictures (embedded),
                     per-epoch metrics, the resolved spec

A picture that cannot mean anything for this run (a one-class validation set, NaN scores,
no validation rows, a model with hidden layers for ``weights.png``) is skipped with a note
in the report; one that fails is left out with the error. Neither fails the run.

Figures are drawn with ``matplotlib.figure.Figure`` and never through ``pyplot``, so no
GUI backend is chosen, no global state changes in the driver, and nothing leaks open
figures when a run directory is redrawn many times.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

__all__ = ["write_plots", "boundary_line", "linear_parameters", "pick_samples", "main"]

log = logging.getLogger(__name__)

DPI = 120
SAMPLE_ROWS, SAMPLE_COLS = 4, 8
CLASS0, CLASS1 = "#2166ac", "#b2182b"  # the ends of RdBu, so points match the shading
MISTAKE = "#d62728"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
CAPTIONS = {
    "curves.png": "Loss and validation metrics per epoch.",
    "confusion.png": "The exported model's confusion matrix: rows are the true class, columns the "
                     "predicted class; numbers are counts, colour is the fraction of the row.",
    "samples.png": "Validation images with the exported model's prediction; mistakes in red.",
    "boundary.png": "Training (small) and validation (large) points, P(class 1) from the exported "
                    "model as shading, and the decision boundary.",
    "roc_pr.png": "The exported model's scores on every validation row: ROC curve (left) and "
                  "precision-recall curve (right); the dot is the decision threshold.",
    "weights.png": "The exported model's weights for the features with the largest weights by magnitude.",
}


# LRJOB_PICTURES=0: no pictures, report.html alone (scripted runs, sweeps of many trials, the
# tests); each picture costs about 0.4 s of matplotlib (docs/design.md#plots-and-report).
PICTURES_ENV = "LRJOB_PICTURES"


class Skipped(Exception):
    """A picture that cannot mean anything for this run; the message says why, for the report."""


# --------------------------------------------------------------------------- entry point
def write_plots(run_dir: Path, spec, data, history: list[dict]) -> list[Path]:
    """Draw every picture that fits this run, then ``report.html``; return the paths written.

    Each picture is drawn on its own: one that fails is logged and left out, so a problem
    in, say, the boundary does not cost the curves or the report.
    """
    run_dir = Path(run_dir)
    model = _LazyModel(run_dir / "model")
    jobs: list[tuple[str, Callable[[], object]]] = [
        ("curves.png", lambda: _draw_curves(spec, history)),
    ]
    if spec.model.kind == "softmax" and history and "confusion" in history[-1]:
        jobs.append(("confusion.png", lambda: _draw_confusion(spec, data, _exported_epoch(history, model.get()))))
    if data.image_shape:
        jobs.append(("samples.png", lambda: _draw_samples(spec, data, model.get())))
    if spec.model.kind == "binary" and data.num_features == 2:
        jobs.append(("boundary.png", lambda: _draw_boundary(spec, data, run_dir / "model", model.get(),
                                                            history)))
    extra: dict = {}  # what a picture found that the page shows beside it (the weights table)
    if spec.model.kind == "binary":
        jobs.append(("roc_pr.png", lambda: _draw_ranking(spec, data, model.get(), extra)))
    jobs.append(("weights.png", lambda: _draw_weights(spec, data, run_dir / "model", extra)))
    written, failed, skipped = [], {}, {}
    if os.environ.get(PICTURES_ENV, "1") == "0":  # report.html only, each picture named as skipped
        skipped = {name: f"{PICTURES_ENV}=0 turned pictures off" for name, _ in jobs}
        for name, _ in jobs:
            (run_dir / name).unlink(missing_ok=True)  # an older picture would now mislead
        jobs = []
    for name, draw in jobs:
        try:
            written.append(_save(draw(), run_dir / name))
        except Skipped as e:
            skipped[name] = str(e)
            (run_dir / name).unlink(missing_ok=True)
            log.info("lrjob: %s skipped (%s)", name, e)
        except Exception as e:  # noqa: BLE001 - one picture must not cost the others
            failed[name] = f"{type(e).__name__}: {e}"
            (run_dir / name).unlink(missing_ok=True)  # an older picture would now mislead
            log.warning("lrjob: %s not drawn (%s)", name, failed[name])
    written.append(_write_report(run_dir, spec, data, history, _Drawn(written, failed, skipped, extra)))
    return written


class _Drawn(NamedTuple):
    """What ``write_plots`` drew for the report: pictures, failures and skips by name, and
    the numbers a picture shows that the page also lists (``weights``)."""

    pictures: list
    failed: dict
    skipped: dict
    extra: dict


class _LazyModel:
    """Load the exported model once, and only for the pictures that need it (it imports MXNet)."""

    def __init__(self, directory: Path):
        self.directory, self._model = directory, None

    def get(self):
        """The exported model (``lr_core.export.ExportedModel``), loaded on the first call."""
        if self._model is None:
            from lr_core.export import ExportedModel

            self._model = ExportedModel(self.directory)
        return self._model


def _save(fig, path: Path) -> Path:
    import io

    from ..rundir import RunDir

    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    RunDir(path.parent).write_bytes(path.name, buf.getvalue())  # atomic, never through a link
    return path


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    # constrained layout keeps titles, tick labels and colour bars from overlapping.
    return Figure(figsize=(width, height), layout="constrained")


def _exported_epoch(history: list[dict], model) -> dict:
    """The metrics of the epoch ``model/`` holds (meta.json's ``exported``): with
    ``checkpoint.keep_best`` an earlier one than the last; the last for an export without it."""
    exported = (getattr(model, "meta", None) or {}).get("exported") or {}
    drawn = [m for m in history if m.get("epoch") == exported.get("epoch")] or history[-1:] or [{}]
    return drawn[-1]


def _class_label(names: list[str], cls: int) -> str:
    """``class 1``, with its label where a label_map names it: ``class 1 = yes``."""
    name = names[cls] if cls < len(names) else str(cls)
    return f"class {cls}" if name == str(cls) else f"class {cls} = {name}"


def _class_names(spec, data) -> list[str]:
    k = 2 if spec.model.kind == "binary" else int(spec.model.num_classes)
    # Names only where the classes are the source's own; a label_map re-encodes them.
    if data.source == "fashion-mnist" and k == 10 and not spec.data.label_map:
        return list(FASHION_CLASSES)
    return [str(i) for i in range(k)]


def _label_names(spec, data) -> list[str]:
    """The class names a person gave: ``data.label_map`` inverted where it names every class
    once (``{yes: 1, no: 0}`` gives ``no, yes``), else ``_class_names``."""
    names = _class_names(spec, data)
    label_map = spec.data.label_map or {}
    by_class = {}
    for label, cls in label_map.items():
        try:
            by_class.setdefault(int(cls), []).append(str(label))
        except (TypeError, ValueError):
            return names
    if sorted(by_class) != list(range(len(names))) or any(len(v) != 1 for v in by_class.values()):
        return names
    return [by_class[i][0] for i in range(len(names))]


# --------------------------------------------------------------------------- curves
def _draw_curves(spec, history: list[dict]):
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    # with train.class_weight the training loss is weighted, the validation loss is not
    weighted = spec.train.class_weight is not None
    losses = _line(ax_loss, epochs, history, "train_loss",
                   _Look("train loss (class-weighted)" if weighted else "train loss", "tab:blue"))
    losses += _line(ax_loss, epochs, history, "val_loss", _Look("validation loss", "tab:orange"))
    ax_loss.set(title="Loss (mean cross-entropy)", xlabel="epoch", ylabel="loss")
    ax_loss.set_ylim(0, 1.08 * max([v for v in losses if np.isfinite(v)], default=1.0))
    scores = _line(ax_acc, epochs, history, "val_accuracy", _Look("accuracy", "tab:green"))
    # F1 and AUC say what accuracy hides on unbalanced classes.
    scores += _line(ax_acc, epochs, history, "val_f1", _Look("F1", "tab:purple", "--"))
    scores += _line(ax_acc, epochs, history, "val_auc", _Look("ROC AUC", "tab:gray", ":"))
    scores += _line(ax_acc, epochs, history, "val_macro_f1", _Look("macro F1", "tab:purple", "--"))
    ax_acc.set(title="Validation metrics", xlabel="epoch", ylabel="score")
    ax_acc.set_ylim(*_score_limits(scores))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
        if len(epochs) == 1:  # a single point needs room either side, and one tick
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
            ax.set_xticks(epochs)
    hidden = spec.model.hidden
    model = f"{spec.model.kind}, hidden {list(hidden)}" if hidden else f"{spec.model.kind}, linear"
    noun = "epoch" if len(epochs) == 1 else "epochs"
    fig.suptitle(f"{spec.name}: training curves ({len(epochs)} {noun}, {model})", fontsize=13)
    notes = [f"{label} not drawn: undefined in every epoch" + (" (one class in the validation set)"
                                                              if key == "val_auc" else "")
             for key, label in (("val_loss", "validation loss"), ("val_f1", "F1"), ("val_auc", "ROC AUC"),
                                ("val_macro_f1", "macro F1")) if _undefined(history, key)]
    if notes:
        fig.text(0.5, 0.005, "; ".join(notes), ha="center", va="bottom", fontsize=8, color="dimgray")
    return fig


def _score_limits(scores: list[float]) -> tuple[float, float]:
    """Scores live in [0, 1]: zoom on the values drawn, but never past 1 or below 0."""
    finite = [v for v in scores if np.isfinite(v)]
    lo = min(finite, default=0.0)
    pad = max(0.02, 0.08 * (1.0 - lo))
    return max(0.0, lo - pad), 1.01


class _Look(NamedTuple):
    """How one metric's line looks in the legend and on the axes."""

    label: str
    colour: str
    style: str = "-"


def _undefined(history, key) -> bool:
    """Whether ``key`` is in the history but null in every epoch (the AUC of a one-class
    validation set): such a line is not drawn."""
    return any(key in h for h in history) and all(h.get(key) is None for h in history)


def _line(ax, epochs, history, key, look: _Look):
    """Plot ``key`` per epoch; returns its values (nothing when no epoch has it, or every
    epoch has null); a null epoch leaves a gap."""
    label, colour, style = look
    if not any(key in h for h in history) or _undefined(history, key):
        return []
    ys = [np.nan if h.get(key) is None else float(h[key]) for h in history]
    # Markers only while they do not crowd: they show single epochs on short runs.
    marker = "o" if len(epochs) <= 30 else None
    ax.plot(epochs, ys, style, color=colour, marker=marker, markersize=4, label=label)
    return ys


# --------------------------------------------------------------------------- confusion
def _draw_confusion(spec, data, last: dict):
    cm = np.asarray(last["confusion"], dtype=np.int64)
    k = cm.shape[0]
    names = _label_names(spec, data)[:k]
    row = cm.sum(axis=1, keepdims=True)
    # Colour by the fraction of each true class, so small classes are as visible as big ones.
    frac = np.divide(cm, row, out=np.zeros(cm.shape, dtype=float), where=row > 0)
    side = min(max(5.5, 0.55 * k + 2.5), 14)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    if k <= 30:  # beyond that the numbers cannot be read; the colours still can
        _annotate_counts(ax, cm, frac, fontsize=9 if k <= 12 else 7)
    ticks = np.arange(k)
    step = 1 if k <= 30 else math.ceil(k / 30)
    shown = [names[i] for i in ticks[::step]]
    slanted = max(len(n) for n in names) > 2  # long names (Fashion-MNIST) would collide level
    ax.set_xticks(ticks[::step], shown, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(ticks[::step], shown)
    ax.set(xlabel="predicted class", ylabel="true class")
    n = int(cm.sum())
    acc = np.trace(cm) / n if n else float("nan")
    ax.set_title(f"{spec.name}: confusion matrix, epoch {last.get('epoch', '?')}\n"
                 f"{data.val_name}: {n} rows, accuracy {acc:.4f}", fontsize=12)
    return fig


def _annotate_counts(ax, cm, frac, fontsize):
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j] == 0:
                colour = "#b0b0b0"  # zeros recede so the mistakes stand out
            else:
                colour = "white" if frac[i, j] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, fontsize=fontsize)


# --------------------------------------------------------------------------- samples
def pick_samples(y_true: np.ndarray, y_pred: np.ndarray, n: int = SAMPLE_ROWS * SAMPLE_COLS,
                 mistake_share: float = 0.25) -> np.ndarray:
    """Indices of ``n`` rows to show, in row order; about ``mistake_share`` of them mistakes
    (at least one when any exist; more only when too few rows are right to fill the grid).

    Deterministic: rows spread evenly over the mistakes and over the correct rows, so the
    same run always shows the same grid.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) <= n:
        return np.arange(len(y_true))
    wrong = np.flatnonzero(y_true != y_pred)
    right = np.flatnonzero(y_true == y_pred)
    n_wrong = min(len(wrong), max(1, int(n * mistake_share))) if len(wrong) else 0
    n_right = min(len(right), n - n_wrong)
    n_wrong = min(len(wrong), n - n_right)  # fill up with mistakes when few rows are right
    chosen = np.concatenate([_spread(wrong, n_wrong), _spread(right, n_right)])
    return np.sort(chosen)


def _spread(idx: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        return idx[:0]
    return idx[np.linspace(0, len(idx) - 1, k).round().astype(int)]


def _draw_samples(spec, data, model):
    x, y = data.x_val, data.y_val
    pred, _ = model.predict(x, scale=data.scale)
    names = _label_names(spec, data)
    pick = pick_samples(y, pred)
    rows = max(1, math.ceil(len(pick) / SAMPLE_COLS))
    fig = _figure(10, 1.45 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, SAMPLE_COLS)).ravel()
    # One grey scale for all images, so brightness compares across the grid.
    lo, hi = float(np.min(x[pick])), float(np.max(x[pick]))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for ax, i in zip(axes, pick):
        _sample_cell(ax, x[i].reshape(data.image_shape), (names[int(pred[i])], names[int(y[i])]), (lo, hi))
    n_wrong = int(np.sum(pred != y))
    shown_wrong = int(np.sum(pred[pick] != y[pick]))
    fig.suptitle(f"{spec.name}: {len(pick)} of {len(y)} {data.val_name} images, "
                 f"{shown_wrong} of {n_wrong} mistakes shown (red)", fontsize=12)
    return fig


def _sample_cell(ax, image, names: tuple[str, str], limits: tuple[float, float]):
    """One image titled with its (predicted, true) class names, framed red when they differ."""
    (pred_name, true_name), (lo, hi) = names, limits
    wrong = pred_name != true_name
    ax.imshow(image, cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_title(f"pred {pred_name}\ntrue {true_name}", fontsize=8.5,
                 color=MISTAKE if wrong else "black", fontweight="bold" if wrong else "normal")
    if wrong:
        ax.set_frame_on(True)
        for spine in ax.spines.values():
            spine.set_edgecolor(MISTAKE)
            spine.set_linewidth(2.5)


# --------------------------------------------------------------------------- boundary
def linear_parameters(model_dir: Path) -> tuple[np.ndarray, float]:
    """(weight of shape (2,), bias) of a linear binary model, read from its export, on the
    features as given (a standardized model's weights are mapped back, ``original_units``):
    ``weights.read_linear_weights``, checked to have one logit."""
    from .weights import read_linear_weights

    lw = read_linear_weights(model_dir)
    if lw.weight.shape[0] != 1:
        raise ValueError(f"{model_dir}: expected one logit, got weight of shape {lw.weight.shape}")
    return lw.original[0], float(lw.original_bias[0])


def boundary_line(weight: Sequence[float], bias: float, xlim: Sequence[float],
                  ylim: Sequence[float] | None = None, level: float = 0.0) -> np.ndarray | None:
    """The segment of the line ``weight . x + bias = level`` inside the box ``xlim`` x ``ylim``.

    Returns a (2, 2) array of end points (rows are points, sorted by x), or None when the
    line misses the box or ``weight`` is zero. Without ``ylim`` the box is unbounded in y,
    so the end points lie at ``xlim`` (a vertical line then needs ``ylim``).
    """
    w = np.asarray(weight, dtype=np.float64).reshape(2)
    norm2 = float(w @ w)
    if norm2 == 0.0:
        return None
    p0 = (level - bias) * w / norm2       # the point of the line nearest the origin
    d = np.array([-w[1], w[0]])           # along the line
    t_lo, t_hi = -np.inf, np.inf
    for axis, lim in ((0, xlim), (1, ylim)):
        if lim is None:
            continue
        lo, hi = sorted(float(v) for v in lim)
        if d[axis] == 0.0:
            if not lo <= p0[axis] <= hi:
                return None
            continue
        a, b = sorted(((lo - p0[axis]) / d[axis], (hi - p0[axis]) / d[axis]))
        t_lo, t_hi = max(t_lo, a), min(t_hi, b)
    if not np.isfinite(t_lo) or not np.isfinite(t_hi):
        raise ValueError("a vertical boundary needs ylim to bound it")
    if t_lo > t_hi:
        return None
    pts = np.stack([p0 + t_lo * d, p0 + t_hi * d])
    return pts[np.argsort(pts[:, 0], kind="stable")]


# A scatter plot shows at most this many points of each split (a seeded, even sample).
MAX_POINTS = 20_000


def _shown(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS rows of (x, y), read from a memory map without loading the rest."""
    if len(x) <= MAX_POINTS:
        return np.asarray(x), np.asarray(y)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), MAX_POINTS, replace=False))
    return np.asarray(x[rows]), np.asarray(y[rows])


def _draw_boundary(spec, data, model_dir: Path, model, history):
    train, val = _shown(data.x_train, data.y_train), _shown(data.x_val, data.y_val)
    x_all = np.concatenate([train[0], val[0]]).astype(np.float64)
    xlim, ylim = _padded(x_all[:, 0]), _padded(x_all[:, 1])
    fig = _figure(8, 7)
    ax = fig.subplots()
    gx, gy, pz = _probability_grid(model, xlim, ylim)
    shade = ax.contourf(gx, gy, pz, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.3)
    fig.colorbar(shade, ax=ax, shrink=0.85, label="P(class 1) from the exported model")
    _scatter_points(ax, data, model, (train, val), _label_names(spec, data))
    threshold = float(spec.train.threshold)
    # predict() says class 1 when P >= threshold, i.e. when the logit >= logit(threshold).
    level = math.log(threshold / (1.0 - threshold))
    if not spec.model.hidden:
        w, b = linear_parameters(model_dir)
        seg = boundary_line(w, b, xlim, ylim, level)
        if seg is not None:
            rhs = "0" if level == 0 else f"{level:.3g}"
            ax.plot(seg[:, 0], seg[:, 1], "k-", lw=2,
                    label=f"boundary w·x + b = {rhs}\nw = ({w[0]:.3g}, {w[1]:.3g}), b = {b:.3g}")
    else:
        # No closed form for a hidden-layer model: trace the threshold on the grid instead.
        ax.contour(gx, gy, pz, levels=[threshold], colors="k", linewidths=2)
        ax.plot([], [], "k-", lw=2, label=f"boundary P(class 1) = {threshold:g}")
    ax.set(xlim=xlim, ylim=ylim, xlabel=_feature_name(data, 0), ylabel=_feature_name(data, 1))
    # Below the axes: inside, any corner may hide points.
    fig.legend(loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    # The shading, the line and the mistakes are the exported model's: with keep_best that is
    # an earlier epoch than the last (meta.json's exported), and the title names that one.
    drawn = [_exported_epoch(history, model)]
    acc = drawn[-1].get("val_accuracy")
    acc_text = f", {data.val_name} accuracy {acc:.4f}" if acc is not None else ""
    shown = "" if len(train[0]) + len(val[0]) == len(data.x_train) + len(data.x_val) else \
        f"\n{len(train[0]):,} of {len(data.x_train):,} training and {len(val[0]):,} of {len(data.x_val):,} points shown"
    ax.set_title(f"{spec.name}: decision boundary, epoch {drawn[-1].get('epoch', '?')}{acc_text}{shown}", fontsize=12)
    return fig


def _padded(v: np.ndarray, pad: float = 0.08) -> tuple[float, float]:
    lo, hi = float(np.min(v)), float(np.max(v))
    span = hi - lo or 1.0
    return lo - pad * span, hi + pad * span


def _probability_grid(model, xlim, ylim, n: int = 200):
    """P(class 1) on an n x n grid: 40,000 rows, one batched forward pass of the export."""
    gx, gy = np.meshgrid(np.linspace(*xlim, n), np.linspace(*ylim, n))
    _, p1 = model.predict(np.column_stack([gx.ravel(), gy.ravel()]).astype(np.float32))
    return gx, gy, p1.reshape(gx.shape)


def _scatter_points(ax, data, model, splits, names: list[str]):
    (x_tr, y_tr), (x_va, y_va) = splits  # (train, validation)
    for cls, colour in ((0, CLASS0), (1, CLASS1)):
        tr = y_tr == cls
        ax.scatter(x_tr[tr, 0], x_tr[tr, 1], s=10, color=colour, alpha=0.35,
                   linewidths=0, label=f"train, {_class_label(names, cls)}")
    for cls, colour, marker in ((0, CLASS0, "o"), (1, CLASS1, "^")):
        va = y_va == cls
        ax.scatter(x_va[va, 0], x_va[va, 1], s=36, color=colour, marker=marker,
                   edgecolors="black", linewidths=0.7, zorder=3, label=f"{data.val_name}, {_class_label(names, cls)}")
    pred, _ = model.predict(x_va, scale=data.scale)
    wrong = pred != y_va
    if wrong.any():
        ax.scatter(x_va[wrong, 0], x_va[wrong, 1], s=140, facecolors="none", edgecolors=MISTAKE,
                   linewidths=1.8, zorder=4, label=f"{data.val_name} mistakes ({int(wrong.sum())})")


def _feature_name(data, i: int) -> str:
    columns = data.extra.get("columns") or []
    return str(columns[i]) if i < len(columns) else f"feature x[{i}]"


# --------------------------------------------------------------------------- ROC and PR
def _draw_ranking(spec, data, model, extra: dict):
    from .ranking import ranking_curves, thin, validation_scores

    n = len(data.x_val)
    if n == 0:
        raise Skipped(f"no {data.val_name} rows to score")
    y, s = validation_scores(model, data.x_val, data.y_val, scale=data.scale)
    bad = int(np.count_nonzero(~np.isfinite(s)))
    if bad:
        raise Skipped(f"{bad:,} of {n:,} {data.val_name} scores are not finite (NaN or infinite: the model "
                      f"diverged); standardize the features or lower train.learning_rate")
    r = ranking_curves(y, s)
    if r is None:
        only = int(y[0])
        raise Skipped(f"the {data.val_name} rows hold one class only (class {only}, all {n:,} rows): "
                      f"ROC and precision-recall curves need both classes")
    extra["ranking"] = {"auc": r.auc, "average_precision": r.average_precision}
    threshold = float(spec.train.threshold)
    hit = s >= threshold  # predict()'s rule: class 1 when P(class 1) >= threshold
    tp, fp = int(np.sum(hit & (y == 1))), int(np.sum(hit & (y == 0)))
    op_fpr, op_tpr = fp / r.negatives, tp / r.positives
    op_precision = tp / (tp + fp) if tp + fp else None
    fig = _figure(11, 5)
    ax_roc, ax_pr = fig.subplots(1, 2)
    i = thin(len(r.fpr))
    ax_roc.plot(r.fpr[i], r.tpr[i], color="tab:blue", lw=2, label=f"model (AUC {r.auc:.4f})")
    ax_roc.plot([0, 1], [0, 1], ":", color="gray", label="chance (AUC 0.5)")
    ax_roc.plot([op_fpr], [op_tpr], "o", color="black", label=f"threshold {threshold:g}")
    ax_roc.set(title=f"ROC curve, AUC {r.auc:.4f}", xlabel="false positive rate",
               ylabel="true positive rate (recall)")
    j = thin(len(r.recall))
    ax_pr.plot(np.r_[0.0, r.recall[j]], np.r_[r.precision[j][0], r.precision[j]], color="tab:purple", lw=2,
               drawstyle="steps-pre", label=f"model (AP {r.average_precision:.4f})")
    share = r.positives / (r.positives + r.negatives)
    ax_pr.axhline(share, ls=":", color="gray", label=f"chance (positive share {share:.1%})")
    if op_precision is not None:
        ax_pr.plot([op_tpr], [op_precision], "o", color="black", label=f"threshold {threshold:g}")
    ax_pr.set(title=f"Precision-recall, average precision {r.average_precision:.4f}", xlabel="recall",
              ylabel="precision")
    for ax in (ax_roc, ax_pr):
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=9)
    positive = _positive_name(spec)
    fig.suptitle(f"{spec.name}: the exported model on {n:,} {data.val_name} rows, {r.positives:,} of them "
                 f"{positive}", fontsize=12)
    return fig


def _positive_name(spec) -> str:
    """Class 1, with its label where a label_map names it: ``class 1 = yes``."""
    names = [str(k) for k, v in (spec.data.label_map or {}).items() if str(v) == "1"]
    return f"class 1 = {names[0]}" if len(names) == 1 else "class 1"


# --------------------------------------------------------------------------- weights
def _draw_weights(spec, data, model_dir: Path, extra: dict):
    from .weights import TOP, feature_names, read_linear_weights, top_features

    if spec.model.hidden:
        raise Skipped(f"the model has hidden layers {list(spec.model.hidden)}: a feature's effect is not one "
                      f"weight (weights per feature are shown for linear models)")
    lw = read_linear_weights(model_dir)
    if not (np.all(np.isfinite(lw.weight)) and np.all(np.isfinite(lw.original))):
        raise Skipped("the weights are not finite (NaN or infinite: the model diverged); standardize the "
                      "features or lower train.learning_rate")
    d = lw.weight.shape[1]
    names = feature_names(data, d)
    constant = [int(i) for i in ((data.stats or {}).get("constant") or []) if 0 <= int(i) < d]
    top = top_features(lw.weight, TOP, exclude=constant)
    if not len(top):
        raise Skipped("every feature is constant in the training rows: no weight says anything")
    extra["weights"] = {"names": [names[i] for i in top], "weight": lw.weight[:, top],
                        "original": lw.original[:, top], "standardized": lw.standardized, "of": d,
                        "mean": (np.asarray(data.stats["mean"])[top] if data.stats else None),
                        "std": (np.asarray(data.stats["std"])[top] if data.stats else None)}
    unit = ("per standard deviation of the feature (standardized); the table gives the coefficient per "
            "original unit" if lw.standardized else "per unit of the feature")
    captions = extra.setdefault("captions", {})
    left_out = (f" Left out, constant in the training rows (their weight only shifts the bias): "
                f"{', '.join(names[i] for i in constant[:10])}{' …' if len(constant) > 10 else ''}."
                if constant else "")
    extra["weights"]["classes"] = _label_names(spec, data)[:lw.weight.shape[0]]
    if lw.weight.shape[0] == 1:
        captions["weights.png"] = (f"The exported model's weights for the {len(top)} features with the largest "
                                   f"weights by magnitude, in log-odds {unit}.{left_out}")
        return _weights_bars(spec, lw, [names[i] for i in top], top)
    if data.image_shape and int(np.prod(data.image_shape)) == d:
        captions["weights.png"] = ("Each class's weights laid out as the image: ink on a red pixel raises the "
                                   "class's score, on a blue one lowers it.")
        del extra["weights"]  # 784 pixels make no table
        return _weights_images(spec, data, lw)  # a pixel's name says little: its place says it all
    captions["weights.png"] = (f"The exported model's weights for the {len(top)} features with the largest "
                               f"weights over the classes, per class, in log-odds {unit}.{left_out}")
    return _weights_heatmap(spec, data, lw, [names[i] for i in top], top)


def _weights_images(spec, data, lw):
    """Each class's weights laid out as the image: where a pixel's ink speaks for (red) or
    against (blue) the class. One colour scale for all classes, so they compare."""
    k = lw.weight.shape[0]
    classes = _label_names(spec, data)[:k]
    cols = k if k <= 6 else (math.ceil(k / 2) if k <= 12 else 10)  # ten digits: two rows of five
    rows = math.ceil(k / cols)
    fig = _figure(1.05 * cols + 1.2, 1.2 * rows + 0.55)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    vmax = float(np.max(np.abs(lw.weight))) or 1.0
    shape = data.image_shape[-2:]
    im = None
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for c, ax in zip(range(k), axes):
        im = ax.imshow(lw.weight[c].reshape(shape), cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(_short(classes[c], 14), fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="weight (log-odds)")
    fig.suptitle(f"{spec.name}: weights per pixel and class\nred: ink here speaks for the class, "
                 f"blue: against it", fontsize=11)
    return fig


def _short(name: str, most: int = 28) -> str:
    return name if len(name) <= most else name[:most - 1] + "…"


def _weights_bars(spec, lw, names: list[str], top: np.ndarray):
    w = lw.weight[0, top]
    k = len(top)
    fig = _figure(10, 0.32 * k + 1.9)
    ax = fig.subplots()
    ys = np.arange(k)
    ax.barh(ys, w, color=[CLASS1 if v > 0 else CLASS0 for v in w], height=0.7)
    ax.set_yticks(ys, [_short(n) for n in names])
    ax.invert_yaxis()  # the largest on top
    ax.axvline(0, color="black", lw=0.8)
    ax.grid(axis="x", alpha=0.3)
    lo, hi = min(0.0, float(w.min())), max(0.0, float(w.max()))
    span = (hi - lo) or 1.0
    ax.set_xlim(lo - 0.05 * span, hi + 0.05 * span)
    if lw.standardized:
        # the original-units coefficient at the right edge of each row, outside the bars
        for y, v in zip(ys, lw.original[0, top]):
            ax.annotate(f"{v:.3g}", xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=8.5, color="#444")
        ax.annotate("per original unit", xy=(1.0, 1.0), xycoords="axes fraction", xytext=(6, 4),
                    textcoords="offset points", va="bottom", fontsize=8.5, color="#444")
        ax.set_xlabel("weight on the standardized feature (change in log-odds per standard deviation)")
    else:
        ax.set_xlabel("weight (change in log-odds per unit of the feature)")
    positive = _positive_name(spec)
    shown = f"top {k} of {lw.weight.shape[1]:,}" if k < lw.weight.shape[1] else f"all {k}"
    ax.set_title(f"{spec.name}: weights per feature ({shown}, by magnitude)\nred raises P({positive}), "
                 f"blue lowers it", fontsize=11)
    return fig


def _weights_heatmap(spec, data, lw, names: list[str], top: np.ndarray):
    w = lw.weight[:, top].T  # features down, classes across
    k_feat, k_cls = w.shape
    classes = [_short(c, 16) for c in _label_names(spec, data)[:k_cls]]
    fig = _figure(min(max(6.5, 0.5 * k_cls + 4.0), 14), 0.27 * k_feat + 1.9)
    ax = fig.subplots()
    vmax = float(np.max(np.abs(w))) or 1.0
    im = ax.imshow(w, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    unit = "per standard deviation" if lw.standardized else "per unit of the feature"
    fig.colorbar(im, ax=ax, shrink=0.85, label=f"weight (log-odds {unit})")
    if k_cls <= 12:
        for i in range(k_feat):
            for j in range(k_cls):
                ax.text(j, i, f"{w[i, j]:.2g}", ha="center", va="center", fontsize=8 if k_cls <= 6 else 7,
                        color="white" if abs(w[i, j]) > 0.6 * vmax else "black")
    slanted = k_cls > 5 and max(len(c) for c in classes) > 2
    ax.set_xticks(np.arange(k_cls), classes, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(np.arange(k_feat), [_short(n) for n in names])
    ax.set(xlabel="class", ylabel="feature")
    shown = f"top {k_feat} of {lw.weight.shape[1]:,}" if k_feat < lw.weight.shape[1] else f"all {k_feat}"
    ax.set_title(f"{spec.name}: weights per feature and class\n({shown} features by the norm of their "
                 f"weights over the classes)", fontsize=11)
    return fig


# --------------------------------------------------------------------------- report
WEIGHTED_NOTE = ("train_loss is weighted by train.class_weight; val_loss is not (the plain mean "
                 "cross-entropy): the two are not comparable")


def _write_report(run_dir: Path, spec, data, history, drawn: _Drawn) -> Path:
    """``report.html``: one file with everything, images embedded as base64.

    Embedding keeps the page whole when it is mailed, attached to a ticket or copied out
    of the run directory; the pictures are small (tens of KB), and the PNG files stay
    next to it for anyone who wants them separately. Warnings come first: they change how
    everything below should be read.
    """
    from ..rundir import RunDir
    from .summary import summary_sections

    run = RunDir(run_dir)
    summary, env = run.summary(), run.env()
    spec_text = spec.to_yaml()  # what job.yaml holds
    title = f"lrjob report: {spec.name}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='sub'>{_e(_describe(spec, data))}</p>",
        _warnings_html((summary or {}).get("warnings") or []),
        "<h2>Summary</h2>",
        _summary_table(summary_sections(summary, env, spec, data, run.path / "env.json")) if summary
        else "<p>no summary.json</p>",
        *_events_html(summary or {}),
        # what is missing first, so nobody scrolls looking for it
        "<h2>Pictures</h2>",
        *(f"<p class='note'><b>{_e(name)}</b> skipped: {_e(why)}</p>" for name, why in drawn.skipped.items()),
        *(f"<p class='fail'>{_e(name)} not drawn: {_e(err)}</p>" for name, err in drawn.failed.items()),
        *(_figure_html(p, drawn.extra) for p in drawn.pictures),
        "<h2>Metrics per epoch</h2>",
        *([f"<p class='sub'>{_e(WEIGHTED_NOTE)}</p>"] if spec.train.class_weight is not None else []),
        _epoch_table(history),
        "<h2>Job spec (resolved)</h2>", f"<pre>{_e(spec_text)}</pre>",
        "</body></html>",
    ]
    path = run_dir / "report.html"
    run.write_bytes(path.name, ("\n".join(p for p in parts if p) + "\n").encode("utf-8"))  # atomic, no link followed
    return path


def _warnings_html(warnings: list) -> str:
    items = [w for w in warnings if isinstance(w, dict)]
    if not items:
        return ""
    noun = "warning" if len(items) == 1 else "warnings"
    lis = "".join(f"<li><code>{_e(w.get('code', ''))}</code> {_e(w.get('message', ''))}</li>" for w in items)
    return f"<div class='warn' role='alert'><b>{len(items)} {noun}</b> (also in summary.json)<ul>{lis}</ul></div>"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1250px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; }
.fail { color: #b00; }
.note { color: #555; background: #f6f6f6; border-left: 4px solid #bbb; padding: 0.4em 0.8em; }
.warn { background: #fff4e5; border: 1px solid #f0b060; border-left: 6px solid #e08a00; padding: 0.6em 1em;
        margin: 1em 0; } .warn ul { margin: 0.4em 0 0; padding-left: 1.2em; } .warn li { margin: 0.2em 0; }
div.summary { columns: 2 480px; column-gap: 1.5em; }
table.summary { width: 100%; table-layout: fixed; break-inside: avoid; margin-bottom: 1em; }
table.summary th { width: 18em; } table.summary td { overflow-wrap: anywhere; }
table.summary th.section { background: #e8eef6; font-size: 1.05em; }
table.weights { margin-top: 0.5em; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _describe(spec, data) -> str:
    hidden = spec.model.hidden
    model = f"{spec.model.kind} model, " + (f"hidden layers {list(hidden)}" if hidden else "linear")
    desc = f" ({data.description})" if data.description else ""
    return (f"{model}; data {data.source}{desc}: {len(data.x_train)} training rows, "
            f"{len(data.x_val)} {data.val_name} rows, {data.num_features} features")


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or isinstance(v, (int, np.integer)):
        return str(v)
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _cell(v) -> str:
    num = isinstance(v, (int, float)) and not isinstance(v, bool)
    return f"<td class='num'>{_e(_fmt(v))}</td>" if num else f"<td>{_e(_fmt(v))}</td>"


# summary.json's lists of events: a table each in the report, not a row of the summary table.
_EVENTS = {"resizes": ("Worker count changes", ("epoch", "from", "to", "why")),
           "failures": ("Worker failures", ("epoch", "rank", "node", "error"))}


def _events_html(summary: dict) -> list[str]:
    """A table for each non-empty list of events (docs/design.md#failures-and-restarts)."""
    out = []
    for key, (title, cols) in _EVENTS.items():
        events = summary.get(key)
        if not isinstance(events, list) or not events:
            continue
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        shown = (lambda e, c: "in-process" if key == "resizes" and c in ("from", "to") and e.get(c) == 0
                 else e.get(c))  # 0 workers: the run trained in one process
        body = "".join("<tr>" + "".join(_cell(shown(e, c)) for c in cols) + "</tr>"
                       for e in events if isinstance(e, dict))
        out += [f"<h2>{_e(title)}</h2>", f"<table><tr>{head}</tr>{body}</table>"]
    return out


def _summary_table(sections) -> str:
    """The sections of ``summary.summary_sections``, one small table each, side by side where
    the page is wide enough."""
    tables = []
    for title, rows in sections:
        body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
        tables.append(f"<table class='summary'><tr><th class='section' colspan='2'>{_e(title)}</th></tr>"
                      f"{body}</table>")
    return f"<div class='summary'>{''.join(tables)}</div>"


_EPOCH_ORDER = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall",
                "val_f1", "val_auc", "val_macro_f1", "tp", "fp", "fn", "tn")


def _epoch_table(history: list[dict]) -> str:
    if not history:
        return "<p>no epochs</p>"
    keys = [k for k in _EPOCH_ORDER if any(k in h for h in history)]
    # Lists (confusion, per-class recall) have their picture; the table keeps to numbers.
    keys += [k for k in history[-1] if k not in keys and not isinstance(history[-1][k], (list, dict))]
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(_cell(h.get(k)) for k in keys) + "</tr>" for h in history)
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>"


def _figure_html(path: Path, extra: dict) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = extra.get("captions", {}).get(path.name) or CAPTIONS.get(path.name, "")
    table = _weights_table(extra["weights"]) if path.name == "weights.png" and "weights" in extra else ""
    attrs = ""
    if path.name == "roc_pr.png" and "ranking" in extra:  # the exact numbers, for anyone who parses the page
        r = extra["ranking"]
        attrs = f" data-auc='{r['auc']!r}' data-average-precision='{r['average_precision']!r}'"
    return (f"<figure{attrs}><img src='data:image/png;base64,{data}' alt='{_e(path.name)}'>"
            f"<figcaption><b>{_e(path.name)}</b>: {_e(caption)}</figcaption>{table}</figure>")


def _softmax_weights_table(w: dict) -> str:
    head = ["rank", "feature", *(f"{c} (per original unit)" for c in w["classes"])]
    rows = []
    for i, name in enumerate(w["names"]):
        cells = [f"<td class='num w'>{i + 1}</td>", f"<td>{_e(name)}</td>",
                 *(f"<td class='num w'>{v:.4g}</td>" for v in w["original"][:, i])]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    heads = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<div class='scroll'><table class='weights'><tr>{heads}</tr>{''.join(rows)}</table></div>"


def _weights_table(w: dict) -> str:
    """The top features with their numbers, in the chart's order: a binary model's weight,
    and with standardization its coefficient per original unit and the feature's mean and
    std; a softmax model's coefficients per original unit for each class (its weights per
    standard deviation are in the heatmap), only with standardization."""
    if w["weight"].shape[0] != 1:
        return _softmax_weights_table(w) if w["standardized"] else ""
    std = w["standardized"]
    head = ["rank", "feature", "weight (per std)" if std else "weight (per unit)"]
    if std:
        head += ["coefficient (per original unit)", "mean", "std"]
    rows = []
    for i, name in enumerate(w["names"]):
        cells = [str(i + 1), _e(name), f"{w['weight'][0, i]:.4g}"]
        if std:
            cells.append(f"{w['original'][0, i]:.4g}")
            cells += ["–" if w[k] is None else f"{w[k][i]:.4g}" for k in ("mean", "std")]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" if j == 1 else f"<td class='num w'>{c}</td>"
                                     for j, c in enumerate(cells)) + "</tr>")
    heads = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table class='weights'><tr>{heads}</tr>{''.join(rows)}</table>"


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """Redraw the pictures and the report of an existing run directory."""
    parser = argparse.ArgumentParser(prog="python -m launcher.report.plots", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory with job.yaml, metrics.jsonl, model/")
    args = parser.parse_args(argv)
    import sys

    from lr_core.errors import LrjobError

    from ..rundir import RunDir, RunLock

    run_dir = args.run_dir
    run = RunDir(run_dir)
    for need in (run.spec_file, run.path / "metrics.jsonl", run.model_dir):
        if not need.exists():
            parser.error(f"{run_dir}: no {need.name}; pass a run directory written by `lrjob run`")
    # The run's one writer holds its lock (docs/design.md#run-directory): redraw only when no
    # run is writing it, and keep a run from starting on it meanwhile.
    try:
        lock = RunLock.acquire(run_dir, other="redraw it once the run has ended")
    except LrjobError as e:
        print(f"lrjob: error: {e}", file=sys.stderr)
        return 2
    try:
        spec = run.spec()
        for path in write_plots(run_dir, spec, spec.prepared_data(), run.history()):
            print(path)
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
