"""What the driver shows: a header, one aligned line per epoch, a final summary box.

Results go to stdout, progress and hints to stderr. ``--json`` prints one JSON object
per event instead; ``--quiet`` prints only the run directory at the end (and warnings on stderr). A reader that
goes away (``lrjob run JOB | head -1``) silences the output, never the run.
"""
from __future__ import annotations

import json
import os
import re
import sys

__all__ = ["Reporter", "silence_closed_pipe"]


def silence_closed_pipe(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null after its reader closed the pipe, so
    later writes, and Python's flush at exit, go nowhere instead of raising."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test's StringIO): the Reporter stops writing to it anyway


def _fmt(v, width=8, digits=4):
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        text = f"{v:.{digits}f}"
        if len(text) > width:  # a diverging loss: in its column still, in scientific notation
            text = f"{v:.{digits}g}"
        return text.rjust(width)
    return str(v).rjust(width)


class Reporter:
    """Shows a run in one mode: ``human`` (a header, the epoch table, a summary box), ``json`` (one
    object per event), ``quiet`` (only the run directory at the end) or ``silent`` (nothing)."""

    def __init__(self, mode: str = "human", stream=None, err=None):
        self.mode = mode          # human | json | quiet | silent
        self.out = stream or sys.stdout
        self.err = err or sys.stderr
        self.kind = "binary"
        self._bar = None
        self._widths = None       # the epoch table's column widths, set by the header

    def _emit(self, stream, text: str) -> None:
        """Write and flush ``text``; a closed pipe silences that stream for the rest of the run
        (docs/design.md#exit-codes: output cut short is not a failure)."""
        if stream is None:
            return
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            silence_closed_pipe(stream)
            if stream is self.out:
                self.out = None
            if stream is self.err:
                self.err = None

    def _json(self, event: str, **payload) -> None:
        self._emit(self.out, json.dumps({"event": event, **payload}, default=float) + "\n")

    def header(self, spec, data, backend, run_dir) -> None:
        """The job, data, training settings and worker placement on stderr, then the epoch table's
        column names on stdout (``json``: a ``start`` event)."""
        m, t = spec.model, spec.train
        self.kind = m.kind
        info = {"job": spec.name, "run_dir": str(run_dir),
                "model": {"kind": m.kind, "num_classes": m.num_classes, "hidden": list(m.hidden)},
                "train_rows": int(len(data.x_train)), "val_rows": int(len(data.x_val)),
                "features": data.num_features, "workers": backend.workers, "where": backend.where,
                "placement": backend.placement, "startup_seconds": round(backend.startup_seconds, 3)}
        if self.mode == "json":
            self._json("start", **info)
            return
        if self.mode in ("quiet", "silent"):
            return
        hidden = "-".join(str(h) for h in m.hidden) or "none"
        lines = [
            f"lrjob  {spec.name}",
            f"  model    {m.kind} ({'1 logit' if m.kind == 'binary' else str(m.num_classes) + ' classes'}), "
            f"hidden layers: {hidden}",
            f"  data     {data.source}: {len(data.x_train):,} train / {len(data.x_val):,} {data.val_name} rows, "
            f"{data.num_features:,} features" + (f", prepared in {data.home}" if data.home else ""),
            f"  train    {t.epochs} epoch{'' if t.epochs == 1 else 's'}, global batch {t.batch_size}, "
            f"{t.optimizer} lr {t.learning_rate:g}"
            f"{_schedule_note(t.lr_schedule)}, seed {t.seed}"
            + (f", early stopping on {t.early_stopping['metric']} (patience {t.early_stopping['patience']})"
               if t.early_stopping else "")
            # the two losses are not comparable then (docs/design.md#class-weights)
            + (", class weights: train_loss is weighted, val_loss is not" if t.class_weight is not None else ""),
            f"  workers  {backend.where}" + (f" (ready {backend.startup_seconds:.1f} s after Ray)"
                                             if backend.workers and backend.startup_seconds else ""),
        ]
        for p in backend.placement[:8]:
            lines.append(f"           rank {p['rank']}: host {p['host']}, pid {p['pid']}, device {p['device']}")
        if len(backend.placement) > 8:
            more = len(backend.placement) - 8
            lines.append(f"           and {more} more rank{'s' if more != 1 else ''} (all in the run's env.json)")
        lines.append(f"  run dir  {run_dir}")
        self._emit(self.err, "\n".join(lines) + "\n")
        # the validation columns are named as in metrics.jsonl, so no one reads them as training figures
        cols = ["epoch", "train_loss", "val_loss", "val_accuracy"]
        cols += ["val_f1", "val_auc"] if self.kind == "binary" else ["val_macro_f1"]
        cols += ["samples/s", "sec"]
        self._widths = [max(10, len(c)) for c in cols]
        self._emit(self.out, "  ".join(c.rjust(w) for c, w in zip(cols, self._widths)) + "\n")

    def epoch(self, m: dict, epochs: int) -> None:
        """One row of the epoch table for the metrics ``m`` (``json``: an ``epoch`` event)."""
        if self.mode == "json":
            self._json("epoch", **m)
            return
        if self.mode in ("quiet", "silent"):
            return
        vals = [f"{m['epoch']}/{epochs}", m["train_loss"], m["val_loss"], m["val_accuracy"]]
        vals += [m.get("val_f1"), m.get("val_auc")] if self.kind == "binary" else [m.get("val_macro_f1")]
        vals += [f"{m['samples_per_s']:,.0f}", f"{m['epoch_seconds']:.2f}"]
        widths = self._widths or [10] * len(vals)
        self._emit(self.out, "  ".join(_fmt(v, w) for v, w in zip(vals, widths)) + "\n")

    def epoch_bar(self, epoch: int, epochs: int, rows: int):
        """A tqdm bar for one epoch on stderr, or None (not a terminal, --quiet, --json)."""
        if self.mode != "human" or self.err is None or not getattr(self.err, "isatty", lambda: False)():
            return None
        from tqdm import tqdm

        bar = tqdm(total=rows, desc=f"epoch {epoch + 1}/{epochs}", unit="samples", unit_scale=True,
                   leave=False, file=self.err, dynamic_ncols=True)
        return _Bar(bar, rows)

    def message(self, text: str) -> None:
        """One line for people on stderr (``json``: a ``message`` event, without the column padding
        of the human header); nothing when quiet or silent."""
        if self.mode == "json":
            self._json("message", text=re.sub(r"^\s*(\S+)\s{2,}", r"\1 ", text))
        elif self.mode not in ("quiet", "silent"):
            self._emit(self.err, text + "\n")

    def warning(self, text: str) -> None:
        """A warning line on stderr, also with ``--quiet`` (``json``: a ``message`` event; nothing
        when silent)."""
        if self.mode == "json":
            self._json("message", text=text)
        elif self.mode != "silent":
            self._emit(self.err, text + "\n")

    def summary(self, summary: dict, run_dir, history: list[dict] | None = None) -> None:
        """The final box and the run directory on stdout (``quiet``: only the run directory; ``json``: a
        ``summary`` event). The validation metrics are those of the epoch ``model/`` holds
        (``summary["exported"]``, found in ``history``), else the final epoch's."""
        if self.mode == "json":
            self._json("summary", **summary)
            return
        if self.mode == "silent":
            return
        if self.mode == "quiet":
            self._emit(self.out, f"{run_dir}\n")
            return
        final = summary.get("final", {})
        at = (summary.get("exported") or {}).get("epoch")
        final = next((m for m in history or [] if m.get("epoch") == at), final)
        rows = [("status", summary["status"]), ("epochs", summary["epochs_done"]),
                ("val accuracy", final.get("val_accuracy")), ("val loss", final.get("val_loss")),
                ("wall time", f"{summary['wall_seconds']:.1f} s"),
                ("samples/s", f"{summary.get('samples_per_s', 0):,.0f} (median of the epochs)")]
        if summary.get("stopped_early"):
            rows.append(("stopped", f"early, after epoch {summary['stopped_early']['epoch']}"))
        if summary.get("exported") and summary["exported"]["selected_by"] != "last epoch":
            rows.append(("model", f"epoch {summary['exported']['epoch']} ({summary['exported']['selected_by']})"))
        for r in summary.get("resizes") or []:  # each change of world size (docs/design.md#failures-and-restarts)
            count = {0: "in-process"}
            rows.append(("workers", f"{count.get(r['from'], r['from'])} -> {count.get(r['to'], r['to'])} "
                                    f"from epoch {r['epoch']}"))
        if summary.get("warnings"):
            rows.append(("warnings", f"{len(summary['warnings'])} (above, and in summary.json)"))
        body = [f"{k:<13}{v:.4f}" if isinstance(v, float) else f"{k:<13}{v}" for k, v in rows]
        body.append(f"run dir      {run_dir}")
        width = max(len(b) for b in body) + 2
        box = ["+" + "-" * width + "+"] + [f"| {b.ljust(width - 1)}|" for b in body] + ["+" + "-" * width + "+"]
        self._emit(self.out, "\n".join(box) + f"\n{run_dir}\n")


def _schedule_note(sched: dict | None) -> str:
    """`` (cosine to 0.001)``: the header's words for ``train.lr_schedule``; empty without one."""
    if not sched:
        return ""
    n = sched.get("warmup_epochs") or 0
    warm = f", warmup {n} epoch{'s' * (n != 1)}" if n else ""
    if sched["kind"] == "step":
        return f" (x{sched['factor']:g} every {sched['step_epochs']} epochs{warm})"
    return f" (cosine to {sched['min_lr']:g} over {sched['epochs']} epochs{warm})"


class _Bar:
    """Adapts progress(step, steps) calls to a tqdm bar counted in samples."""

    def __init__(self, bar, rows: int):
        self.bar, self.rows = bar, rows

    def update(self, step: int, steps: int) -> None:
        """Advance the bar to ``step`` of ``steps``, counted in samples; it never moves back."""
        done = min(self.rows, int(self.rows * step / max(steps, 1)))
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """Close the tqdm bar."""
        self.bar.close()


def prepare_feedback(reporter: "Reporter | None" = None, err=None):
    """``(progress, log)`` for ``JobSpec.prepared_data``: a tqdm bar per stage of a
    preparation on a terminal (rows read, rows split), and one line per notice."""
    err = err or sys.stderr
    quiet = reporter is not None and reporter.mode != "human"
    bars: dict = {}

    def progress(what: str, done: int, total: int | None) -> None:
        if quiet or not getattr(err, "isatty", lambda: False)():
            return
        from tqdm import tqdm

        bar = bars.get(what)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[what] = tqdm(total=total, desc=what, unit="rows", unit_scale=True, leave=False,
                                    file=err, dynamic_ncols=True)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    def log(text: str) -> None:
        if reporter is not None:
            reporter.message(text)
        else:
            print(text, file=err)

    return progress, log
