"""The scaling map: samples/s of an MNIST training epoch for workers {in-process, 1, 2, 3} x
global batch {64, 512, 4096} x model {linear, MLP 256-256}, each cell an `lrjob run` of
jobs/mnist_softmax.yaml, with two floors measured in the same run on the same data and batches:
the same `lrjob worker` ranks under `horovodrun --gloo`, and a bare horovod.ray script
(benchmarks/bare_hvd_ray.py). Writes JSON, a markdown report and a heatmap PNG beside it.

    make bench-scaling        # = python -m benchmarks.scaling --out bench-results/scaling.json
    python -m benchmarks.scaling --quick --out /tmp/scaling.json     # a few cells, to try it
    python -m benchmarks.scaling --from-json bench-results/scaling.json --out /tmp/s.json  # redraw

The figure: each run's own `train_seconds` per epoch (metrics.jsonl, rank 0's: from the first
step queued to the host holding every step's loss; no start-up, evaluation or checkpoint), the
first epoch a warm-up, the median of the others; samples/s = training rows / that median. The
data is the first ``Plan.rows`` training images of MNIST (and ``Plan.val_rows`` test images for
validation), written as IDX files that every cell reads. All 60,000 training images: on an idle machine the map takes about 10 minutes; with
12,288 rows (an earlier default, to keep it near half an hour on busy cores) an epoch at batch
4096 was 3 steps of about 10 ms, too short to time. 3 workers on 2 cores share the cores (`lrjob run --oversubscribe`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
JOB = "jobs/mnist_softmax.yaml"
MODELS = {"linear": (), "mlp": (256, 256)}
MODEL_NAMES = {"linear": "linear (softmax regression)", "mlp": "MLP 784-256-256-10"}
METHODS = ("lrjob", "horovodrun", "bare")  # lrjob run (in-process or Ray), lrjob worker under horovodrun, bare
METHOD_NAMES = {"lrjob": "lrjob run (Ray)", "horovodrun": "lrjob worker under horovodrun",
                "bare": "bare horovod.ray script"}
CELL_TIMEOUT_S = 900

__all__ = ["Plan", "plan", "cells", "samples_per_s", "ratios", "summarize", "draw", "write_outputs", "main"]


@dataclass(frozen=True)
class Plan:
    """What one run measures: the grid, the data subset and the epochs of each cell."""
    workers: tuple[int, ...] = (0, 1, 2, 3)
    batches: tuple[int, ...] = (64, 512, 4096)
    models: tuple[str, ...] = ("linear", "mlp")
    rows: int = 60000
    val_rows: int = 1000
    epochs: int = 5  # the first is a warm-up

    def __post_init__(self):
        if self.epochs < 2:
            raise ValueError(f"epochs must be >= 2 (one warm-up, one measured), got {self.epochs}")
        if 0 not in self.workers:
            raise ValueError("workers must include 0: every ratio is to the in-process run")
        if not set(self.models) <= set(MODELS):
            raise ValueError(f"models must be among {sorted(MODELS)}, got {list(self.models)}")


def plan(quick: bool = False) -> Plan:
    """The full map, or ``--quick``'s few cells (in-process and 2 workers, two batches, a
    third of the rows, one measured epoch)."""
    if quick:
        return Plan(workers=(0, 2), batches=(64, 4096), rows=4096, val_rows=500, epochs=2)
    return Plan()


def cells(p: Plan) -> list[dict]:
    """Every measurement of ``p``, in the order they run: grouped by worker count, so a change
    of the machine's load falls on the three methods of a worker count alike. In-process cells
    have one method (lrjob run --workers 0); the others three."""
    out = []
    for w in p.workers:
        for model in p.models:
            for b in p.batches:
                for method in (("lrjob",) if w == 0 else METHODS):
                    out.append({"method": method, "workers": w, "model": model, "batch": b})
    return out


def _rate(sps: float) -> str:
    """A cell's samples/s, short enough for its square: ``333k/s``, ``1.24M/s``."""
    return f"{sps / 1e6:.2f}M/s" if sps >= 1e6 else f"{sps / 1e3:.0f}k/s" if sps >= 1e4 else f"{sps / 1e3:.1f}k/s"


def samples_per_s(rows: int, seconds: list[float]) -> tuple[float | None, float | None]:
    """(median seconds of the epochs after the first, rows / that median); (None, None) with
    fewer than two epochs."""
    rest = [s for s in seconds[1:] if s is not None]
    if not rest:
        return None, None
    med = statistics.median(rest)
    return med, (rows / med if med > 0 else None)


def log(msg: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- measuring
def _write_subset(dst: Path, rows: int, val_rows: int) -> None:
    """The first ``rows`` training and ``val_rows`` test images of the MNIST cache, as IDX files."""
    from launcher.datacache import mnist_dir
    from lr_core.data import read_idx, write_idx, verify_idx_dir

    src = mnist_dir()
    if verify_idx_dir(src):
        raise SystemExit(f"scaling: the MNIST cache {src} is missing or damaged; run `make install` "
                         f"(or `python -m launcher.datacache ensure`)")
    dst.mkdir(parents=True)
    for split, n in (("train", rows), ("t10k", val_rows)):
        for part in ("images-idx3", "labels-idx1"):
            write_idx(dst / f"{split}-{part}-ubyte", read_idx(src / f"{split}-{part}-ubyte")[:n])


def _env() -> dict:
    from launcher.backends.cluster import worker_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["LRJOB_PICTURES"] = "0"
    # this checkout's code in every process (Ray's workers and horovodrun's ranks inherit it)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    # the thread and Horovod settings lrjob gives its Ray workers, for every method
    env.update(worker_env(1))
    return env


def _overrides(p: Plan, c: dict, data: Path, cache: Path) -> list[str]:
    sets = [f"train.epochs={p.epochs}", f"train.batch_size={c['batch']}",
            f"model.hidden=[{','.join(map(str, MODELS[c['model']]))}]", f"data.path={data}", f"data.cache={cache}",
            "checkpoint.keep=1", f"resources.workers={c['workers']}"]
    return [a for s in sets for a in ("--set", s)]


def _run_lrjob(p: Plan, c: dict, data: Path, cache: Path, out: Path, extra_env: dict | None = None) -> dict:
    """One cell as `lrjob run` (its own embedded Ray; in-process for 0 workers) or `lrjob worker`
    ranks under horovodrun: the epochs' train_seconds from the run's metrics.jsonl. ``extra_env``
    is added to every process's environment."""
    w = c["workers"]
    sets = _overrides(p, c, data, cache)
    if c["method"] == "lrjob":
        over = ["--oversubscribe"] if w > (os.cpu_count() or 1) else []
        cmd = [str(BIN / "lrjob"), "run", JOB, *sets, *over, "--quiet", "--output", str(out)]
    else:
        cmd = [str(BIN / "horovodrun"), "--gloo", "-np", str(w), "-H", f"localhost:{w}",
               str(BIN / "lrjob"), "worker", JOB, *sets, "--output", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env={**_env(), **(extra_env or {})}, capture_output=True, text=True,
                       timeout=CELL_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {r.returncode}: {last[:300]}", "wall_s": wall, "command": " ".join(cmd)}
    from launcher.rundir import RunDir

    history = RunDir.open(out).history()
    summary = RunDir.open(out).summary() or {}
    return {"epoch_seconds": [h["train_seconds"] for h in history], "steps": history[-1]["steps"],
            "startup_s": summary.get("startup_seconds"), "wall_s": wall, "command": " ".join(cmd)}


def _run_bare(p: Plan, w: int, todo: list[dict], data: Path) -> dict:
    """The bare horovod.ray cells of one worker count, in one Ray session: {(model, batch): result}."""
    configs = [f"{','.join(map(str, MODELS[c['model']])) or 0}:{c['batch']}" for c in todo]
    cmd = [sys.executable, "-m", "benchmarks.bare_hvd_ray", "--data", str(data), "--workers", str(w),
           "--epochs", str(p.epochs), *[a for cf in configs for a in ("--config", cf)]]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=CELL_TIMEOUT_S * len(todo))
    wall = time.perf_counter() - t0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        err = {"error": f"exit {r.returncode}: {last[:300]}", "command": " ".join(cmd)}
        return {(c["model"], c["batch"]): dict(err) for c in todo}
    seconds = json.loads(lines[-1])["seconds"]
    return {(c["model"], c["batch"]): {"epoch_seconds": seconds[cf], "steps": math.ceil(p.rows / c["batch"]),
                                       "session_wall_s": wall, "command": " ".join(cmd)}
            for c, cf in zip(todo, configs)}


def _commit() -> str | None:
    """The commit measured (with ``+changes`` when the tree differs from it), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+changes" if dirty else "")) or None


def measure(p: Plan) -> dict:
    """Run every cell of ``p``; the result that ``write_outputs`` writes."""
    import mxnet

    r = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "mxnet": mxnet.__version__,
                     "load_average_start": os.getloadavg()},
         "plan": {"workers": list(p.workers), "batches": list(p.batches), "models": list(p.models),
                  "rows": p.rows, "val_rows": p.val_rows, "epochs": p.epochs, "warmup_epochs": 1},
         "figure": "train_seconds of each epoch from the run's metrics.jsonl (rank 0), median of the epochs "
                   "after the first; samples/s = rows / median",
         "methods": METHOD_NAMES,
         "commit": _commit(),
         "worker_env": __import__("launcher.backends.cluster", fromlist=["worker_env"]).worker_env(1),
         "cells": []}
    t_all = time.perf_counter()
    todo = cells(p)
    with tempfile.TemporaryDirectory(prefix="lrjob-scaling-") as tmp:
        data, cache = Path(tmp) / "mnist", Path(tmp) / "prepared"
        _write_subset(data, p.rows, p.val_rows)
        for i, c in enumerate(todo):
            if c["method"] == "bare":
                continue
            out = Path(tmp) / f"run-{i:03d}"
            try:
                got = _run_lrjob(p, c, data, cache, out)
            except subprocess.TimeoutExpired:
                got = {"error": f"timed out after {CELL_TIMEOUT_S} s"}
            except Exception as e:  # noqa: BLE001 - one bad cell must not lose the map's other cells
                got = {"error": f"{type(e).__name__}: {e}"}
            r["cells"].append({**c, **got})
            _log_cell(p, r["cells"][-1])
            # the bare cells of this worker count run after its last lrjob/horovodrun cell
            if c["workers"] > 0 and all(d["workers"] != c["workers"] or d["method"] == "bare" for d in todo[i + 1:]):
                bare = [d for d in todo if d["workers"] == c["workers"] and d["method"] == "bare"]
                try:
                    got_bare = _run_bare(p, c["workers"], bare, data)
                except subprocess.TimeoutExpired:
                    got_bare = {(d["model"], d["batch"]): {"error": "timed out"} for d in bare}
                except Exception as e:  # noqa: BLE001
                    got_bare = {(d["model"], d["batch"]): {"error": f"{type(e).__name__}: {e}"} for d in bare}
                for d in bare:
                    r["cells"].append({**d, **got_bare.get((d["model"], d["batch"]), {"error": "no result"})})
                    _log_cell(p, r["cells"][-1])
    for c in r["cells"]:
        c["median_s"], c["samples_per_s"] = samples_per_s(p.rows, c.get("epoch_seconds") or [])
    r["machine"]["load_average_end"] = os.getloadavg()
    r["seconds"] = time.perf_counter() - t_all
    return r


def _log_cell(p: Plan, c: dict) -> None:
    med, sps = samples_per_s(p.rows, c.get("epoch_seconds") or [])
    what = f"{c['method']:10s} workers {c['workers']} {c['model']:6s} batch {c['batch']:4d}"
    log(f"{what}: {c['error']}" if "error" in c else
        f"{what}: epochs {' '.join(f'{s:.3f}' for s in c['epoch_seconds'])} s, {sps:,.0f} samples/s")


# --------------------------------------------------------------------------- reporting
def _table(r: dict) -> dict:
    """{(method, workers, model, batch): cell}"""
    return {(c["method"], c["workers"], c["model"], c["batch"]): c for c in r["cells"]}


def _ratio(a, b):
    return a / b if a and b else None


def ratios(r: dict) -> list[dict]:
    """Per distributed cell: lrjob-under-Ray's epoch time over each floor's (> 1: slower than
    the floor), and samples/s over in-process."""
    t, p = _table(r), r["plan"]
    out = []
    for model in p["models"]:
        for b in p["batches"]:
            inproc = t.get(("lrjob", 0, model, b), {}).get("samples_per_s")
            for w in p["workers"]:
                if w == 0:
                    continue
                ray_, hr, bare = (t.get((m, w, model, b), {}) for m in METHODS)
                out.append({"model": model, "batch": b, "workers": w,
                            "ray_over_horovodrun": _ratio(ray_.get("median_s"), hr.get("median_s")),
                            "ray_over_bare": _ratio(ray_.get("median_s"), bare.get("median_s")),
                            "horovodrun_over_bare": _ratio(hr.get("median_s"), bare.get("median_s")),
                            "ray_vs_in_process": _ratio(ray_.get("samples_per_s"), inproc)})
    return out


def _fmt(x, spec=",.0f", none="failed"):
    return none if x is None else format(x, spec)


def summarize(r: dict, png_name: str = "scaling.png") -> str:
    """The markdown report of a result."""
    p, t = r["plan"], _table(r)
    la0, la1 = r["machine"]["load_average_start"], r["machine"]["load_average_end"]
    lines = ["# Scaling map: MNIST samples/s by workers, global batch and model", "",
             f"{p['rows']:,} training rows of MNIST ({p['val_rows']:,} validation rows), {p['epochs']} epochs per "
             f"cell: the first a warm-up, then the median train_seconds of the others (each run's own "
             f"metrics.jsonl, rank 0; no start-up or evaluation). {r['machine']['cpus']} CPUs; 3 workers "
             f"share 2 cores (`--oversubscribe`). Load average (1, 5, 15 min) at the start "
             f"{', '.join(f'{x:.1f}' for x in la0)}, at the end {', '.join(f'{x:.1f}' for x in la1)}; "
             f"the map took {r.get('seconds', 0) / 60:.1f} min"
             + (f", code at commit {r['commit']}" if r.get("commit") else "") + ". Compare within this run.", "",
             f"![scaling map]({png_name})", ""]
    for model in p["models"]:
        lines += [f"## {MODEL_NAMES[model]}: samples/s of `lrjob run` (x in-process)", "",
                  "| workers | " + " | ".join(f"batch {b}" for b in p["batches"]) + " |",
                  "|---|" + "---|" * len(p["batches"])]
        for w in p["workers"]:
            row = []
            for b in p["batches"]:
                c = t.get(("lrjob", w, model, b), {})
                base = t.get(("lrjob", 0, model, b), {}).get("samples_per_s")
                sps = c.get("samples_per_s")
                row.append(_fmt(sps) + ("" if w == 0 or sps is None or not base else f" ({sps / base:.2f}x)"))
            lines.append(f"| {'in-process' if w == 0 else w} | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## lrjob under Ray against the floors", "",
              "Epoch-time ratios (> 1: lrjob under Ray is slower). horovodrun: the same `lrjob worker` ranks "
              "under `horovodrun --gloo -np N -H localhost:N`; bare: benchmarks/bare_hvd_ray.py under "
              "horovod.ray's RayExecutor (plain Gluon, DistributedTrainer, hybridized). Goal for 2 workers: "
              "Ray / horovodrun <= 1.05, Ray / bare <= 1.1.", "",
              "| model | batch | workers | samples/s: Ray / horovodrun / bare | Ray / horovodrun | Ray / bare | "
              "horovodrun / bare |", "|---|---|---|---|---|---|---|"]
    for q in ratios(r):
        sps = " / ".join(_fmt(t.get((m, q["workers"], q["model"], q["batch"]), {}).get("samples_per_s"))
                         for m in METHODS)
        lines.append(f"| {q['model']} | {q['batch']} | {q['workers']} | {sps} | "
                     f"{_fmt(q['ray_over_horovodrun'], '.2f', '-')} | {_fmt(q['ray_over_bare'], '.2f', '-')} | "
                     f"{_fmt(q['horovodrun_over_bare'], '.2f', '-')} |")
    failed = [c for c in r["cells"] if "error" in c]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- {c['method']} workers {c['workers']} {c['model']} batch {c['batch']}: {c['error']}"
                  for c in failed]
    return "\n".join(lines) + "\n"


def draw(r: dict):
    """The figure: one heatmap per model (rows workers, columns batch; colour log2 of the ratio
    to in-process; text samples/s and the ratio), and the table of ratios to the floors."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    p, t = r["plan"], _table(r)
    models, batches, workers = p["models"], p["batches"], p["workers"]
    fig = Figure(figsize=(5.2 * len(models) + 0.8, 4.2 + 0.22 * len(ratios(r))), layout="constrained")
    grid = fig.add_gridspec(2, len(models), height_ratios=[3, 0.6 + 0.25 * len(ratios(r))])
    im = None
    for k, model in enumerate(models):
        ax = fig.add_subplot(grid[0, k])
        ratio = np.full((len(workers), len(batches)), np.nan)
        for i, w in enumerate(workers):
            for j, b in enumerate(batches):
                sps = t.get(("lrjob", w, model, b), {}).get("samples_per_s")
                base = t.get(("lrjob", 0, model, b), {}).get("samples_per_s")
                if sps and base:
                    ratio[i, j] = sps / base
                text = "failed" if not sps else _rate(sps) + (f"\n{sps / base:.2f}x" if w and base else "")
                dark = bool(np.isfinite(ratio[i, j]) and abs(np.log2(ratio[i, j])) > 1.2)  # white on deep colours
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
        im = ax.imshow(np.log2(ratio), cmap="RdBu", norm=TwoSlopeNorm(vcenter=0, vmin=-4, vmax=2))
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_yticks(range(len(workers)), ["in-process" if w == 0 else f"{w} worker{'s' if w > 1 else ''}"
                                            for w in workers])
        ax.set(xlabel="global batch", title=f"{MODEL_NAMES[model]}\nsamples/s of lrjob run, x in-process")
    if im is not None:
        fig.colorbar(im, ax=fig.axes, shrink=0.6, label="log2(samples/s / in-process)")
    tab = fig.add_subplot(grid[1, :])
    tab.axis("off")
    rows = [[q["model"], str(q["batch"]), str(q["workers"]), _fmt(q["ray_over_horovodrun"], ".2f", "-"),
             _fmt(q["ray_over_bare"], ".2f", "-"), _fmt(q["horovodrun_over_bare"], ".2f", "-")] for q in ratios(r)]
    if rows:
        tab.table(cellText=rows, colLabels=["model", "batch", "workers", "Ray / horovodrun", "Ray / bare horovod.ray",
                                            "horovodrun / bare"], loc="center", cellLoc="center")
        tab.set_title("epoch time of lrjob run under Ray over the floors (> 1: slower)", fontsize=10)
    la0, la1 = r["machine"]["load_average_start"][0], r["machine"]["load_average_end"][0]
    fig.suptitle(f"MNIST, {p['rows']:,} rows, median of {p['epochs'] - 1} epoch(s) after a warm-up; "
                 f"load {la0:.1f} -> {la1:.1f}", fontsize=10)
    return fig


def write_outputs(r: dict, out: Path) -> list[Path]:
    """``out`` (JSON), the markdown report and the PNG beside it (same stem); returns the paths."""
    import io

    out = Path(out)
    png, md = out.with_suffix(".png"), out.with_suffix(".md")
    r = {**r, "ratios": ratios(r)}
    # everything rendered before anything is written: a result that cannot be drawn leaves no file
    text, report = json.dumps(r, indent=2, default=float) + "\n", summarize(r, png.name)
    picture = io.BytesIO()
    draw(r).savefig(picture, dpi=110, format="png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    png.write_bytes(picture.getvalue())
    md.write_text(report)
    return [out, md, png]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-results/scaling.json", help="JSON to write (.md and .png beside it)")
    ap.add_argument("--quick", action="store_true", help="a few cells on fewer rows, to try it (not the map)")
    ap.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                    help="measure nothing: redraw the report and PNG of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.from_json is not None:
        try:
            r = json.loads(args.from_json.read_text())
        except (OSError, ValueError) as e:
            print(f"scaling: --from-json {args.from_json}: cannot read it ({e}); give a JSON this script wrote",
                  file=sys.stderr)
            return 2
        try:
            r.pop("ratios", None)
            paths = write_outputs(r, Path(args.out))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            print(f"scaling: --from-json {args.from_json}: not a result of this script ({type(e).__name__}: "
                  f"{e}); give the JSON that python -m benchmarks.scaling wrote", file=sys.stderr)
            return 2
    else:
        r = measure(plan(args.quick))
        r["quick"] = args.quick
        paths = write_outputs(r, Path(args.out))
    print(paths[1].read_text())
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
