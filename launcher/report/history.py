"""``lrjob runs`` (a table of past runs) and ``lrjob compare RUN RUN`` (side by side).

    lrjob runs --where train.learning_rate=0.1 --sort -val_accuracy

``list_runs`` finds the runs, ``describe_runs`` adds what tells them apart (data, key
hyperparameters, results), ``filter_runs`` and ``sort_runs`` apply ``--where``/``--sort``.
"""
from __future__ import annotations

from pathlib import Path

from lr_core.errors import clip

from ..rundir import RunDir

__all__ = ["list_runs", "describe_runs", "filter_runs", "sort_runs", "render_runs", "render_compare", "DAMAGED"]


def list_runs(base: str | Path = "runs") -> list[dict]:
    """Every run directory under ``base`` with a summary.json, oldest first. A run's date
    (``mtime``) is its start (``env.json``, the first command's for a continued run), else the
    time its summary.json was written. A summary.json that cannot be read, or whose fields have
    the wrong types, still gives a row: its status says ``damaged summary.json`` and the fields
    it lacks show as ``-``."""
    from .summary import run_start

    base = Path(base)
    rows = []
    if not base.is_dir():
        return rows
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        try:
            mtime = (d / "summary.json").stat().st_mtime
        except OSError:
            continue  # no summary: not a finished or running run
        start = run_start(RunDir(d).env())
        mtime = start.timestamp() if start is not None else mtime
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

    def number(v):  # a number the table can print: 400 digits do not fit a float
        nonlocal ok
        v = typed(v, (int, float))
        if v is not None and not _fits_float(v):
            ok = False
            return None
        return v

    def count(v):  # a count of a real run: far below 2**63 (400 digits would fill the row)
        nonlocal ok
        v = typed(v, int)
        if v is not None and abs(v) >= 1 << 63:
            ok = False
            return None
        return v

    status = typed(s.get("status", "?"), str, optional=False)
    workers = count(s.get("workers"))
    done, total = count(s.get("epochs_done", 0)), count(s.get("epochs"))
    acc = number(final.get("val_accuracy"))
    wall = number(s.get("wall_seconds"))
    if not isinstance(s.get("final", {}), (dict, type(None))):
        ok = False
    return {"status": clip(status, 40) if ok else DAMAGED, "workers": workers,
            "epochs": f"{'?' if done is None else done}/{'?' if total is None else total}",
            "accuracy": acc, "wall_seconds": wall}


def _fits_float(v) -> bool:
    """Whether ``v`` (an int or float of a summary) converts to a float."""
    try:
        float(v)
        return True
    except OverflowError:
        return False


def render_runs(rows: list[dict], folder: str = "runs") -> str:
    """The ``lrjob runs`` table of ``list_runs`` rows, or a hint when there are none (``folder``:
    where the runs were looked for)."""
    if not rows:
        if str(folder) == "runs":
            return "no runs yet (lrjob run JOB writes runs/<name>-<stamp>/)"
        return f"no runs in {folder} yet (lrjob run JOB --runs-dir {folder} writes {folder}/<name>-<stamp>/)"
    import time

    table = [("RUN", "DATE", "DATA", "LR", "BATCH", "OPTIMIZER", "WORKERS", "EPOCHS", "VAL_ACC", "BEST_VAL_ACC",
              "WALL", "STATUS")]
    for r in rows:
        spec = r.get("spec") or {}  # describe_runs' columns; "-" for rows without them
        lr, batch = spec.get("train.learning_rate"), spec.get("train.batch_size")
        table.append((r["run"], time.strftime("%Y-%m-%d %H:%M", time.localtime(r["mtime"])), r.get("data") or "-",
                      "-" if lr is None else f"{lr:g}", "-" if batch is None else str(batch),
                      str(spec.get("train.optimizer") or "-"), "-" if r["workers"] is None else str(r["workers"]),
                      r["epochs"], "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                      _fmt(r.get("best_val_accuracy")),
                      "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.1f}s", r["status"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def describe_runs(rows: list[dict]) -> list[dict]:
    """``list_runs`` rows with what tells runs apart: ``spec`` (job.yaml flattened, e.g.
    ``train.learning_rate``; {} when unreadable), ``data`` (source and file name),
    ``results`` (the summary's numbers and its final epoch's metrics) and
    ``best_val_accuracy`` (over the epochs)."""
    from lr_core.errors import LrjobError

    for r in rows:
        run = RunDir(r["path"])
        flat: dict = {}
        try:
            _flatten("", run.spec_dict(), flat)
        except LrjobError:  # a damaged job.yaml costs its columns, not the table
            pass
        s = run.summary() if r["status"] != DAMAGED else None
        s = s if isinstance(s, dict) else {}  # a damaged summary: list_runs marked its row
        final = s.get("final") if isinstance(s.get("final"), dict) else {}

        def usable(v) -> bool:  # a plain value; a number too long for a float is left out
            return not isinstance(v, (dict, list)) and (not isinstance(v, int) or _fits_float(v))
        results = {k: v for k, v in s.items() if usable(v)}
        results.update({k: v for k, v in final.items() if usable(v)})
        best = s.get("best_val_accuracy", results.get("val_accuracy"))
        best = best if usable(best) else None
        r.update(spec=flat, data=_data_label(flat), results=results, best_val_accuracy=best)
    return rows


def _data_label(flat: dict) -> str | None:
    """``csv:train.csv``: the data source and the name of its file (the source alone without one)."""
    source, path = flat.get("data.source"), flat.get("data.path")
    if not source:
        return None
    return f"{source}:{str(path).rstrip('/').rsplit('/', 1)[-1]}" if path else str(source)


# The table's column names, as keys of --where and --sort (any case): the field each column shows.
# (EPOCHS shows done/planned: `epochs` stays the summary's planned count, `epochs_done` the other.)
COLUMN_KEYS = {"run": "run", "data": "data", "lr": "train.learning_rate", "batch": "train.batch_size",
               "optimizer": "train.optimizer", "workers": "workers", "val_acc": "val_accuracy",
               "best_val_acc": "best_val_accuracy", "wall": "wall_seconds", "status": "status", "date": "mtime"}
# what the table shows from the row itself, not from job.yaml or summary.json
_ROW_KEYS = ("run", "data", "best_val_accuracy", "mtime")


def _key(name: str) -> str:
    """A --where or --sort key: a column's name of the table stands for the field it shows."""
    return COLUMN_KEYS.get(name.lower(), name)


def _lookup(row: dict, key: str):
    """A run's value for ``key``: a spec field (``train.learning_rate``), else a result
    (``val_accuracy``, ``wall_seconds``, ``status``), else what the table shows of the row (its
    name, data, best validation accuracy, and ``mtime``: the date)."""
    if key in row["spec"]:
        return row["spec"][key]
    if key in row["results"]:
        return row["results"][key]
    return row.get(key) if key in _ROW_KEYS else None


def _known(rows: list[dict]) -> list[str]:
    """The keys some run has: its fields and results, and the column names whose field it has."""
    fields = {k for r in rows for k in (*r["spec"], *r["results"])}
    return sorted(fields | {c for c, k in COLUMN_KEYS.items() if any(_lookup(r, k) is not None for r in rows)})


def _number(v):
    """``v`` as a number for ``--where`` and ``--sort``: an int stays an int (compared exactly),
    a float stays a float, a text is read with ``int()`` then ``float()`` (``5e-1``, which YAML
    reads as a string); a bool, NaN or anything else is None (not a number)."""
    import math

    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        text = v.strip()
        try:
            return int(text)
        except ValueError:
            try:
                v = float(text)
            except ValueError:
                return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    return None


def _missing(v) -> bool:
    """No value: absent, null or NaN."""
    return v is None or (isinstance(v, float) and v != v)


def _same(have, text: str) -> bool:
    """Whether a run's value equals ``--where``'s text: numbers as numbers (ints exactly,
    floats to 1e-9), a bool only to ``true``/``false``, null to ``null``, anything else as text."""
    import math

    import yaml

    if _missing(have):
        return text.lower() in ("null", "~", "none") and have is None
    if isinstance(have, bool):
        return text.lower() == str(have).lower()
    if isinstance(have, (int, float)):
        want = _number(text)
        if want is None:
            return False
        if isinstance(have, int) and isinstance(want, int):
            return have == want
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(have, (list, dict)):
        try:
            return have == yaml.safe_load(text)
        except yaml.YAMLError:
            return False
    return str(have) == text


def _hint(typed: str, rows: list[dict]) -> str:
    """The tail of the error about a key no run has: the near match, else what the keys are (the
    list of every spec field and result would fill a screen)."""
    from lr_core.errors import near

    found = near(typed, sorted(_known(rows)))
    if found:
        return f"; did you mean {found!r}?"
    return (f"; a key is a column of the table ({', '.join(COLUMN_KEYS)}), a spec field "
            f"(train.learning_rate) or a result (val_loss, samples_per_s)")


def filter_runs(rows: list[dict], where: list[str]) -> list[dict]:
    """The ``describe_runs`` rows whose every ``FIELD=VALUE`` of ``where`` holds; a field that
    no run has is a one-line input error that names the near match."""
    from lr_core.errors import LrjobInputError

    for item in where:
        typed, eq, text = item.partition("=")
        typed = typed.strip()
        if not eq or not typed:
            raise LrjobInputError(f"--where {item!r}: expected FIELD=VALUE, e.g. --where train.learning_rate=0.1")
        key = _key(typed)
        if rows and all(_lookup(r, key) is None and key not in r["spec"] and key not in r["results"] for r in rows):
            raise LrjobInputError(f"--where {typed}: no run has this field{_hint(typed, rows)}")
        if key == "mtime":  # the date as the table shows it, or its start: 2026-11-27, 2026-11-27 09
            import time

            rows = [r for r in rows if time.strftime("%Y-%m-%d %H:%M", time.localtime(r["mtime"]))
                    .startswith(text.strip())]
            continue
        rows = [r for r in rows if (key in r["spec"] or key in r["results"] or _lookup(r, key) is not None)
                and _same(_lookup(r, key), text.strip())]
    return rows


def sort_runs(rows: list[dict], key: str) -> list[dict]:
    """The ``describe_runs`` rows sorted by ``key`` (a result or spec field), ascending, or
    descending with a leading ``-``; runs without the value come last."""
    from lr_core.errors import LrjobInputError

    descending = key.startswith("-")
    typed = key.lstrip("-+").strip()
    name = _key(typed)
    if rows and all(_missing(_lookup(r, name)) for r in rows):
        raise LrjobInputError(f"--sort {key}: no run has {typed!r}{_hint(typed, rows)}")
    # numbers first (ints against floats exactly), then texts (bools among them), then no value
    numbers = [r for r in rows if _number(_lookup(r, name)) is not None]
    texts = [r for r in rows if _number(_lookup(r, name)) is None and not _missing(_lookup(r, name))]
    missing = [r for r in rows if _missing(_lookup(r, name))]
    numbers.sort(key=lambda r: _number(_lookup(r, name)), reverse=descending)
    texts.sort(key=lambda r: str(_lookup(r, name)), reverse=descending)
    return numbers + texts + missing


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
    diff = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    kw = min(48, max([28, *map(len, diff)]))  # the names' column: a nested field's name whole, up to 48
    lines = [f"{'':<{kw + 2}}{ra.name:>{w}}  {rb.name:>{w}}"]
    lines.append("spec (fields that differ)" if diff else "spec: identical")
    for k in diff:  # values cut to the column: a spec may hold a long label_map or list
        lines.append(f"  {clip(k, kw):<{kw}}{clip(_yaml(fa.get(k)), w):>{w}}  {clip(_yaml(fb.get(k)), w):>{w}}")
    lines.append("results")
    keys = ["status", "epochs_done", "workers"]
    fin = ["val_accuracy", "val_loss", "train_loss", "val_f1", "val_auc", "val_macro_f1"]
    for k in keys:
        lines.append(f"  {k:<{kw}}{_fmt(sa.get(k)):>{w}}  {_fmt(sb.get(k)):>{w}}")
    for k, unit in (("wall_seconds", "{:.1f} s"), ("samples_per_s", "{:,.0f}")):
        va, vb = (unit.format(v) if isinstance(v, (int, float)) else _fmt(v) for v in (sa.get(k), sb.get(k)))
        lines.append(f"  {k:<{kw}}{va:>{w}}  {vb:>{w}}")
    weighted = [r.name for r, s in ((ra, sa), (rb, sb)) if s.get("train_loss_weighted")]
    for k in fin:
        va, vb = (sa.get("final") or {}).get(k), (sb.get("final") or {}).get(k)
        if va is None and vb is None:
            continue
        name = f"{k} *" if k == "train_loss" and weighted else k
        lines.append(f"  {name:<{kw}}{_fmt(va):>{w}}  {_fmt(vb):>{w}}")
    if weighted and any(line.startswith("  train_loss *") for line in lines):
        # docs/design.md#class-weights: every place that shows both losses says so
        lines.append(f"  * class-weighted in {' and '.join(weighted)}: not comparable with an unweighted loss "
                     f"or with val_loss")
    return "\n".join(lines)


def _yaml(v):
    """A spec value as its job.yaml writes it (null, true), not as Python prints it (None, True)."""
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else v


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else clip(v, 28)
