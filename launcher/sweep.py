"""Hyperparameter sweeps on Ray Tune (docs/design.md#sweeps): every trial is an ordinary
lrjob run, with its own run directory under the sweep's directory.

    lrjob sweep jobs/digits_softmax.yaml --workers 0 --grid train.learning_rate=0.01,0.1,1 \\
        --grid train.batch_size=64,256 --set train.epochs=3
    lrjob sweep jobs/binary_2d.yaml --workers 0 --range train.learning_rate=1e-3:1:log --random 6 \\
        --asha val_loss
    lrjob sweep --resume sweeps/digits_softmax-20260101T000000Z

Three layers, as for ``lrjob run``: ``plan_from_args`` (or ``make_plan`` from a spec) turns the command
line and the job's ``sweep:`` section into a validated, frozen ``SweepPlan`` (the trials are
listed up front, each one's spec validated, so a bad override path or value is a one-line
error before anything starts); ``run_sweep(plan, ...)`` runs it; ``resume_sweep(dir)`` reads
the plan back and runs the trials that have not ended.

Each trial is a Tune ``Trainable`` (``_TrialTrainable``) whose ``step()`` is one epoch of an
lrjob ``Driver`` running in a thread of the trial's actor: the driver reports every epoch and
waits for the next ``step()``, so ASHA's decision is taken between epochs, and a stopped
trial ends the way Ctrl-C ends a run (its run directory is closed ``interrupted``, every
checkpoint kept). Tune packs trials by their resource request (``trial_resources``): an
in-process trial asks for one CPU, a trial of N Horovod workers for N x
``cpus_per_worker`` CPUs (a placement group whose bundles the backend's workers fill).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import queue
import shlex
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lr_core import faults
from lr_core.errors import LrjobError, LrjobInputError, LrjobRuntimeError, SpecError, clip, counted, shown, suggest
from lr_core.tables import display, is_uri

from .spec import PATH_FIELDS, SCHEMA, JobSpec, absolute_tracking, apply_overrides, read_spec_yaml, spec_from_dict

__all__ = ["SweepRequest", "SweepPlan", "SweepOptions", "Trial", "SweepResult", "plan_from_args", "make_plan",
           "run_sweep", "resume_sweep", "trial_resources", "concurrent_trials", "parse_grid", "parse_range", "METRICS",
           "read_sweep_section", "SweepInterrupted"]

# The numeric per-epoch metrics (metrics.jsonl) a sweep can rank or stop trials by.
METRICS = {"binary": ("val_loss", "val_accuracy", "train_loss", "val_precision", "val_recall", "val_f1", "val_auc"),
           "softmax": ("val_loss", "val_accuracy", "train_loss", "val_macro_f1")}
DEFAULT_METRIC = "val_accuracy"
SCALES = ("lin", "log", "int")
SWEEP_KEYS = ("grid", "range", "random", "seed", "metric", "asha", "concurrent")
MAX_TRIALS = 10_000
PLAN_FILE = "plan.json"          # written once, before the first trial: what --resume reads
TABLE_FILES = ("sweep.json", "sweep.csv", "sweep.png")
# The key of a trial's last result when its run ended by itself (Tune also marks a trial
# that its scheduler stops as done).
ENDED = "lrjob_run_ended"
# Trial outcomes that are final: a resumed sweep does not run them again.
FINAL = ("completed", "stopped", "failed")


def _mode(metric: str) -> str:
    """Losses are minimized, every other metric maximized."""
    return "min" if metric.endswith("loss") else "max"


@dataclass(frozen=True)
class SweepRequest:
    """What the command line (or a script) asks of a sweep, before it is checked: ``grid`` and
    ``ranges`` as ``FIELD=V1,V2`` and ``FIELD=LOW:HIGH[:scale]`` items; None leaves a setting to
    the job's ``sweep:`` section, else its default."""

    grid: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    random: int | None = None
    seed: int | None = None
    metric: str | None = None
    asha: str | None = None
    concurrent: int | None = None


@dataclass(frozen=True)
class SweepOptions:
    """Where a sweep runs, besides its plan: the parent of new sweep directories, the Ray
    cluster (None: ``$RAY_ADDRESS``, else an embedded Ray) and ``--oversubscribe``."""

    sweeps_dir: str | os.PathLike = "sweeps"
    address: str | None = None
    oversubscribe: bool = False


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: its id (the name of its run directory under ``trials/``), the
    overrides it applies to the base spec, in order, and their values as parsed."""

    id: str
    overrides: tuple[str, ...]
    values: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: the base spec (resolved), the trials, the metric that ranks them
    (``mode`` min for losses), ASHA on ``asha`` (a metric) or off, at most ``concurrent``
    trials at once (None: as many as the CPUs take), and how the points were chosen
    (``grid``, ``ranges``, ``random``, ``seed``) for the record."""

    base: dict
    trials: tuple[Trial, ...]
    metric: str
    mode: str
    asha: str | None = None
    concurrent: int | None = None
    grid: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)
    random: int = 0
    seed: int = 0

    def spec(self) -> JobSpec:
        """The base job spec."""
        return spec_from_dict(self.base, where="sweep base spec")

    def trial_spec(self, trial: Trial) -> JobSpec:
        """The resolved spec of ``trial``: the base spec with the trial's overrides."""
        return spec_from_dict(apply_overrides(self.base, list(trial.overrides)), where=f"trial {trial.id}")

    def to_dict(self) -> dict:
        return {"base": self.base, "metric": self.metric, "mode": self.mode, "asha": self.asha,
                "concurrent": self.concurrent, "grid": self.grid, "ranges": self.ranges, "random": self.random,
                "seed": self.seed,
                "trials": [{"id": t.id, "overrides": list(t.overrides), "values": t.values} for t in self.trials]}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepPlan":
        trials = tuple(Trial(t["id"], tuple(t["overrides"]), dict(t["values"])) for t in d["trials"])
        return cls(base=d["base"], trials=trials, metric=d["metric"], mode=d["mode"], asha=d.get("asha"),
                   concurrent=d.get("concurrent"), grid=d.get("grid") or {}, ranges=d.get("ranges") or {},
                   random=int(d.get("random") or 0), seed=int(d.get("seed") or 0))


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: the sweep directory, one row per trial (the table), the best
    row (None when no trial has the metric) and the ids of the trials this call ran."""

    path: Path
    rows: list[dict]
    best: dict | None
    ran: list[str]


# --------------------------------------------------------------------------- the plan
def _split_values(text: str) -> list[str]:
    """``0.01,0.1,[16, 16]`` -> ``['0.01', '0.1', '[16, 16]']``: commas inside brackets stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def _check_path(flag: str, key: str) -> None:
    """A sweep may vary any spec field but ``name`` (the trials' run directories are named by
    the sweep) and ``tracking`` (every trial is logged where the sweep is)."""
    parts = key.split(".")
    if key == "name" or parts[0] == "tracking":
        raise SpecError(f"{flag} {clip(key)}: a sweep cannot vary {parts[0]}; set it once with --set")
    if parts[0] not in SCHEMA:
        raise SpecError(f"{flag} {clip(key)}: unknown section {shown(parts[0])}{suggest(parts[0], SCHEMA)}")
    if len(parts) < 2:
        raise SpecError(f"{flag} {clip(key)}: name a field, e.g. {flag} {parts[0]}.{next(iter(SCHEMA[parts[0]]))}=...")
    if parts[1] not in SCHEMA[parts[0]]:
        raise SpecError(f"{flag} {clip(key)}: unknown field {shown(parts[1])}{suggest(parts[1], SCHEMA[parts[0]])}")


def parse_grid(item: str, flag: str = "--grid") -> tuple[str, list[str]]:
    """``train.learning_rate=0.01,0.1,1`` -> ``('train.learning_rate', ['0.01', '0.1', '1'])``."""
    if "=" not in item:
        raise SpecError(f"{flag} {clip(item)}: expected FIELD=V1,V2,..., e.g. {flag} train.learning_rate=0.01,0.1,1")
    key, _, text = item.partition("=")
    key = key.strip()
    _check_path(flag, key)
    values = _split_values(text)
    if not text.strip() or any(not v for v in values):
        raise SpecError(f"{flag} {clip(key)}: an empty value in {shown(text)}; give values separated by commas, "
                        f"e.g. {flag} {clip(key)}=0.01,0.1")
    if len(set(values)) != len(values):
        raise SpecError(f"{flag} {clip(key)}: a value is given twice in {shown(text)}; give each once")
    return key, values


def parse_range(item: str, flag: str = "--range") -> tuple[str, dict]:
    """``train.learning_rate=1e-3:1:log`` -> ``('train.learning_rate', {'low': 0.001, 'high': 1.0,
    'scale': 'log'})``; the scale is ``lin`` (default), ``log`` (log-uniform, bounds > 0) or
    ``int`` (whole numbers, both bounds included)."""
    if "=" not in item:
        raise SpecError(f"{flag} {clip(item)}: expected FIELD=LOW:HIGH[:log|lin|int], "
                        f"e.g. {flag} train.learning_rate=1e-3:1:log")
    key, _, text = item.partition("=")
    key = key.strip()
    _check_path(flag, key)
    parts = [p.strip() for p in text.split(":")]
    if len(parts) not in (2, 3):
        raise SpecError(f"{flag} {clip(key)}: expected LOW:HIGH[:log|lin|int], got {shown(text)}")
    scale = parts[2] if len(parts) == 3 else "lin"
    if scale not in SCALES:
        raise SpecError(f"{flag} {clip(key)}: the scale must be one of {', '.join(SCALES)}, got {shown(scale)}")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise SpecError(f"{flag} {clip(key)}: LOW and HIGH must be numbers, got {shown(text)}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SpecError(f"{flag} {clip(key)}: LOW must be below HIGH, both finite, got {shown(text)}")
    if scale == "log" and low <= 0:
        raise SpecError(f"{flag} {clip(key)}: a log range needs LOW > 0, got {shown(text)}")
    if scale == "int" and not (low.is_integer() and high.is_integer()):
        raise SpecError(f"{flag} {clip(key)}: an int range needs whole bounds, got {shown(text)}")
    return key, {"low": low, "high": high, "scale": scale}


def _sample(spec: dict, rng: np.random.Generator) -> str:
    """One value of a range, as the text of an override."""
    low, high, scale = spec["low"], spec["high"], spec["scale"]
    if scale == "int":
        return str(int(rng.integers(int(low), int(high) + 1)))
    if scale == "log":
        return f"{10 ** rng.uniform(math.log10(low), math.log10(high)):.6g}"
    return f"{rng.uniform(low, high):.6g}"


def read_sweep_section(path: str | os.PathLike) -> dict:
    """The ``sweep:`` section of a job file ({} without one), its keys checked; the rest of the
    file is the job (``lrjob run`` ignores the section)."""
    doc = read_spec_yaml(Path(path))
    section = doc.get("sweep") if isinstance(doc, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise SpecError(f"{path}: sweep: expected a mapping ({', '.join(SWEEP_KEYS)}), got {shown(section)}")
    for key in section:
        if key not in SWEEP_KEYS:
            raise SpecError(f"{path}: unknown key {shown(f'sweep.{key}')}{suggest(str(key), SWEEP_KEYS)}")
    return section


def _section_items(section: dict, key: str, where: str) -> list[str]:
    """``sweep.grid`` / ``sweep.range`` as the command line's FIELD=... items."""
    given = section.get(key)
    if given is None:
        return []
    if not isinstance(given, dict):
        raise SpecError(f"{where}: sweep.{key} must be a mapping of spec fields, got {shown(given)}")
    items = []
    for field_, value in given.items():
        if key == "grid":
            if not isinstance(value, list) or not value:
                raise SpecError(f"{where}: sweep.grid.{field_} must be a list of values, got {shown(value)}")
            text = ",".join(yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
                            for v in value)
        else:
            if not isinstance(value, str):
                raise SpecError(f"{where}: sweep.range.{field_} must be LOW:HIGH[:log|lin|int], "
                                f"got {shown(value)}")
            text = value
        items.append(f"{field_}={text}")
    return items


def plan_from_args(job: str | os.PathLike, overrides: list[str], request: SweepRequest) -> SweepPlan:
    """The sweep the command line and the job's ``sweep:`` section ask for (the command line
    wins: its ``--grid``/``--range`` replace the section's for the same field, its options the
    section's keys)."""
    from .spec import load_spec

    section = read_sweep_section(job)
    spec = load_spec(job, overrides)
    given = {k: getattr(request, k) for k in ("random", "seed", "metric", "asha", "concurrent")}
    merged = SweepRequest(grid=request.grid, ranges=request.ranges,
                          **{k: section.get(k) if v is None else v for k, v in given.items()})
    return make_plan(spec, merged, tuple(_section_items(section, "grid", str(job))),
                     tuple(_section_items(section, "range", str(job))))


def make_plan(spec: JobSpec, request: SweepRequest, section_grid: tuple[str, ...] = (),
              section_ranges: tuple[str, ...] = ()) -> SweepPlan:
    """List the trials (the grid's product, times ``random`` draws from the ranges) and validate
    each one's spec: the first bad value is a one-line error naming where it was given
    (``--grid``, ``--range``, or the job's ``sweep.grid``/``sweep.range``) and the field."""
    grid, ranges, flags = {}, {}, {}
    for flag, item in [("sweep.grid", i) for i in section_grid] + [("--grid", i) for i in request.grid]:
        key, values = parse_grid(item, flag)
        grid[key], flags[key] = values, flag
    for flag, item in [("sweep.range", i) for i in section_ranges] + [("--range", i) for i in request.ranges]:
        key, spec_ = parse_range(item, flag)
        ranges[key], flags[key] = spec_, flag
    both = sorted(set(grid) & set(ranges))
    if both:
        raise SpecError(f"--grid and --range both vary {both[0]}; give one of them")

    def number(name, low):
        value = getattr(request, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise SpecError(f"--{name} (sweep.{name}) must be an integer >= {low}, got {shown(value)}")
        return value

    random, seed, concurrent = number("random", 0) or 0, number("seed", 0) or 0, number("concurrent", 1)
    asha, metric = request.asha, request.metric
    kind = spec.model.kind
    for flag, name in (("--asha", asha), ("--metric", metric)):
        if name is not None and name not in METRICS[kind]:
            raise SpecError(f"{flag} {shown(name)}: not a metric of a {kind} model; use one of "
                            f"{', '.join(METRICS[kind])}{suggest(str(name), METRICS[kind])}")
    metric = metric or asha or DEFAULT_METRIC
    if ranges and not random:
        raise SpecError("--range needs --random K: the number of points to draw from the ranges")
    if random and not ranges:
        raise SpecError("--random needs at least one --range FIELD=LOW:HIGH[:log|lin|int] to draw from")
    if not grid and not ranges:
        raise SpecError("nothing to sweep: give --grid FIELD=V1,V2 or --range FIELD=LOW:HIGH with --random K "
                        "(or a sweep: section in the job file)")
    points = list(itertools.product(*[[(k, v) for v in vs] for k, vs in grid.items()]))
    count = len(points) * max(1, random)
    if count > MAX_TRIALS:
        raise SpecError(f"the sweep has {count:,} trials, more than {MAX_TRIALS:,} (the upper bound); "
                        f"give fewer values")
    rng = np.random.default_rng([seed, 0x5EE9])
    trials = []
    base = spec.to_dict()
    absolute_tracking(base)  # plan.json holds the store absolute: --resume from elsewhere logs there
    for point in points:
        for _ in range(max(1, random)):
            chosen = list(point) + [(k, _sample(r, rng)) for k, r in ranges.items()]
            overrides = tuple(f"{k}={v}" for k, v in chosen)
            trial_id = f"t{len(trials):03d}"
            try:
                tspec = spec_from_dict(apply_overrides(base, list(overrides)), where=f"trial {trial_id}")
            except SpecError as e:
                culprit = next(((k, v) for k, v in chosen if k in str(e)), None)
                if culprit is None:
                    raise SpecError(f"trial {trial_id} ({', '.join(overrides)}): {str(e).removeprefix('--set ')}") \
                        from None
                k, v = culprit
                raise SpecError(f"{flags[k]} {clip(f'{k}={v}')}: {str(e).removeprefix('--set ')}") from None
            resolved = tspec.to_dict()
            # A relative path was resolved against this working directory: plan.json keeps it
            # absolute, so that --resume from another directory reads the same files.
            overrides = tuple(f"{k}={_flat_get(resolved, k)}" if _is_local_path(k, _flat_get(resolved, k)) else o
                              for (k, _), o in zip(chosen, overrides))
            trials.append(Trial(trial_id, overrides, {k: _flat_get(resolved, k) for k, _ in chosen}))
    return SweepPlan(base=base, trials=tuple(trials), metric=metric, mode=_mode(metric), asha=asha,
                     concurrent=concurrent, grid=grid, ranges=ranges, random=random, seed=seed)


def _is_local_path(key: str, value: Any) -> bool:
    """Whether ``key`` is a path field of the data section (``data.path``, ...) holding a local path."""
    parts = key.split(".")
    return (len(parts) == 2 and parts[0] == "data" and parts[1] in PATH_FIELDS and isinstance(value, str)
            and "://" not in value)


def _flat_get(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


# --------------------------------------------------------------------------- resources
def trial_resources(spec: JobSpec) -> list[dict]:
    """The placement-group bundles one trial of ``spec`` reserves: in-process, one CPU (the
    driver is the worker); with N workers, an empty head bundle for the trial's driver (it only
    waits) and one bundle of ``cpus_per_worker`` (and ``gpus_per_worker``) CPUs per worker,
    which the Horovod backend's workers fill (horovod.ray uses the current placement group)."""
    r = spec.resources
    if spec.workers == 0:
        return [{"CPU": float(r.cpus_per_worker)}]
    worker = {"CPU": float(r.cpus_per_worker)}
    if r.gpus_per_worker:
        worker["GPU"] = float(r.gpus_per_worker)
    return [{}] + [dict(worker) for _ in range(spec.workers)]


def concurrent_trials(cpus: float, spec: JobSpec, limit: int | None = None) -> int:
    """How many trials of ``spec`` run at once on ``cpus`` CPUs (at least 1, at most ``limit``):
    on 2 CPUs, 2 in-process trials or 1 trial of 2 workers."""
    need = sum(b.get("CPU", 0.0) for b in trial_resources(spec))
    n = max(1, int(cpus // need)) if need else 1
    return min(n, limit) if limit else n


# --------------------------------------------------------------------------- the trial
class TrialFailed(RuntimeError):
    """A trial's run ended with an error (its message is the run's ``summary.json`` error)."""


class _StopTrial(KeyboardInterrupt):
    """Raised in a trial's driver thread when Tune stops the trial (ASHA, or the sweep ending):
    the driver ends the run as it ends one at Ctrl-C (``interrupted``, checkpoints kept)."""


class _TrialRun:
    """One trial's driver, run in a thread of the trial's actor, handing one epoch at a time to
    ``next_result`` and waiting for the next call before it trains on."""

    def __init__(self, config: dict):
        self.config = config
        self.results: queue.Queue = queue.Queue()
        self.go = threading.Semaphore(0)
        self.stopping = threading.Event()
        self.reported = 0
        self.last: dict = {}
        self.thread = threading.Thread(target=self._main, name=f"lrjob-trial-{config['id']}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        from .driver import Driver, DriverOptions
        from .report.progress import Reporter

        run = self

        class _Reporter(Reporter):
            def epoch(self, m: dict, epochs: int) -> None:
                run._report(m, last=int(m.get("epoch", 0)) >= epochs)

        try:
            spec = spec_from_dict(self.config["spec"], where=f"trial {self.config['id']}")
            # env.json's argv: the sweep's command, not the command line of the Ray worker process
            driver = Driver(spec, self.config["run_dir"], reporter=_Reporter("silent"),
                            options=DriverOptions(address=None, argv=tuple(self.config.get("argv") or ()) or None))
            parent = self.config.get("parent_run_id")
            if parent and hasattr(driver.tracker, "parent_run_id"):
                driver.tracker.parent_run_id = parent  # a child of the sweep's MLflow run
            result = driver.run()
            self.results.put(("done", result.summary))
        except _StopTrial:
            self.results.put(("stopped", None))
        except KeyboardInterrupt:
            self.results.put(("stopped", None))
        except BaseException as e:  # noqa: BLE001 - every failure is the trial's result
            text = str(e) if isinstance(e, LrjobError) else f"{type(e).__name__}: {e}"
            self.results.put(("error", (text.splitlines() or [type(e).__name__])[0]))

    def _report(self, m: dict, last: bool) -> None:
        """From the driver thread: hand over one epoch; wait for Tune's next step unless it was
        the last one (then the run finishes: model, plots, summary)."""
        self.results.put(("epoch", dict(m)))
        if last:
            return
        self.go.acquire()
        if self.stopping.is_set():
            raise _StopTrial()

    def next_result(self) -> dict:
        """Tune's ``step()``: the next epoch's metrics (``done`` after the last one)."""
        if self.reported:
            if _recorded_stopped(self.config.get("ledger"), self.config["id"]):
                # ASHA stopped the trial (sweep.json says so): the run ends here, inside this step,
                # so Tune never ends the sweep (and kills its actors after 5 s) while the run still
                # writes its end (summary, model, tracking)
                self.stop()
                return {**self.last, "done": True}
            self.go.release()  # the driver waits in _report for this
        kind, payload = self.results.get()
        if kind == "epoch":
            self.reported += 1
            self.last = _numbers(payload)
            if int(payload.get("epoch", 0)) < self.config["epochs"]:
                return dict(self.last)
            kind, payload = self.results.get()  # the run's end: the export, plots, summary
            if kind == "done":
                return {**self.last, "done": True, ENDED: 1}
        if kind == "done":
            final = _numbers((payload or {}).get("final") or {})
            return {**final, **self.last, "done": True, ENDED: 1}
        if kind == "error":
            raise TrialFailed(payload)
        return {**self.last, "done": True}  # stopped

    def stop(self) -> None:
        """Tune stops the trial: the driver ends the run at its next epoch boundary (or has
        ended it already); wait for it, so the run directory is closed before the actor goes."""
        self.stopping.set()
        self.go.release()
        self.thread.join()


def _recorded_stopped(ledger: str | None, tid: str) -> bool:
    """Whether the sweep's ``sweep.json`` records trial ``tid`` as stopped (by ASHA)."""
    return bool(ledger) and _read_ledger(Path(ledger).parent).get(tid, {}).get("status") == "stopped"


def _numbers(m: dict) -> dict:
    return {k: float(v) for k, v in m.items()
            if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(float(v))}


def end_quietly_on_sigterm() -> None:
    """Make SIGTERM end this process at once, without a word.

    Tune kills a trial's actor that is still stopping about 5 s after the experiment ends (a
    Ctrl-C on the sweep, an ASHA stop, the end of the sweep), and Ray's own handler for it raises
    ``SystemExit`` wherever the actor's Python happens to be: inside a weakref callback or an
    ``except BaseException`` it is printed as a traceback on the sweep's terminal, or swallowed.
    The trial loses nothing by a plain exit: its checkpoints are written by temp + rename and
    ``--resume`` continues it from the newest (docs/design.md, "Sweeps")."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))


def _trainable():
    """The Tune ``Trainable`` class (built on first use: Ray Tune is imported only by sweeps)."""
    from ray import tune

    class _TrialTrainable(tune.Trainable):
        """One sweep trial: ``step()`` is one epoch of the trial's lrjob run."""

        def setup(self, config):
            end_quietly_on_sigterm()
            faults.arm(config["trial"].get("fault"))  # tests only: the sweep's LRJOB_FAULT (lr_core/faults.py)
            self._run = _TrialRun(config["trial"])

        def step(self):
            return self._run.next_result()

        def reset_config(self, new_config):
            # Tune reuses this actor for the next trial of the same resources (no new process,
            # no second import of MXNet); the previous trial's run has ended.
            self._run.stop()
            faults.arm(new_config["trial"].get("fault"))
            self._run = _TrialRun(new_config["trial"])
            return True

        def save_checkpoint(self, checkpoint_dir):
            # The trial's run directory holds its checkpoints; Tune keeps nothing of its own.
            return {"run_dir": self._run.config["run_dir"]}

        def load_checkpoint(self, checkpoint):
            pass  # a resumed trial continues from its run directory (Driver, --output)

        def cleanup(self):
            run = getattr(self, "_run", None)
            if run is not None:
                run.stop()

    return _TrialTrainable


# --------------------------------------------------------------------------- the sweep
def run_sweep(plan: SweepPlan, output: str | os.PathLike | None = None, options: SweepOptions | None = None, *,
              resume: bool = False, out=None) -> SweepResult:
    """Run every trial of ``plan`` that has not ended (all of them, unless ``resume``) on Ray
    Tune, write the table (``sweep.json``, ``sweep.csv``), the plot (``sweep.png``) and print
    the table and the best run to ``out`` (default stdout)."""
    from .backends.cluster import RaySession
    from .report.progress import prepare_feedback
    from .rundir import RunLock, make_run_dir, remove_if_empty

    out = out or sys.stdout
    options = options or SweepOptions()
    faults.check()
    _check_local("--resume" if resume else "--output", output)
    _check_local("--sweeps-dir", options.sweeps_dir)
    specs = {t.id: plan.trial_spec(t) for t in plan.trials}
    base = plan.spec()
    # The trials this call runs: on resume, those that have not ended. When none is left, the
    # table is written again without Ray.
    ledger = _read_ledger(Path(output)) if resume else {}
    runs = [specs[t.id] for t in plan.trials if not (resume and _trial_state(Path(output), t, ledger))]
    ended = not runs
    # Bad data fails here, before anything is written; each distinct data section of a trial that
    # runs, once (an ended trial's data is not read: its file may be gone).
    prepared = set()
    for s in runs:
        d = s.to_dict()
        key = json.dumps([d["data"], d["model"], d["train"]["seed"]], sort_keys=True, default=str)
        if key not in prepared:
            prepared.add(key)
            s.prepare_data(*prepare_feedback(None))
    widest = max(runs or specs.values(), key=lambda s: sum(b.get("CPU", 0) for b in trial_resources(s)))
    created: list[Path] = []
    lock = None
    path: Path | None = None
    try:
        if resume:
            path = Path(output)
        else:
            try:
                path, created = make_run_dir(Path(output) if output else None, base.name, options.sweeps_dir)
            except LrjobInputError as e:
                raise LrjobInputError(str(e).replace("--runs-dir", "--sweeps-dir", 1)) from None
            if not created and any(path.iterdir()):
                raise LrjobInputError(f"--output {path}: exists and is not empty; choose a new path, or continue "
                                      f"a sweep with lrjob sweep --resume {path}")
        lock = RunLock.acquire(path)
        path = path.absolute()  # trial actors run in Tune's own working directories
        if ended:
            return _run(plan, specs, path, 0.0, out)
        with RaySession(options.address, widest.workers, widest.resources.cpus_per_worker,
                        oversubscribe=options.oversubscribe,
                        gpus_per_worker=widest.resources.gpus_per_worker if widest.workers else 0):
            import ray

            cpus = ray.cluster_resources().get("CPU", 0.0)
            need = sum(b.get("CPU", 0.0) for b in trial_resources(widest))
            if need > cpus:
                from .backends.cluster import ResourceError

                raise ResourceError(f"resources.workers: a trial of {counted(widest.workers, 'worker')} x "
                                    f"{widest.resources.cpus_per_worker:g} CPU needs {need:g} CPUs, the Ray "
                                    f"cluster has {cpus:g}; lower --workers or join a larger cluster")
            if not resume:
                _write_json(path / PLAN_FILE, plan.to_dict())
            return _run(plan, specs, path, cpus, out)
    except BaseException:
        if not resume and path is not None and not (path / PLAN_FILE).exists():
            if lock is not None:
                lock.release()
                lock = None
            remove_if_empty(created)
        raise
    finally:
        if lock is not None:
            lock.release()


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) ended the sweep: ``resume`` is the command that continues it, ``unfinished``
    the trials that did not end (the CLI prints both and exits 130); none when a second Ctrl-C cut
    the table after every trial had ended (``resume`` writes it again)."""

    def __init__(self, path: Path, unfinished: list[str]):
        super().__init__(f"sweep interrupted: {path}")
        self.path, self.unfinished = path, list(unfinished)
        self.resume = f"lrjob sweep --resume {shlex.quote(str(path))}"


class _Interrupt:
    """Ctrl-C or SIGTERM while Tune runs the trials (docs/design.md#sweeps): the first one asks Tune
    to stop every trial (a ``Stopper``: each trial's driver ends its run at the end of its epoch,
    ``interrupted``, checkpoints kept, unless Tune kills its actor first, ~5 s after the experiment
    ends: that trial stays unfinished and --resume continues it from its newest checkpoint) and to
    return; a second one raises ``KeyboardInterrupt`` at once. Tune's own SIGINT handler is off
    meanwhile (it would stop the sweep without telling it). The handler stays while the table is
    written and printed (``writing_table``): a first signal there is noted, the table completes.
    Outside the main thread no handler can be set: Tune then runs to its end."""

    def __init__(self):
        self.signal: int | None = None
        self.writing_table = False  # Tune has returned: the table is being written and printed
        self._old: dict = {}
        self._env = None

    def stopper(self):
        from ray.tune import Stopper
        from ray.tune.stopper import NoopStopper

        outer = self

        class _StopAll(Stopper):
            def __call__(self, trial_id, result):
                return False

            def stop_all(self):
                return outer.signal is not None

            def __reduce__(self):
                # Tune saves its state (this stopper included) with cloudpickle every 10 s or so;
                # ``outer`` holds the previous signal handlers, which may hold locks. A sweep is
                # resumed by lrjob, never by Tune's restore: the saved copy is a no-op stopper.
                return NoopStopper, ()

        return _StopAll()

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        if self.writing_table:
            print("lrjob: the trials have returned; writing the table (Ctrl-C again to stop at once)",
                  file=sys.stderr)
            return
        print("lrjob: stopping the sweep: running trials are stopped; one cut mid-epoch continues from its newest "
              "checkpoint on --resume (Ctrl-C again to stop at once)", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        if self._old:
            if self._env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        self._old = {}


def _check_local(flag: str, where) -> None:
    """A sweep directory is a local folder (docs/design.md#sweeps): a storage URI is refused in one
    line, without its login (as a path it would become a local folder named after the URI)."""
    if where is not None and is_uri(str(where)):
        raise SpecError(f"{flag} {display(where)}: a sweep directory must be a local folder (a storage URI is "
                        f"for lrjob run --output); give a path such as sweeps/NAME")


def resume_sweep(path: str | os.PathLike, options: SweepOptions | None = None, *, out=None) -> SweepResult:
    """Continue the sweep in ``path``: its trials that have not ended run (a trial killed
    mid-run continues from its newest checkpoint); the ended ones are kept as they are."""
    _check_local("--resume", path)
    path = Path(path)
    plan_file = path / PLAN_FILE
    if not plan_file.is_file():
        raise LrjobInputError(f"--resume {path}: not a sweep directory (no {PLAN_FILE}); pass a folder that "
                              f"lrjob sweep wrote")
    try:
        plan = SweepPlan.from_dict(json.loads(plan_file.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LrjobInputError(f"{plan_file}: damaged ({type(e).__name__}); start a new sweep") from None
    return run_sweep(plan, path, options, resume=True, out=out)


def _trial_state(path: Path, trial: Trial, ledger: dict) -> str | None:
    """How a trial ended: the sweep's record, else its run directory's status; None when it has
    not ended (never started, or killed with the sweep)."""
    from .rundir import RunDir

    recorded = ledger.get(trial.id, {}).get("status")
    if recorded in FINAL:
        return recorded
    summary = RunDir(path / "trials" / trial.id).summary() or {}
    status = summary.get("status")
    return status if status in ("completed", "failed") else None


def _run(plan: SweepPlan, specs: dict, path: Path, cpus: float, out) -> SweepResult:
    ledger = _read_ledger(path)
    todo = [t for t in plan.trials if _trial_state(path, t, ledger) is None]
    for t in plan.trials:  # ended, but not recorded by a driver killed before it could
        if t.id not in ledger and t not in todo:
            ledger[t.id] = {"status": _trial_state(path, t, ledger)}
    parent = _SweepTracker.open(plan, path)
    done = [len([t for t in plan.trials if t.id in ledger])]
    interrupt = _Interrupt()
    if todo:
        from ray import tune
        from ray.tune import PlacementGroupFactory
        from ray.tune.schedulers import ASHAScheduler

        from .quiet import silence_tune_noise

        silence_tune_noise()
        configs = [{"id": t.id, "spec": specs[t.id].to_dict(), "run_dir": str(path / "trials" / t.id),
                    "epochs": specs[t.id].train.epochs, "parent_run_id": parent.run_id, "argv": list(sys.argv),
                    "fault": os.environ.get("LRJOB_FAULT"),  # tests only: reaches the trial actors
                    "ledger": str(path / "sweep.json")}
                   for t in todo]
        for c in configs:  # a plan.json written before its store was made absolute: this folder's
            absolute_tracking(c["spec"])

        def resources(config):
            return PlacementGroupFactory(trial_resources(specs[config["trial"]["id"]]))

        staged: set[Path] = set()  # Tune's own folders in the Ray session's directory

        class _Record(tune.Callback):
            """Each ended trial is written to the ledger (sweep.json) at once: a killed driver
            loses none of them."""

            def on_trial_start(self, iteration, trials, trial, **info):
                staged.add(Path(trial.local_experiment_path).parent)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._ended(trial, False)

            def on_trial_error(self, iteration, trials, trial, **info):
                self._ended(trial, True)

            def _ended(self, trial, errored):
                tid = trial.config["trial"]["id"]
                summary = _summary(path, tid)
                status = summary.get("status")
                error = None
                if errored or status == "failed":
                    state, error = "failed", summary.get("error") or _tune_error(trial.error_file)
                elif status == "completed" or (trial.last_result or {}).get(ENDED):
                    # step() returned after the run ended, so its summary.json is final
                    state = "completed"
                else:
                    # stopped by the scheduler (ASHA) before its last epoch; Tune reports the
                    # stop before the trial's driver has closed its run (``interrupted``)
                    state = "stopped"
                ledger[tid] = {"status": state, **({"error": error} if error else {})}
                _write_table(plan, path, ledger, plots=False)
                done[0] += 1
                faults.hit("sweep", trials=done[0])

        class _RecordedASHA(ASHAScheduler):
            """ASHA whose decision to stop a trial is written to sweep.json before Tune acts on it:
            a driver killed before the trial has ended does not run it again on resume."""

            def on_trial_result(self, tune_controller, trial, result):
                decision = super().on_trial_result(tune_controller, trial, result)
                if decision == self.STOP and not result.get("done"):
                    tid = trial.config["trial"]["id"]
                    ledger[tid] = {"status": "stopped"}
                    _write_table(plan, path, ledger, plots=False)
                    faults.hit("asha", trial=tid)
                    # the trial reads the record at its next step and ends its run within it
                    # (_TrialRun.next_result): a STOP here would let Tune end the sweep, and kill
                    # the trial's actor after 5 s, while the run still writes its end
                    return self.CONTINUE
                return decision

        scheduler = None
        if plan.asha:
            scheduler = _RecordedASHA(time_attr="epoch", metric=plan.asha, mode=_mode(plan.asha),
                                      max_t=max(s.train.epochs for s in specs.values()), grace_period=1,
                                      reduction_factor=2)
        attempt = 1 + len([p for p in (path / "tune").glob("attempt-*")]) if (path / "tune").is_dir() else 1
        tuner = tune.Tuner(
            tune.with_resources(_trainable(), resources),
            param_space={"trial": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=plan.concurrent,
                                        reuse_actors=True,
                                        trial_name_creator=lambda t: t.config["trial"]["id"],
                                        trial_dirname_creator=lambda t: t.config["trial"]["id"]),
            run_config=tune.RunConfig(name=f"attempt-{attempt}", storage_path=str((path / "tune").resolve()),
                                      verbose=0, callbacks=[_Record()], stop=interrupt.stopper(),
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False,
                                                                              checkpoint_frequency=0),
                                      failure_config=tune.FailureConfig(max_failures=0)))
        width = concurrent_trials(cpus, max(specs.values(), key=lambda s: s.workers), plan.concurrent)
        print(f"sweep: {len(todo)} of {len(plan.trials)} trials to run, up to {width} at a time on "
              f"{cpus:g} CPUs ({path})", file=sys.stderr)
    try:
        # The handler stays until the table is printed: a first Ctrl-C after the trials returned
        # does not cut the table (docs/design.md#sweeps, "Ctrl-C").
        with interrupt:
            if todo:
                try:
                    tuner.fit()
                finally:
                    _remove_tune_staging(staged, f"attempt-{attempt}")
            interrupt.writing_table = True
            faults.hit("table")
            rows = _write_table(plan, path, ledger, plots=True)
            best = _best(plan, rows)
            parent.finish(plan, path, rows, best)
            _print_table(rows, plan, best, path, out)
    except KeyboardInterrupt as e:  # a second Ctrl-C: at once (Tune did not wait for its trials)
        _write_table(plan, path, ledger, plots=False)
        raise SweepInterrupted(path, [t.id for t in plan.trials if t.id not in ledger]) from e
    unfinished = [r["trial"] for r in rows if r["status"] not in FINAL]
    if interrupt.signal is not None and unfinished:
        raise SweepInterrupted(path, unfinished)
    if interrupt.signal is not None:  # every trial had ended: the sweep's result stands
        print("lrjob: every trial had ended when the sweep was interrupted; its result stands", file=sys.stderr)
    if unfinished:
        raise LrjobRuntimeError(f"{len(unfinished)} trial(s) did not end ({', '.join(unfinished[:5])}); continue "
                                f"with: lrjob sweep --resume {path}")
    return SweepResult(path, rows, best, [t.id for t in todo])


def _remove_tune_staging(folders, name: str) -> None:
    """Tune stages its experiment state and each trial's working directory in the Ray session's
    folder (``/tmp/ray/session_*/artifacts/<time>/attempt-K``), which Ray never removes; lrjob reads
    none of it (Tune's state is in ``tune/attempt-K``, each trial's in its run directory). Removed
    after the fit, on this node: the experiment's folder, then its ``<time>`` parent if empty. Only a
    folder of that shape is touched."""
    import shutil

    for folder in folders:
        if folder.name != name or folder.parent.parent.name != "artifacts":
            continue
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()
        except OSError:
            pass  # another experiment's folder is there too


def _summary(path: Path, tid: str) -> dict:
    from .rundir import RunDir

    return RunDir(path / "trials" / tid).summary() or {}


def _tune_error(error_file) -> str:
    """The last line of Tune's error file for a trial that failed outside its run."""
    try:
        lines = [x for x in Path(error_file).read_text().splitlines() if x.strip()]
        return lines[-1][:300] if lines else "failed"
    except (OSError, TypeError):
        return "failed"


def _read_ledger(path: Path) -> dict:
    try:
        doc = json.loads((path / "sweep.json").read_text())
        return {r["trial"]: {k: r[k] for k in ("status", "error") if r.get(k)} for r in doc["trials"]
                if r.get("status") in FINAL}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# --------------------------------------------------------------------------- the table
COLUMNS = ("trial", "overrides", "best", "epoch", "status", "run_dir")


def _shown(value):
    """A value as the sweep's outputs show it (the table, the plot, stdout, the parent MLflow
    run): every URI without its ``user:secret@`` part and query (``tracking.redact``); the
    trials run the plan's own values."""
    from .tracking import redact

    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    return value


def _rows(plan: SweepPlan, path: Path, ledger: dict) -> list[dict]:
    """One row per trial, its overrides, values and error shown without credentials (``_shown``)."""
    from .rundir import RunDir
    from .tracking import redact_text

    rows = []
    for t in plan.trials:
        run = RunDir(path / "trials" / t.id)
        history = run.history() if run.path.is_dir() else []
        scored = [(h[plan.metric], int(h["epoch"])) for h in history
                  if isinstance(h.get(plan.metric), (int, float)) and math.isfinite(h[plan.metric])]
        best = (min if plan.mode == "min" else max)(scored, key=lambda x: x[0]) if scored else (None, None)
        entry = ledger.get(t.id, {})
        status = entry.get("status") or ((run.summary() or {}).get("status") if run.path.is_dir() else None) \
            or "pending"
        if status not in FINAL:
            status = "pending" if not history else "unfinished"
        error = entry.get("error")
        rows.append({"trial": t.id, "overrides": " ".join(_shown(o) for o in t.overrides),
                     "values": _shown(t.values), "metric": plan.metric, "best": best[0], "epoch": best[1],
                     "epochs_done": len(history), "status": status, "error": error and redact_text(error),
                     "run_dir": str(run.path)})
    return rows


def _best(plan: SweepPlan, rows: list[dict]) -> dict | None:
    scored = [r for r in rows if r["best"] is not None and r["status"] in ("completed", "stopped")]
    if not scored:
        return None
    return (min if plan.mode == "min" else max)(scored, key=lambda r: r["best"])


def _write_table(plan: SweepPlan, path: Path, ledger: dict, plots: bool) -> list[dict]:
    """``sweep.json`` (the plan's metric, the best trial, every row) and ``sweep.csv``; with
    ``plots`` also ``sweep.png`` (a picture that fails is a warning, never a failed sweep)."""
    from .rundir import atomic_write_bytes, atomic_write_text

    rows = _rows(plan, path, ledger)
    best = _best(plan, rows)
    doc = {"metric": plan.metric, "mode": plan.mode, "asha": plan.asha,
           "best": {"trial": best["trial"], "best": best["best"], "run_dir": best["run_dir"]} if best else None,
           "trials": rows}
    atomic_write_text(path / "sweep.json", json.dumps(doc, indent=2) + "\n")
    buf = io.StringIO()
    keys = list(plan.trials[0].values) if plan.trials else []
    w = csv.writer(buf)
    w.writerow(["trial", *keys, "overrides", f"best_{plan.metric}", "epoch", "status", "run_dir", "error"])
    for r in rows:
        w.writerow([r["trial"], *[r["values"].get(k) for k in keys], r["overrides"],
                    "" if r["best"] is None else repr(r["best"]), r["epoch"] or "", r["status"], r["run_dir"],
                    r["error"] or ""])
    atomic_write_text(path / "sweep.csv", buf.getvalue())
    if plots:
        try:
            png = _plot(plan, rows)
            if png is not None:
                atomic_write_bytes(path / "sweep.png", png)
        except Exception as e:  # noqa: BLE001 - a plot never fails a sweep
            print(f"lrjob: warning: sweep.png not written ({type(e).__name__}: {e})", file=sys.stderr)
    return rows


def _plot(plan: SweepPlan, rows: list[dict]) -> bytes | None:
    """``sweep.png``: the figure of ``_figure`` as PNG bytes (None without matplotlib)."""
    fig = _figure(plan, rows)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


# The longest tick label of a panel of values that are not numbers (a data.path, a list).
TICK_CHARS = 24


def _tick_labels(values: list, most: int = TICK_CHARS) -> list[str]:
    """Short labels, one per distinct value of a panel, that tell the values apart: the prefix and
    the suffix all share, up to a separator (the folder and the file name of every ``data.path``),
    become ``…``; a label still longer than ``most`` keeps its start and end around ``…``; one that
    would still repeat another's is numbered by its position."""
    texts = [str(v) for v in values]
    if len(texts) > 1:
        seps = "/=,: "
        common = os.path.commonprefix(texts)
        head = max(common.rfind(c) for c in seps) + 1
        common = os.path.commonprefix([t[::-1] for t in texts])[::-1]
        tail = len(common) - min([i for i in (common.find(c) for c in seps) if i >= 0], default=len(common))
        if all(len(t) > head + tail for t in texts):
            texts = [("…" if head > 1 else t[:head]) + t[head:len(t) - tail]
                     + ("…" if tail > 1 else t[len(t) - tail:]) for t in texts]
    head = (most - 1) // 2
    texts = [t if len(t) <= most else t[:head] + "…" + t[-(most - 1 - head):] for t in texts]
    return [f"{i + 1}: {t}" if texts.count(t) > 1 else t for i, t in enumerate(texts)]


def _figure(plan: SweepPlan, rows: list[dict]):
    """The best metric of each trial against each swept field, one panel per field (a log axis
    for a log range, or positive values spanning 100x or more); failed trials left out. A field
    whose values are not numbers gets one tick per distinct value, in the plan's order, labelled
    by ``_tick_labels`` and slanted; its panel widens with the number of values."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(plan.trials[0].values) if plan.trials else []
    if not keys:
        return None
    # the distinct values of each field, in the plan's order, as the table shows them (json), each
    # with its text as the override gave it
    distinct: dict[str, dict[str, str]] = {}
    for k in keys:
        distinct[k] = {}
        for t in plan.trials:
            text = next((o.partition("=")[2] for o in t.overrides if o.partition("=")[0] == k), "")
            distinct[k].setdefault(_value_key(_shown(t.values.get(k))), _shown(text))
    widths = [4.5 if _numbers_only(plan, k) else min(14.0, max(4.5, 1.5 + 0.45 * len(distinct[k])))
              for k in keys]
    fig, axes = plt.subplots(1, len(keys), figsize=(sum(widths), 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, key in zip(axes[0], keys):
        pts = [(r["values"].get(key), r["best"], r["status"]) for r in rows if r["best"] is not None]
        numeric = _numbers_only(plan, key)
        if numeric:
            xs = [x for x, _, _ in pts]
        else:
            where = {v: i for i, v in enumerate(distinct[key])}
            xs = [where.get(_value_key(x), -1) for x, _, _ in pts]
        for status, marker in (("completed", "o"), ("stopped", "x"), ("unfinished", "."), ("pending", ".")):
            sel = [(x, y) for x, (_, y, s) in zip(xs, pts) if s == status]
            if sel:
                ax.scatter([x for x, _ in sel], [y for _, y in sel], marker=marker, label=status)
        positive = numeric and bool(pts) and min(x for x, _, _ in pts) > 0
        if plan.ranges.get(key, {}).get("scale") == "log" or (
                positive and max(x for x, _, _ in pts) / min(x for x, _, _ in pts) >= 100):
            ax.set_xscale("log")
        if not numeric:
            labels = _tick_labels(list(distinct[key].values()))
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=35, ha="right", rotation_mode="anchor", fontsize=7)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {plan.metric}")
        ax.grid(alpha=0.3)
        if pts:
            ax.legend(fontsize=7)
    fig.suptitle(f"{plan.base['name']}: best {plan.metric} per trial")
    fig.tight_layout()
    return fig


def _value_key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _numbers_only(plan: SweepPlan, key: str) -> bool:
    """Whether every trial's value of ``key`` is a number (not a bool): a numeric axis."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool)
               for v in (t.values.get(key) for t in plan.trials))


def _print_table(rows: list[dict], plan: SweepPlan, best: dict | None, path: Path, out) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [["trial", "overrides", f"best {plan.metric}", "epoch", "status", "run dir"]]
    cells += [[r["trial"], r["overrides"], fmt(r["best"]), fmt(r["epoch"]), r["status"], r["run_dir"]]
              for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip(), file=out)
    for r in rows:
        if r["status"] == "failed":
            print(f"{r['trial']} failed: {r['error']}", file=out)
    if best:
        print(f"best: {best['trial']} ({best['overrides']}) {plan.metric} {best['best']:.4f} at epoch "
              f"{best['epoch']}: {best['run_dir']}", file=out)
    else:
        print(f"best: none (no completed or stopped trial reported {plan.metric}; unfinished ones are not "
              f"ranked)", file=out)
    print(f"table: {path / 'sweep.csv'}, {path / 'sweep.json'}; plot: {path / 'sweep.png'}", file=out)


def _write_json(path: Path, doc: dict) -> None:
    from .rundir import atomic_write_text

    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- tracking
class _SweepTracker:
    """The sweep's parent MLflow run (when the base spec tracks): the plan as params, the
    table as artifacts, the best trial as a metric and tag. Each trial's run is its child
    (tag ``mlflow.parentRunId``). Like a run's tracking, it never fails the sweep: the first
    error is one warning line."""

    def __init__(self, uri: str | None, experiment: str | None):
        self.uri, self.experiment = uri, experiment
        self.client = None
        self.run_id: str | None = None

    @classmethod
    def open(cls, plan: SweepPlan, path: Path) -> "_SweepTracker":
        raw = json.loads(json.dumps(plan.base))
        absolute_tracking(raw)
        mlflow = (raw.get("tracking") or {}).get("mlflow")
        t = cls(mlflow["uri"], mlflow["experiment"]) if mlflow else cls(None, None)
        if mlflow:
            t._guard("start", lambda: t._start(plan, path))
        return t

    def _start(self, plan: SweepPlan, path: Path) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        from .tracking import HTTP_LIMITS, _key, _param_text, redact

        for k, v in HTTP_LIMITS.items():
            os.environ.setdefault(k, v)
        self.client = client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
        record = path / "mlflow.json"
        try:
            doc = json.loads(record.read_text())
            if doc.get("uri") == redact(self.uri) and doc.get("experiment_id") == exp_id:
                self.run_id = client.get_run(doc["run_id"]).info.run_id
                client.update_run(self.run_id, status="RUNNING")
                return
        except Exception:  # noqa: BLE001 - absent or gone: a new parent run
            pass
        run = client.create_run(exp_id, run_name=path.name,
                                tags={"lrjob.sweep_dir": redact(str(path.resolve())), "lrjob.job": plan.base["name"],
                                      "lrjob.kind": "sweep"})
        self.run_id = run.info.run_id
        _write_json(record, {"uri": redact(self.uri), "experiment_id": exp_id, "run_id": self.run_id})
        params = [Param("sweep.metric", plan.metric), Param("sweep.asha", str(plan.asha)),
                  Param("sweep.trials", str(len(plan.trials))), Param("sweep.random", str(plan.random)),
                  Param("sweep.seed", str(plan.seed))]
        params += [Param(_key(f"sweep.grid.{k}"), _param_text(v)) for k, v in plan.grid.items()]
        params += [Param(_key(f"sweep.range.{k}"), _param_text(v)) for k, v in plan.ranges.items()]
        client.log_batch(self.run_id, params=params)

    def finish(self, plan: SweepPlan, path: Path, rows: list[dict], best: dict | None) -> None:
        if self.client is None or self.run_id is None:
            return

        def call():
            from mlflow.entities import Metric, RunTag

            import mlflow

            mlflow.set_tracking_uri(self.uri)
            tags = [RunTag("lrjob.best_trial", best["trial"] if best else "-")]
            metrics = [Metric(f"best_{plan.metric}", float(best["best"]), 0, 0)] if best else []
            self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
            for name in TABLE_FILES:
                if (path / name).is_file():
                    self.client.log_artifact(self.run_id, str(path / name))
            ended = all(r["status"] in FINAL for r in rows)
            self.client.set_terminated(self.run_id, status="FINISHED" if ended else "KILLED")

        self._guard("finish", call)

    def _guard(self, what: str, call) -> None:
        from .tracking import redact

        try:
            call()
        except Exception as e:  # noqa: BLE001 - tracking never fails a sweep
            self.client = None
            reason = redact(" ".join(f"{type(e).__name__}: {e}".split()))[:240]
            print(f"lrjob: warning: MLflow tracking of the sweep at {redact(self.uri)} is off ({what} failed: "
                  f"{reason}); the sweep goes on", file=sys.stderr)
