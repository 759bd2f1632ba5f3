"""Warnings a statistician would give about a run (docs/design.md#warnings): about the
data before training (one class, a rare class, constant features) and about the fit after
it (a training loss that does not fall, validation far below training). The driver prints
them and stores them in ``summary.json`` as ``warnings``: ``{"code", "message"}`` each.

Every check is a pure function of numbers the driver already has, so each is tested on
crafted data, and the shipped jobs stay silent.
"""
from __future__ import annotations

import numpy as np

__all__ = ["data_warnings", "schedule_warnings", "history_warnings", "fit_warnings", "class_counts", "baseline_loss",
           "RARE_CLASS", "PATIENCE", "RISE", "OVERFIT_GAP", "OVERFIT_SIGMAS", "TRAIN_SAMPLE"]

RARE_CLASS = 0.01    # a class under this share of the training rows is rare
PATIENCE = 3         # epochs of a training loss that does not fall before a warning
RISE = 0.05          # ... and a rise, above the lowest loss before it, of more than this share
OVERFIT_GAP = 0.10   # training accuracy this far above validation accuracy is overfitting,
OVERFIT_SIGMAS = 3   # and more than this many standard errors of the validation accuracy
TRAIN_SAMPLE = 50_000  # training rows scored for the training accuracy (evenly spaced)


def _warning(code: str, message: str) -> dict:
    return {"code": code, "message": message}


def class_counts(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows per class of the labels ``y`` (read in blocks: ``y`` may be a memory map)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for a in range(0, len(y), 1 << 20):
        counts += np.bincount(np.asarray(y[a:a + (1 << 20)], dtype=np.int64), minlength=num_classes)[:num_classes]
    return counts


def baseline_loss(counts: np.ndarray) -> float:
    """The cross-entropy of always predicting the training class frequencies: a model
    whose loss stays above it has learnt nothing from the features."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def data_warnings(counts: np.ndarray, columns: list[str], stats: dict | None) -> list[dict]:
    """One class only, a class under ``RARE_CLASS`` of the training rows, features without
    variance (with standardization: ``stats["constant"]``)."""
    out = []
    n = int(counts.sum())
    present = np.flatnonzero(counts)
    if len(present) == 1:
        out.append(_warning("one-class", f"the training rows hold one class only (class {int(present[0])}, all {n} "
                                         f"rows): the model can only learn to predict it; check data.label_column, "
                                         f"data.label_map and the file"))
    else:
        rare = [(c, int(k)) for c, k in enumerate(counts) if k < RARE_CLASS * n]
        if rare:
            shown = ", ".join(f"class {c}: {k} of {n} rows ({100 * k / n:.2g}%)" for c, k in rare[:5])
            out.append(_warning("rare-class", f"{len(rare)} class(es) under {RARE_CLASS:.0%} of the training rows "
                                              f"({shown}); accuracy hides them: look at recall per class, and "
                                              f"consider train.class_weight: balanced"))
    constant = list((stats or {}).get("constant") or [])
    if constant:
        names = [str(columns[i]) if i < len(columns) else f"x[{i}]" for i in constant]
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        out.append(_warning("constant-feature", f"{len(names)} feature(s) have zero variance in the training rows "
                                                f"({shown}): left unscaled (std 1); they carry no information, "
                                                f"drop them with data.features"))
    return out


def schedule_warnings(epochs: int, schedule: dict | None) -> list[dict]:
    """A warmup of at least ``epochs``: the whole run trains on the rising ramp, below
    ``train.learning_rate``. A warning, not an error: ``train.epochs`` may grow on resume,
    so a run trained in installments legitimately starts with the warmup not yet over."""
    warmup = int((schedule or {}).get("warmup_epochs") or 0)
    if warmup < epochs:
        return []
    return [_warning("warmup-past-end", f"train.lr_schedule.warmup_epochs ({warmup}) is not less than train.epochs "
                                        f"({epochs}): every step of the run is in the warmup, below "
                                        f"train.learning_rate; lower warmup_epochs, unless the run will be resumed "
                                        f"with more epochs")]


def placement_warnings(workers: int, gpus_per_worker: float) -> list[dict]:
    """GPUs asked of an in-process run (``resources.workers: 0``), which trains on the CPU."""
    if workers or not gpus_per_worker:
        return []
    return [_warning("gpus-unused", f"resources.gpus_per_worker is {gpus_per_worker:g} but the run is in-process "
                                    f"(--workers 0), which trains on the CPU; give --workers N to train on GPUs, "
                                    f"or --gpus-per-worker 0")]


def history_warnings(history: list[dict], baseline: float | None, learning_rate: float) -> list[dict]:
    """A training loss that rose ``PATIENCE`` epochs in a row, or that after ``PATIENCE``
    epochs is still no better than ``baseline`` (guessing the class frequencies; None when
    the loss is class-weighted and the baseline does not apply)."""
    losses = [float(h["train_loss"]) for h in history if h.get("train_loss") is not None]
    out = []
    hint = (f"standardize the features (data.standardize: true) or lower train.learning_rate "
            f"(now {learning_rate:g})")
    # Rising PATIENCE epochs in a row, and by more than RISE over the lowest loss before the
    # rise: the noise of a converged plateau (a fraction of a percent) is no divergence.
    if (len(losses) > PATIENCE and all(b > a for a, b in zip(losses[-PATIENCE - 1:-1], losses[-PATIENCE:]))
            and losses[-1] > (1 + RISE) * min(losses[:-PATIENCE])):
        out.append(_warning("loss-rising", f"the training loss rose {PATIENCE} epochs in a row "
                                           f"({losses[-PATIENCE - 1]:.4g} -> {losses[-1]:.4g}); {hint}"))
    if baseline is not None and len(losses) > PATIENCE and losses[-1] >= baseline:
        out.append(_warning("loss-flat", f"after {len(losses)} epochs the training loss ({losses[-1]:.4g}) is no "
                                         f"better than predicting the class frequencies ({baseline:.4g}): the model "
                                         f"has not learnt from the features; {hint}"))
    return out


def fit_warnings(train_accuracy: float | None, val_accuracy: float | None, val_name: str = "validation",
                 val_rows: int | None = None) -> list[dict]:
    """Validation accuracy more than ``OVERFIT_GAP`` below the training accuracy, and (given
    ``val_rows``) more than ``OVERFIT_SIGMAS`` standard errors ``sqrt(p (1 - p) / n)`` of the
    validation accuracy: on a few validation rows a gap of chance is no overfitting."""
    if train_accuracy is None or val_accuracy is None:
        return []
    gap = OVERFIT_GAP
    if val_rows:
        p = min(max(float(val_accuracy), 0.0), 1.0)
        gap = max(gap, OVERFIT_SIGMAS * float(np.sqrt(p * (1 - p) / val_rows)))
    if train_accuracy - val_accuracy <= gap:
        return []
    return [_warning("overfit", f"{val_name} accuracy {val_accuracy:.4f} is far below training accuracy "
                                f"{train_accuracy:.4f}: the model overfits, or the {val_name} rows differ from the "
                                f"training rows; use fewer features or hidden units, train.weight_decay, or check "
                                f"the split")]
