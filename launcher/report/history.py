"""``lrjob runs`` (a table of past runs) and ``lrjob compare RUN RUN`` (side by side)."""
from __future__ import annotations

from pathlib import Path

from lr_core.errors import clip

from ..rundir import RunDir

__all__ = ["list_runs", "render_runs", "render_compare", "DAMAGED"]


def list_runs(base: str | Path = "runs") -> list[dict]:
    """Every run directory under ``base`` with a summary.json, oldest first. A summary.json
    that cannot be read, or whose fields have the wrong types, still gives a row: its
    status says ``damaged summary.json`` and the fields it lacks show as ``-``."""
    base = Path(base)
    rows = []
    if not base.is_dir():
        return rows
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            mtime = (d / "summary.json").stat().st_mtime
        except OSError:
            continue  # no summary: not a finished or running run
        rows.append({"run": d.name, "path": str(d), "mtime": mtime, **_fields(RunDir(d).summary())})
    rows.sort(key=lambda r: r["mtime"])
    return rows


# The status of a row whose summary.json cannot be read or has fields of the wrong type.
DAMAGED = "damaged summary.json"


def _fields(s) -> dict:
    """The table's fields of one summary; any that is missing or of the wrong type is
    None and marks the row damaged."""
    if not isinstance(s, dict):
        return {"status": DAMAGED, "workers": None, "epochs": "-", "accuracy": None, "wall_seconds": None}
    final = s.get("final") if isinstance(s.get("final"), dict) else {}
    ok = True

    def typed(v, kinds, optional=True):
        nonlocal ok
        if (v is None and optional) or (isinstance(v, kinds) and not isinstance(v, bool)):
            return v
        ok = False
        return None

    status = typed(s.get("status", "?"), str, optional=False)
    workers = typed(s.get("workers"), int)
    done, total = typed(s.get("epochs_done", 0), int), typed(s.get("epochs"), int)
    acc = typed(final.get("val_accuracy"), (int, float))
    wall = typed(s.get("wall_seconds"), (int, float))
    if not isinstance(s.get("final", {}), (dict, type(None))):
        ok = False
    return {"status": clip(status, 40) if ok else DAMAGED, "workers": workers,
            "epochs": f"{'?' if done is None else done}/{'?' if total is None else total}",
            "accuracy": acc, "wall_seconds": wall}


def render_runs(rows: list[dict]) -> str:
    """The ``lrjob runs`` table of ``list_runs`` rows, or a hint when there are none."""
    if not rows:
        return "no runs yet (lrjob run JOB writes runs/<name>-<stamp>/)"
    import time

    table = [("RUN", "DATE", "WORKERS", "EPOCHS", "ACCURACY", "WALL", "STATUS")]
    for r in rows:
        table.append((r["run"], time.strftime("%Y-%m-%d %H:%M", time.localtime(r["mtime"])),
                      "-" if r["workers"] is None else str(r["workers"]),
                      r["epochs"], "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                      "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.1f}s", r["status"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj


def render_compare(a: str | Path, b: str | Path) -> str:
    """Spec fields that differ, then final metrics, side by side."""
    from lr_core.errors import LrjobInputError

    runs = []
    for r in (Path(a), Path(b)):
        run = RunDir(r)
        s = run.summary()
        if s is None:
            raise LrjobInputError(f"{r}: not a run directory (no readable summary.json)")
        spec = run.spec_dict()
        flat: dict = {}
        _flatten("", spec, flat)
        runs.append((r, s, flat))
    (ra, sa, fa), (rb, sb, fb) = runs
    w = max(28, len(ra.name), len(rb.name))
    lines = [f"{'':<30}{ra.name:>{w}}  {rb.name:>{w}}"]
    diff = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    lines.append("spec (fields that differ)" if diff else "spec: identical")
    for k in diff:  # values cut to the column: a spec may hold a long label_map or list
        lines.append(f"  {clip(k, 28):<28}{clip(fa.get(k), w):>{w}}  {clip(fb.get(k), w):>{w}}")
    lines.append("results")
    keys = ["status", "epochs_done", "workers", "wall_seconds", "samples_per_s"]
    fin = ["val_accuracy", "val_loss", "train_loss", "val_f1", "val_auc", "val_macro_f1"]
    for k in keys:
        lines.append(f"  {k:<28}{_fmt(sa.get(k)):>{w}}  {_fmt(sb.get(k)):>{w}}")
    for k in fin:
        va, vb = (sa.get("final") or {}).get(k), (sb.get("final") or {}).get(k)
        if va is None and vb is None:
            continue
        lines.append(f"  {k:<28}{_fmt(va):>{w}}  {_fmt(vb):>{w}}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else clip(v, 28)
