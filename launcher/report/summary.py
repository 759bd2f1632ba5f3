"""The summary table at the top of ``report.html`` (docs/design.md#plots-and-report): what
ran, when, where, on which data, with which versions, and how it ended, each value once and
with its unit.

It reads the run directory's own records, ``summary.json`` and ``env.json`` (written by the
driver), with the spec and the dataset; a record that is missing (an older run) leaves its
rows out rather than guessing.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

from lr_core.errors import counted

__all__ = ["summary_sections", "VERSION_KEYS"]

# The versions shown, in this order: the project's, then what it runs on.
VERSION_KEYS = ("lrjob", "mxnet", "horovod", "ray", "numpy", "python")

Row = tuple[str, str]


def summary_sections(summary: dict | None, env: dict | None, spec, data,
                     env_path: Path | None = None) -> list[tuple[str, list[Row]]]:
    """``[(section title, [(label, value with its unit), ...]), ...]`` for the report.

    Every value appears once: the per-epoch timings of the last epoch (``final``'s
    ``wall_seconds`` and friends) are left to the per-epoch table, and the run's totals
    are shown here under names that say what they measure.
    """
    summary, env = summary or {}, env or {}
    return [(title, rows) for title, rows in (
        ("Run", _run_rows(summary, env, spec, env_path)),
        ("Result", _result_rows(summary, spec, data.val_name)),
        ("Placement", _placement_rows(env, spec)),
        ("Data", _data_rows(spec, data)),
        ("Versions", _version_rows(env)),
    ) if rows]


# --------------------------------------------------------------------------- values with units
def seconds(v) -> str:
    """``12.3 s``; a minute or more also as ``m:ss``."""
    v = float(v)
    if v >= 60:
        m, s = divmod(int(round(v)), 60)
        return f"{v:,.1f} s ({m}:{s:02d} min)"
    return f"{v:.2f} s" if v < 10 else f"{v:.1f} s"


def percent(v) -> str:
    return f"{100 * float(v):.2f} %"


def number(v, digits: int = 4) -> str:
    return f"{float(v):.{digits}f}"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- sections
def _run_rows(summary: dict, env: dict, spec, env_path: Path | None) -> list[Row]:
    rows: list[Row] = [("job name", str(spec.name))]
    started = _started(env, env_path)
    if started:
        rows.append(("run date (start)", started))
    if "status" in summary:
        status = str(summary["status"])
        if summary.get("epochs_done") is not None:
            status += f", {summary['epochs_done']} of {summary.get('epochs', spec.train.epochs)} epochs"
        rows.append(("status", status))
    if _finite(summary.get("wall_seconds")):
        earlier = env.get("earlier") if isinstance(env.get("earlier"), list) else []
        # a run continued from its checkpoint: its commands' times added, not the time between them
        label = f"wall time, its {len(earlier) + 1} commands" if earlier else "wall time, whole run"
        rows.append((label, seconds(summary["wall_seconds"])))
    if _finite(summary.get("train_seconds")):
        rows.append(("training time, all epochs", seconds(summary["train_seconds"])))
    if _finite(summary.get("startup_seconds")) and spec.workers:  # in-process: nothing starts
        last = ", the last command's" if isinstance(env.get("earlier"), list) and env["earlier"] else ""
        rows.append((f"start-up time of the workers{last}", seconds(summary["startup_seconds"])))
    if _finite(summary.get("samples_per_s")) and summary.get("epochs_done"):
        rows.append(("throughput (median of the epochs)", f"{summary['samples_per_s']:,.0f} samples/s"))
    if env.get("host"):
        rows.append(("driver host", str(env["host"])))
    if env.get("resumed_from"):
        rows.append(("resumed from", str(env["resumed_from"])))
    if summary.get("run_dir"):
        rows.append(("run directory", str(summary["run_dir"])))
    return rows


def run_start(env) -> _dt.datetime | None:
    """When the run began: ``env.json``'s ``started``, the first command's for a run that was
    continued (its ``earlier``; an entry that does not read as a time is passed over); None when
    none does."""
    if not isinstance(env, dict):
        return None
    earlier = env.get("earlier") if isinstance(env.get("earlier"), list) else []
    for text in [e.get("started") for e in earlier if isinstance(e, dict)] + [env.get("started")]:
        if isinstance(text, str):
            try:
                when = _dt.datetime.fromisoformat(text)
            except ValueError:
                continue
            return when if when.tzinfo is not None else when.replace(tzinfo=_dt.timezone.utc)
    return None


def _started(env: dict, env_path: Path | None) -> str | None:
    """The run's start in UTC (``run_start``), else the time ``env.json`` was written (runs from
    before ``started`` was recorded)."""
    when = run_start(env)
    if when is None and env_path is not None and env_path.is_file():
        when = _dt.datetime.fromtimestamp(env_path.stat().st_mtime, _dt.timezone.utc)
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# Final-epoch metrics: (key, label, format). Scores in [0, 1] that are shares of rows are
# percentages; losses and the AUC are not shares and keep their own scale.
_RESULT = (
    ("train_loss", "training loss (mean cross-entropy)", number),
    ("val_loss", "{val} loss (mean cross-entropy)", number),
    ("val_accuracy", "{val} accuracy", percent),
    ("val_precision", "{val} precision", percent),
    ("val_recall", "{val} recall", percent),
    ("val_f1", "{val} F1", percent),
    ("val_macro_f1", "{val} macro F1", percent),
    ("val_auc", "{val} ROC AUC", number),
)


def _result_rows(summary: dict, spec, val: str = "validation") -> list[Row]:
    final = summary.get("final") or {}
    if not final:
        return []
    rows: list[Row] = [("final epoch", str(final.get("epoch", "?")))]
    for key, label, fmt in _RESULT:
        if key not in final:
            continue
        v = final[key]
        shown = fmt(v) if _finite(v) else (f"undefined (one class in the {val} rows)" if key == "val_auc"
                                           else "–")
        rows.append((label.format(val=val), shown))
    if all(k in final for k in ("tp", "fp", "fn", "tn")):
        rows.append(("confusion counts (threshold "
                     f"{float(spec.train.threshold):g})",
                     f"TP {final['tp']:,}, FP {final['fp']:,}, FN {final['fn']:,}, TN {final['tn']:,}"))
    if _finite(summary.get("best_val_accuracy")):
        rows.append((f"best {val} accuracy (any epoch)", percent(summary["best_val_accuracy"])))
    rows += _model_rows(summary, final)
    if _finite(summary.get("train_accuracy")):
        rows.append(("training accuracy (exported model)", percent(summary["train_accuracy"])))
    if summary.get("train_loss_weighted"):
        rows.append(("note", f"the training loss is weighted by train.class_weight, the {val} loss is not"))
    return rows


def _model_rows(summary: dict, final: dict) -> list[Row]:
    """Which epoch ``model/`` holds, and why training ended early: with ``checkpoint.keep_best``
    the rows above (the final epoch's) are not the exported model's
    (docs/design.md#early-stopping-and-the-best-model)."""
    rows: list[Row] = []
    stopped = summary.get("stopped_early") or {}
    if isinstance(stopped, dict) and stopped.get("epoch") is not None:
        reason = str(stopped.get("reason") or "").removeprefix("early stopping: ")
        rows.append(("stopped early", f"after epoch {stopped['epoch']}" + (f": {reason}" if reason else "")))
    exported = summary.get("exported") or {}
    if isinstance(exported, dict) and exported.get("epoch") is not None:
        epoch, by = exported["epoch"], str(exported.get("selected_by") or "")
        metric = by.removeprefix("best ") if by.startswith("best ") else None
        value = exported.get(metric) if metric else None
        text = f"epoch {epoch}" + (f", the best by {metric}" + (f" ({value:.4f})" if _finite(value) else "")
                                   if metric else ", the last")
        if epoch != final.get("epoch"):
            text += f"; not the final epoch above ({final.get('epoch', '?')}): its metrics are in the per-epoch table"
        rows.append(("exported model (model/)", text))
    return rows


def _placement_rows(env: dict, spec) -> list[Row]:
    workers = int(spec.workers)
    placement = [p for p in env.get("placement") or [] if isinstance(p, dict)]
    rows: list[Row] = []
    # the last command's: a run continued on another count lists each change ("Worker count changes")
    later = " (the last command's)" if isinstance(env.get("earlier"), list) and env["earlier"] else ""
    if workers == 0:
        rows.append(("workers", f"0: in-process (one process, no Horovod){later}"))
    else:
        rows.append(("workers", f"{counted(workers, 'Horovod worker')}{later}"))
    if placement:
        nodes = {p.get("node_id") or p.get("host") for p in placement}
        hosts = sorted({str(p.get("host")) for p in placement if p.get("host")})
        rows.append(("nodes", f"{len(nodes)}" + (f" ({', '.join(hosts[:8])}"
                                                  f"{', …' if len(hosts) > 8 else ''})" if hosts else "")))
    res = spec.resources
    if workers:
        rows.append(("CPUs per worker", f"{float(res.cpus_per_worker):g}"))
        rows.append(("GPUs per worker", f"{float(res.gpus_per_worker):g}"))
    devices = [str(p["device"]) for p in placement if p.get("device")]
    if devices:
        counts: dict[str, int] = {}
        for d in devices:
            counts[d] = counts.get(d, 0) + 1
        rows.append(("devices (per rank)", ", ".join(f"{d} × {n}" if n > 1 else d for d, n in counts.items())))
    if env.get("where") and workers:
        rows.append(("backend", str(env["where"])))
    return rows


def _data_rows(spec, data) -> list[Row]:
    source = str(data.source)
    path = getattr(spec.data, "path", None)
    if path:
        source += f" ({path})"
    elif data.description:
        source += f" ({data.description})"
    rows: list[Row] = [("source", source)]
    val_path = getattr(spec.data, "val_path", None)
    rows.append(("rows: training", f"{len(data.x_train):,}"))
    rows.append((f"rows: {data.val_name}", f"{len(data.x_val):,}" + (f" ({val_path})" if val_path else "")))
    rows.append(("features", f"{data.num_features:,}" + (f" (images {'×'.join(map(str, data.image_shape))})"
                                                          if data.image_shape else "")))
    k = 2 if spec.model.kind == "binary" else int(spec.model.num_classes)
    rows.append(("classes", f"{k} ({spec.model.kind})" + _label_text(spec)))
    rows.append(("standardization", "on: features scaled by the training rows' mean and std"
                 if data.stats else "off"))
    return rows


def _label_text(spec, most: int = 10) -> str:
    """``; labels 0 = no, 1 = yes``: each class's label in class order (the first key of
    ``data.label_map`` for it, ``lr_core.export.class_labels``), the first ``most`` then ``…``."""
    from lr_core.export import class_labels

    label_map = getattr(spec.data, "label_map", None)
    if not label_map:
        return ""
    k = 2 if spec.model.kind == "binary" else int(spec.model.num_classes)
    labels = class_labels({"kind": spec.model.kind, "num_classes": k, "label_map": dict(label_map)})
    return "; labels " + ", ".join(f"{i} = {name}" for i, name in enumerate(labels[:most])) + \
        (f", … ({k - most} more)" if k > most else "")


def _version_rows(env: dict) -> list[Row]:
    versions = env.get("versions") or {}
    if not versions:
        return []
    return [(name, str(versions.get(name) or "not installed")) for name in VERSION_KEYS]
