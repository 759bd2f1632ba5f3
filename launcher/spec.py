"""Job specs: YAML in, a validated, frozen ``JobSpec`` out.

Declarative: ``SCHEMA`` lists every section, field, type, default and range; unknown
keys are errors that suggest the near match. ``--set section.field=value`` overrides
use the same checks. Relative paths in a spec file resolve against the file's folder;
paths given on the command line against the working directory.

    lrjob validate jobs/binary_synthetic.yaml --set train.epochs=3
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from lr_core.config import INITS, MODEL_KINDS, OPTIMIZERS, LoopConfig
from lr_core.data import LABEL_COLUMN, SOURCES, VAL_FRACTION, check_source_spec
from lr_core.errors import SpecError, clip, shown, suggest
from lr_core.files import TooLarge, read_at_most

from .stopping import METRICS, MODES, metric_mode

__all__ = ["JobSpec", "ModelSpec", "DataSpec", "TrainSpec", "ResourcesSpec", "CheckpointSpec", "FailureSpec",
           "TrackingSpec", "load_spec", "read_spec_yaml", "spec_from_dict", "apply_overrides", "SCHEMA",
           "SAFE_RESUME_CHANGES", "absolute_tracking"]

@dataclass(frozen=True)
class _Field:
    kind: str                      # int | float | str | bool | ints | strs | map | path
    default: Any
    check: Callable[[Any], bool] | None = None
    expect: str = ""
    nullable: bool = False
    choices: tuple | None = None
    most: int | float | None = None   # the upper bound (of each element, for ints)


# Upper bounds (docs/design.md#job-spec): far above any real job, low enough that a typo
# (an extra zero or six) is an error naming the field, not hours of work or a failed
# allocation later.
MAX_NAME = 128               # characters of the job's name
MAX_CLASSES = 100_000
MAX_WIDTH = 65_536           # a hidden layer's width
MAX_LAYERS = 32
MAX_EPOCHS = 1_000_000
MAX_BATCH = 1 << 24          # the global batch, in rows
MAX_WORKERS = 4096
MAX_CPUS = 1024              # per worker
MAX_GPUS = 64                # per worker
MAX_LABEL_TEXT = 256         # characters of a data.label_map key
# train.learning_rate, weight_decay and init_sigma: MXNet's optimizers take the rate and the
# decay as float32 (a value past 3.4e38 is its internal error), and a rate of 10 already
# diverges on standardized features: 1,000 is a typo (an exponent's sign lost), not a choice.
MAX_RATE = 1000
MAX_CLASS_WEIGHT = 1_000_000  # a train.class_weight weight: float32 losses times it stay finite


def _ge(lo, expect: str | None = None):
    return (lambda v: v >= lo), expect or f">= {lo}"


def _gt(lo):
    return (lambda v: v > lo), f"> {lo}"


def _rate_factor():
    # A step schedule lowers the rate (README, docs/design.md): a factor above 1 raises it
    # without bound, past what float32 holds, into MXNet's own error after a few epochs.
    return (lambda v: 0 < v <= 1), "> 0 and at most 1 (it lowers the rate)"


def _between(lo, hi, expect: str):
    return (lambda v: lo < v < hi), expect


def _f(kind: str, default: Any, rule: tuple[Callable[[Any], bool], str] | None = None, **flags):
    """A spec field: its type, its one default and its rule ``(check, expected)``, on the
    section that owns it; ``flags``: ``nullable``, ``choices``, ``most`` (see ``_Field``)."""
    check, expect = rule or (None, "")
    rule = _Field(kind, default, check, expect, **flags)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"rule": rule})
    return field(default=tuple(default) if isinstance(default, list) else default, metadata={"rule": rule})


# data fields holding a local path (resolved against the spec's folder) or a URI.
PATH_FIELDS = ("path", "val_path", "cache")

# Loop fields take their defaults from lr_core's LoopConfig: each default lives in one place.
_LOOP = LoopConfig()


@dataclass(frozen=True)
class ModelSpec:
    """``model``: the model kind, the number of classes and the hidden layer widths."""

    kind: str = _f("str", _LOOP.kind, choices=MODEL_KINDS)
    # null: 2 for binary, the source's count for mnist/fashion-mnist/digits; softmax on any
    # other source must name it (_cross_checks): a guess from the labels could miss a class.
    num_classes: int | None = _f("int", None, _ge(2), nullable=True, most=MAX_CLASSES)
    hidden: tuple[int, ...] = _f("ints", list(_LOOP.hidden), most=MAX_WIDTH)

    @property
    def outputs_classes(self) -> int:
        """The number of classes the model tells apart (2 for binary)."""
        return 2 if self.kind == "binary" else self.num_classes


@dataclass(frozen=True)
class DataSpec:
    """``data``: the source, its files and options, the validation split and the label column and map."""

    source: str = _f("str", "synthetic-binary", choices=SOURCES)
    path: str | None = _f("path", None, nullable=True)
    val_path: str | None = _f("path", None, nullable=True)
    val_fraction: float = _f("float", VAL_FRACTION, _between(0, 1, "between 0 and 1 (exclusive)"))
    label_column: str = _f("str", LABEL_COLUMN)
    label_map: dict | None = _f("map", None, nullable=True)
    options: dict = _f("map", {})
    # Table sources: the feature columns (a list, or one list column); default all but the label.
    features: tuple[str, ...] | None = _f("strs", None, nullable=True)
    # Where prepared datasets live (docs/design.md#prepared-data); default <data home>/prepared.
    cache: str | None = _f("path", None, nullable=True)
    # Standardize the features with the training rows' mean and std (docs/design.md#standardization);
    # null: the source decides (on for csv, npz, parquet, npy; off for images and synthetic data).
    standardize: bool | None = _f("bool", None, nullable=True)

    @property
    def standardizes(self) -> bool:
        """Whether this job's features are standardized: ``standardize``, else the source's default."""
        from lr_core.data import REGISTRY

        return bool(REGISTRY[self.source].standardize if self.standardize is None else self.standardize)


@dataclass(frozen=True)
class TrainSpec:
    """``train``: epochs, global batch size, optimizer, initialisation, seed and decision threshold."""

    epochs: int = _f("int", _LOOP.epochs, _ge(1), most=MAX_EPOCHS)
    batch_size: int = _f("int", _LOOP.batch_size, _ge(1), most=MAX_BATCH)
    learning_rate: float = _f("float", _LOOP.learning_rate, _gt(0), most=MAX_RATE)
    optimizer: str = _f("str", _LOOP.optimizer, choices=OPTIMIZERS)
    weight_decay: float = _f("float", _LOOP.weight_decay, _ge(0), most=MAX_RATE)
    momentum: float = _f("float", _LOOP.momentum, ((lambda v: 0 <= v < 1), "in [0, 1)"))
    init: str = _f("str", _LOOP.init, choices=INITS)
    init_sigma: float = _f("float", _LOOP.init_sigma, _gt(0), most=MAX_RATE)
    seed: int = _f("int", _LOOP.seed, _ge(0))
    threshold: float = _f("float", _LOOP.threshold, _between(0, 1, "between 0 and 1 (exclusive)"))
    # Per-class weights on the training loss: `balanced` (n / (classes * count)) or {label: weight}
    # (docs/design.md#class-weights); null: every row weighs 1.
    class_weight: str | dict | None = _f("weights", None, nullable=True)
    # {metric, patience, min_delta, mode}: stop after `patience` epochs without improvement
    # (docs/design.md#early-stopping-and-the-best-model); checked and resolved in _resolve_training.
    early_stopping: dict | None = _f("map", None, nullable=True)
    # {kind: step, step_epochs, factor} or {kind: cosine, min_lr, epochs}, both with warmup_epochs:
    # the rate as a function of the global step (docs/design.md#learning-rate-schedules).
    lr_schedule: dict | None = _f("map", None, nullable=True)


@dataclass(frozen=True)
class ResourcesSpec:
    """``resources``: the number of Horovod workers (0: in-process) and the CPUs and GPUs of each."""

    workers: int = _f("int", 2, _ge(0, ">= 0 (0: in-process reference run)"), most=MAX_WORKERS)
    cpus_per_worker: float = _f("float", 1, _gt(0), most=MAX_CPUS)
    # Whole GPUs: each worker drives gpu(local_rank), one device of its own.
    gpus_per_worker: float = _f("float", 0, ((lambda v: v >= 0 and float(v).is_integer()), "a whole number >= 0"),
                                most=MAX_GPUS)


@dataclass(frozen=True)
class CheckpointSpec:
    """``checkpoint``: save every ``every_epochs`` epochs and after the last (and every
    ``every_steps`` steps inside an epoch); keep the newest ``keep``."""

    every_epochs: int = _f("int", 1, _ge(1))
    keep: int = _f("int", 3, _ge(1))
    # Also every this many steps inside an epoch (0: only at epoch ends): for epochs of hours.
    every_steps: int = _f("int", 0, _ge(0, ">= 0 (0: only at epoch ends)"))
    # A metric (true: train.early_stopping's): the best epoch's checkpoint is never pruned and
    # is the exported model (docs/design.md#early-stopping-and-the-best-model); null: the last epoch.
    keep_best: str | bool | None = _f("best", None, nullable=True)


@dataclass(frozen=True)
class FailureSpec:
    """``failure``: how many worker failures a run survives by restarting, the epoch timeout, and
    the fewest workers a restart may continue on."""

    max_failures: int = _f("int", 0, _ge(0))
    # 0 = automatic: 10x the slowest finished epoch, at least 300 s (Driver.epoch_timeout).
    epoch_timeout_s: float = _f("float", 0, _ge(0, ">= 0 (0: automatic)"))
    # Elastic restarts (docs/design.md#failures-and-restarts): after a loss, restart on as many
    # workers as the cluster can place, down to this many; null: resources.workers (no elasticity).
    min_workers: int | None = _f("int", None, _ge(1, ">= 1 (null: resources.workers)"), nullable=True,
                                 most=MAX_WORKERS)


@dataclass(frozen=True)
class TrackingSpec:
    """``tracking``: where a run is logged besides its run directory (docs/design.md#tracking);
    off by default. ``mlflow: {uri, experiment}`` logs it to MLflow: ``uri`` defaults to
    ``file:./mlruns`` (relative to the working directory), ``experiment`` to the job's name."""

    mlflow: dict | None = _f("map", None, nullable=True)


# The keys of tracking.mlflow (checked in _cross_checks) and the tracking URI when none is given.
MLFLOW_KEYS = ("uri", "experiment")
MLFLOW_DEFAULT_URI = "file:./mlruns"

SECTIONS: dict[str, type] = {"model": ModelSpec, "data": DataSpec, "train": TrainSpec,
                             "resources": ResourcesSpec, "checkpoint": CheckpointSpec, "failure": FailureSpec,
                             "tracking": TrackingSpec}
# Every section's fields and rules, read off the section classes above.
SCHEMA: dict[str, dict[str, _Field]] = {
    name: {f.name: f.metadata["rule"] for f in fields(cls)} for name, cls in SECTIONS.items()}
TOP_LEVEL = ("name", *SCHEMA)
# Fields that may differ between a checkpoint's spec and the spec of a resume.
SAFE_RESUME_CHANGES = {"train.epochs", "resources.workers", "resources.cpus_per_worker",
                       "resources.gpus_per_worker", "checkpoint.every_epochs", "checkpoint.keep",
                       "checkpoint.every_steps", "data.cache",
                       "failure.max_failures", "failure.epoch_timeout_s", "failure.min_workers", "name",
                       # where a run is logged does not change what it trains ("tracking": specs
                       # written before the section existed)
                       "tracking", "tracking.mlflow"}


# Fields added after runs were checkpointed: when null they leave the spec digest unchanged.
# (data.standardize: resolved, and left out when off, see JobSpec._compared.)
_ADDED_FIELDS = ("train.class_weight", "train.early_stopping", "train.lr_schedule", "checkpoint.keep_best",
                 "failure.min_workers")


def _section(cls: type, values: dict):
    """A frozen section from validated values (lists become tuples, mappings copies)."""
    def frozen(v):
        if isinstance(v, list):
            return tuple(v)
        return copy.deepcopy(v) if isinstance(v, dict) else v
    return cls(**{k: frozen(v) for k, v in values.items()})


def _coerce(where: str, f: _Field, value: Any) -> Any:
    if value is None:
        if f.nullable:
            return None
        raise SpecError(f"{where}: a value is required (got null)")
    k = f.kind
    if k == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise SpecError(f"{where} must be an integer, got {shown(value)}")
    elif k == "float":
        if isinstance(value, str):
            # PyYAML reads 1e-3 (no dot) as a string: accept what is plainly a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where} must be a number, got {shown(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer past float's range (1e308)
            raise SpecError(f"{where} must be a finite number, got {shown(value)}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SpecError(f"{where} must be a finite number, got {shown(value)}")
    elif k in ("str", "path"):
        if not isinstance(value, str) or not value.strip():
            raise SpecError(f"{where} must be a non-empty string, got {shown(value)}")
    elif k == "strs":
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, (list, tuple)) or not value
                or any(not isinstance(v, str) or not v.strip() for v in value)):
            raise SpecError(f"{where} must be a column name or a list of column names, got {shown(value)}")
        value = [str(v) for v in value]
    elif k == "ints":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                       for v in value):
            raise SpecError(f"{where} must be a list of layer widths >= 1 (e.g. [10, 10]), got {shown(value)}")
        value = [int(v) for v in value]
    elif k == "bool":
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be true or false, got {shown(value)}")
    elif k == "weights":
        if value != "balanced" and not isinstance(value, dict):
            raise SpecError(f"{where} must be balanced or a mapping {{label: weight}}, got {shown(value)}")
        if isinstance(value, dict):
            for label, w in value.items():
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not (0 < w < float("inf")) \
                        or (isinstance(w, int) and w.bit_length() > 1000):  # past float's range
                    raise SpecError(f"{where}: the weight of {shown(label)} must be a positive number, got {shown(w)}")
                if w > MAX_CLASS_WEIGHT:
                    raise SpecError(f"{where}: the weight of {shown(label)} must be at most {MAX_CLASS_WEIGHT:,} "
                                    f"(the upper bound), got {shown(w)}; check for a typo")
            value = {k2: float(w) for k2, w in value.items()}
    elif k == "best":
        if not isinstance(value, (bool, str)) or (isinstance(value, str) and not value.strip()):
            raise SpecError(f"{where} must be a metric name, true (train.early_stopping's metric) or false, "
                            f"got {shown(value)}")
    elif k == "map":
        if not isinstance(value, dict):
            raise SpecError(f"{where} must be a mapping (key: value), got {shown(value)}")
        value = dict(value)
    if f.choices and value not in f.choices:
        near = difflib.get_close_matches(str(value), list(f.choices), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SpecError(f"{where} must be one of {', '.join(f.choices)}, got {shown(value)}{hint}")
    if f.check and not f.check(value):
        raise SpecError(f"{where} must be {f.expect}, got {shown(value)}")
    if f.most is not None:
        if k == "ints" and len(value) > MAX_LAYERS:
            raise SpecError(f"{where}: at most {MAX_LAYERS} hidden layers, got {len(value)}; give fewer widths")
        for v in (value if k == "ints" else [value]):
            if v > f.most:
                raise SpecError(f"{where} must be at most {f.most:,} (the upper bound), got {shown(v)}; "
                                f"check for a typo")
    return value


@dataclass(frozen=True)
class JobSpec:
    """A validated job: typed, frozen sections (``spec.train.epochs``), built once from
    ``raw``, the resolved mapping that ``job.yaml`` stores."""

    raw: dict
    source_file: str | None = None
    model: ModelSpec = field(init=False, repr=False, compare=False)
    data: DataSpec = field(init=False, repr=False, compare=False)
    train: TrainSpec = field(init=False, repr=False, compare=False)
    resources: ResourcesSpec = field(init=False, repr=False, compare=False)
    checkpoint: CheckpointSpec = field(init=False, repr=False, compare=False)
    failure: FailureSpec = field(init=False, repr=False, compare=False)
    tracking: TrackingSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            object.__setattr__(self, name, _section(cls, self.raw[name]))

    @property
    def name(self) -> str:
        """The job's name: the spec's ``name``, by default the spec file's stem."""
        return self.raw["name"]

    @property
    def workers(self) -> int:
        """``resources.workers``: 0 for the in-process run, else the number of Horovod workers."""
        return int(self.resources.workers)

    @property
    def min_workers(self) -> int:
        """The fewest workers a restart may continue on: ``failure.min_workers``, by default
        ``resources.workers`` (no elasticity)."""
        m = self.failure.min_workers
        return self.workers if m is None else min(int(m), self.workers)

    def to_dict(self) -> dict:
        """A deep copy of the resolved mapping (``raw``)."""
        return copy.deepcopy(self.raw)

    def to_yaml(self) -> str:
        """The resolved spec as YAML, sections in order: what ``job.yaml`` holds."""
        return yaml.safe_dump(self.raw, sort_keys=False, default_flow_style=None)

    def with_overrides(self, overrides: list[str]) -> "JobSpec":
        """This spec with ``--set``-style overrides applied and validated again."""
        return spec_from_dict(apply_overrides(self.to_dict(), overrides), source_file=self.source_file)

    def resolved(self) -> "JobSpec":
        """This spec with ``data.standardize`` resolved to a boolean (the source's default for
        null) and a relative tracking store made absolute (``absolute_tracking``): what
        ``job.yaml`` stores, so that a resume reads and logs where the run did."""
        raw = self.to_dict()
        raw["data"]["standardize"] = self.data.standardizes
        absolute_tracking(raw)
        return JobSpec(raw, source_file=self.source_file)

    def _compared(self) -> dict:
        """``raw`` as a digest and ``diff`` see it: ``data.standardize`` resolved, and left out
        when off, as in the specs written before the field existed
        (docs/design.md#standardization)."""
        d = self.to_dict()
        d["data"]["standardize"] = self.data.standardizes
        if not d["data"]["standardize"]:
            d["data"].pop("standardize")
        return d

    def digest(self, ignore: set[str] = frozenset()) -> str:
        """A short hash of the spec without the ``ignore``d dotted fields."""
        d = self._compared()
        for dotted in _ADDED_FIELDS:  # unset, they hash as the specs written before them did
            section, _, key = dotted.partition(".")
            if d.get(section, {}).get(key, 0) is None:
                d[section].pop(key)
        for dotted in ignore:
            section, _, key = dotted.partition(".")
            if key:
                d.get(section, {}).pop(key, None)
            else:
                d.pop(section, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def loop_config(self) -> LoopConfig:
        """The training loop's configuration (lr_core) for this job."""
        m, t = self.model, self.train
        return LoopConfig(kind=m.kind, num_classes=m.outputs_classes, hidden=m.hidden, epochs=t.epochs,
                          class_weight=self.class_weights(),
                          batch_size=t.batch_size, learning_rate=t.learning_rate, optimizer=t.optimizer,
                          weight_decay=t.weight_decay, momentum=t.momentum, init=t.init,
                          init_sigma=t.init_sigma, seed=t.seed, threshold=t.threshold,
                          lr_schedule=t.lr_schedule)

    def class_weights(self) -> str | tuple[float, ...] | None:
        """``train.class_weight`` by class index: ``balanced``, one weight per class, or None."""
        return _class_weights(self.train.class_weight, self.model.outputs_classes, self.data.label_map)

    def data_kwargs(self) -> dict:
        """Keyword arguments of ``lr_core.data.load_dataset`` for this job."""
        d = self.data
        return dict(kind=self.model.kind, num_classes=self.model.outputs_classes, seed=self.train.seed,
                    path=d.path, val_path=d.val_path, val_fraction=d.val_fraction,
                    label_column=d.label_column, label_map=d.label_map, options=d.options,
                    features=list(d.features) if d.features else None, standardize=d.standardizes)

    def load_data(self):
        """The job's dataset in memory (``lr_core.data.Dataset``), checked; bad data raises
        here. Training reads :meth:`prepared_data` instead."""
        from lr_core.data import load_dataset

        return load_dataset(self.data.source, **self.data_kwargs())

    def prepare_data(self, progress=None, log=None):
        """The job's prepared dataset directory (docs/design.md#prepared-data): reused when
        intact, else converted from the source, checked block by block."""
        from lr_core.data import make_request
        from lr_core.prepared import prepare

        return prepare(make_request(self.data.source, **self.data_kwargs()), self.data.cache, progress, log)

    def prepared_data(self, progress=None, log=None, checksums: bool = True):
        """The job's dataset as memory maps of its prepared files (nothing loaded).
        ``checksums=False`` checks an existing folder's sizes only (a rank after rank 0)."""
        from lr_core.data import make_request
        from lr_core.prepared import prepared_dataset

        return prepared_dataset(make_request(self.data.source, **self.data_kwargs()), self.data.cache, progress,
                                log, checksums)

    def diff(self, other: "JobSpec") -> list[str]:
        """Dotted names of the fields that differ."""
        out = []
        mine, theirs = self._compared(), other._compared()
        for section in TOP_LEVEL:
            a, b = mine.get(section), theirs.get(section)
            if isinstance(a, dict) and isinstance(b, dict):
                out += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            elif a != b:
                out.append(section)
        return out


def spec_from_dict(doc: Any, base_dir: str | os.PathLike | None = None, where: str = "job spec",
                   source_file: str | None = None) -> JobSpec:
    """Validate a parsed spec mapping; fill defaults; resolve paths against ``base_dir``."""
    if not isinstance(doc, dict):
        raise SpecError(f"{where}: expected a mapping of sections ({', '.join(TOP_LEVEL)}), "
                        f"got {type(doc).__name__}")
    for key in doc:
        # sweep: is read by lrjob sweep (launcher/sweep.py); the rest of the file is the job
        if key not in TOP_LEVEL and key != "sweep":
            raise SpecError(f"{where}: unknown key {shown(key)}{suggest(str(key), TOP_LEVEL)}")
    raw: dict[str, Any] = {}
    name = doc.get("name") or (Path(source_file).stem if source_file else "job")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SpecError(f"name must be letters, digits, '-', '_' or '.', got {shown(name)}")
    if len(name) > MAX_NAME:  # it names the run directory (a file name holds 255 bytes) and k8s objects
        raise SpecError(f"name must be at most {MAX_NAME} characters (the upper bound), got {len(name):,}; "
                        f"shorten it, e.g. --set name={name[:20]}")
    raw["name"] = name
    for section, fields in SCHEMA.items():
        given = doc.get(section) or {}
        if not isinstance(given, dict):
            raise SpecError(f"{section}: expected a mapping of fields, got {shown(given)}")
        for key in given:
            if key not in fields:
                raise SpecError(f"{where}: unknown key {shown(f'{section}.{key}')}{suggest(str(key), fields)}")
        out = {}
        for key, f in fields.items():
            value = given[key] if key in given else copy.deepcopy(f.default)
            out[key] = _coerce(f"{section}.{key}", f, value)
        raw[section] = out
    for key in PATH_FIELDS:
        p = raw["data"][key]
        if p is not None and "://" not in p:  # a URI stays as given
            p = os.path.expanduser(p)
            if base_dir is not None and not os.path.isabs(p):
                p = os.path.normpath(os.path.join(base_dir, p))
            raw["data"][key] = p
    _cross_checks(raw)
    _resolve_training(raw)
    _resolve_tracking(raw)
    spec = JobSpec(raw=raw, source_file=source_file)
    # The resolved spec is written as job.yaml and read back (resume, compare, runs) under
    # the same bound as a spec file: a spec that validates must read back.
    size = len(spec.to_yaml().encode())
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{where}: the resolved spec takes {size:,} bytes as YAML, more than a job spec may hold "
                        f"({MAX_SPEC_BYTES:,}), so its job.yaml could not be read back; shorten its longest "
                        f"field (a data.label_map, data.features or a path)")
    return spec


def _cross_checks(raw: dict) -> None:
    d, m = raw["data"], raw["model"]
    _check_min_workers(raw["failure"], raw["resources"]["workers"])
    _resolve_classes(m, d["source"])
    if d["cache"] and "://" in d["cache"]:
        raise SpecError(f"data.cache: {d['cache']}: must be a directory every node sees (a local or shared "
                        f"file system), not a URI; the source (data.path) may be a URI")
    # Options, data.path, model.kind and class count: the rules each source declares.
    check_source_spec(d["source"], kind=m["kind"], num_classes=m["num_classes"], path=d["path"],
                      label_map=d["label_map"], options=d["options"])
    if d["label_map"]:
        for k, v in d["label_map"].items():
            if isinstance(k, bool):
                raise SpecError(f"data.label_map: YAML reads the key {str(k).lower()!r}/yes/no as a boolean; "
                                f"quote it, e.g. {{'yes': 1, 'no': 0}}")
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpecError(f"data.label_map: {shown(k)} maps to {shown(v)}; targets must be integer classes")
            if not 0 <= v < max(m["num_classes"], 2):
                raise SpecError(f"data.label_map: {shown(k)} maps to {shown(v)}; targets must be classes from 0 to "
                                f"{max(m['num_classes'], 2) - 1} (model.num_classes)")
            too_long = k.bit_length() > 3 * MAX_LABEL_TEXT if isinstance(k, int) else len(str(k)) > MAX_LABEL_TEXT
            if too_long:  # (an integer's bits, not its text: Python refuses to write 4,300 digits)
                raise SpecError(f"data.label_map: the key {shown(k)} is longer than a label may be "
                                f"({MAX_LABEL_TEXT} characters); labels are short text or numbers")
    _class_weights(raw["train"]["class_weight"], 2 if m["kind"] == "binary" else m["num_classes"], d["label_map"])


def _check_min_workers(failure: dict, workers: int) -> None:
    """``failure.min_workers`` against ``resources.workers`` (ignored by the in-process run,
    which has no workers to lose: ``lrjob parity`` runs the same spec with ``--workers 0``)."""
    least = failure["min_workers"]
    if least is None or workers == 0:
        return
    if least > workers:
        raise SpecError(f"failure.min_workers must be at most resources.workers ({workers}), got {least}; "
                        f"lower failure.min_workers or raise --workers")
    if least < workers and failure["max_failures"] == 0:
        raise SpecError(f"failure.min_workers: {least} (below resources.workers, {workers}) lets a restart continue "
                        f"on fewer workers, but failure.max_failures is 0 (no restart); set failure.max_failures "
                        f"to at least 1, or remove failure.min_workers")


def _class_weights(cw, k: int, label_map: dict | None) -> str | tuple[float, ...] | None:
    """``train.class_weight`` by class index (1 for a class not named). A key names a class
    as the labels give it: through ``data.label_map`` when the map has it (compared as
    text), else the class number."""
    if cw is None or cw == "balanced":
        return cw
    lmap = {str(a): b for a, b in (label_map or {}).items()}
    out = [1.0] * k
    for label, w in cw.items():
        if isinstance(label, bool):
            raise SpecError(f"train.class_weight: YAML reads the key {str(label).lower()!r}/yes/no as a boolean; "
                            f"quote it, e.g. {{'yes': 5}}")
        c = lmap.get(str(label))
        if c is None and str(label).lstrip("-").isdigit():
            c = int(str(label))
        if c is None or not 0 <= c < k:
            known = sorted(lmap) if lmap else [str(i) for i in range(k)]
            raise SpecError(f"train.class_weight: {shown(label)} is not a class (classes: {clip(', '.join(known))}); "
                            f"name a label of the data")
        out[c] = float(w)
    return tuple(out)


def _resolve_classes(m: dict, source: str) -> None:
    """``model.num_classes`` when left out: 2 for binary, the source's own count for softmax
    on mnist/fashion-mnist/digits; softmax on other data must name it."""
    from lr_core.data import REGISTRY

    if m["num_classes"] is not None:
        return
    if m["kind"] == "binary":
        m["num_classes"] = 2
    elif source in REGISTRY and REGISTRY[source].classes is not None:
        m["num_classes"] = REGISTRY[source].classes
    else:
        raise SpecError("model.num_classes: required with model.kind: softmax on this source (the labels are "
                        "read block by block, and a class missing from the training rows would go unnoticed); "
                        "set it to the number of classes, e.g. model: {kind: softmax, num_classes: 3}")


# The keys of train.early_stopping and train.lr_schedule (per kind): each with its rule and
# default (None and not nullable: required), checked by _coerce like a section's fields.
_EARLY_STOPPING = {"metric": _Field("str", "val_loss"), "patience": _Field("int", 5, *_ge(1)),
                   "min_delta": _Field("float", 0.0, *_ge(0)), "mode": _Field("str", None, choices=MODES, nullable=True)}  # null: inferred
_WARMUP = _Field("int", 0, *_ge(0))
_LR_SCHEDULES = {
    "step": {"step_epochs": _Field("int", None, *_ge(1)), "factor": _Field("float", None, *_rate_factor()),
             "warmup_epochs": _WARMUP},
    "cosine": {"min_lr": _Field("float", 0.0, *_ge(0)), "epochs": _Field("int", None, *_ge(1)),
               "warmup_epochs": _WARMUP},
}


def _sub_fields(where: str, given: dict, rules: dict[str, _Field], fill: dict | None = None) -> dict:
    """``given`` checked against ``rules`` (an unknown key suggests the near one), defaults
    (or ``fill``'s values) filled in for keys left out or null; a required key that is
    missing names an example."""
    for key in given:
        if key not in rules:
            raise SpecError(f"{where}: unknown key {shown(key)}{suggest(str(key), rules)}")
    out = {}
    for key, f in rules.items():
        value = given.get(key)
        if value is None:  # left out or null: the default
            value = (fill or {}).get(key, f.default)
        if value is None and not f.nullable:
            raise SpecError(f"{where}.{key}: required; e.g. {where.rpartition('.')[2]}: {{{key}: {_example(f)}}}")
        out[key] = _coerce(f"{where}.{key}", f, value)
    return out


def _resolve_training(raw: dict) -> None:
    """Check ``train.early_stopping``, ``train.lr_schedule`` and ``checkpoint.keep_best`` and
    write them resolved (every key, the mode inferred, keep_best's metric named): job.yaml shows
    what the run does (docs/design.md#early-stopping-and-the-best-model)."""
    t, kind = raw["train"], raw["model"]["kind"]
    known = METRICS[kind]

    def metric(where: str, name) -> str:
        if name not in known:
            raise SpecError(f"{where} must be a metric of a {kind} model ({', '.join(known)}), got "
                            f"{shown(name)}{suggest(str(name), known)}")
        return name

    es = t["early_stopping"]
    if es is not None:
        es = _sub_fields("train.early_stopping", es, _EARLY_STOPPING)
        es["metric"] = metric("train.early_stopping.metric", es["metric"])
        # Every metric improves one way (a loss falls, the others rise): a mode against it would
        # take the worst epoch as the best and stop a run that is improving.
        natural = metric_mode(es["metric"])
        if es["mode"] not in (None, natural):
            better = "lower" if natural == "min" else "higher"
            raise SpecError(f"train.early_stopping.mode must be {natural} for {es['metric']} ({better} is better), "
                            f"got {es['mode']}; leave mode out and it follows the metric")
        es["mode"] = natural
        t["early_stopping"] = es
    sched = t["lr_schedule"]
    if sched is not None:
        k = sched.get("kind")
        if k not in _LR_SCHEDULES:
            raise SpecError(f"train.lr_schedule.kind must be one of {', '.join(_LR_SCHEDULES)}, got {shown(k)}"
                            f"{suggest(str(k), _LR_SCHEDULES)}")
        rest = {key: v for key, v in sched.items() if key != "kind"}
        fill = {"epochs": t["epochs"]} if k == "cosine" else None  # the cosine spans train.epochs
        sched = {"kind": k, **_sub_fields("train.lr_schedule", rest, _LR_SCHEDULES[k], fill)}
        if k == "cosine" and sched["min_lr"] > t["learning_rate"]:
            raise SpecError(f"train.lr_schedule.min_lr must be at most train.learning_rate "
                            f"({t['learning_rate']:g}), got {shown(sched['min_lr'])}")
        if k == "cosine" and sched["warmup_epochs"] >= sched["epochs"]:
            raise SpecError(f"train.lr_schedule.warmup_epochs must be less than the cosine's epochs "
                            f"({sched['epochs']}), got {sched['warmup_epochs']}")
        t["lr_schedule"] = sched
    c = raw["checkpoint"]
    keep = c["keep_best"]
    if keep is True:
        if es is None:
            raise SpecError("checkpoint.keep_best: true means train.early_stopping's metric, and "
                            "train.early_stopping is not set; name a metric, e.g. checkpoint.keep_best: val_loss")
        keep = es["metric"]
    c["keep_best"] = metric("checkpoint.keep_best", keep) if keep else None


def _resolve_tracking(raw: dict) -> None:
    """Check ``tracking.mlflow``'s keys and fill in its defaults (the resolved spec shows them)."""
    mlflow = raw["tracking"]["mlflow"]
    if mlflow is None:
        return
    for key in mlflow:
        if key not in MLFLOW_KEYS:
            raise SpecError(f"tracking.mlflow: unknown key {key!r}{suggest(str(key), MLFLOW_KEYS)}")
    defaults = {"uri": MLFLOW_DEFAULT_URI, "experiment": raw["name"]}
    for key in MLFLOW_KEYS:
        value = mlflow.get(key)
        if value is None:
            value = defaults[key]
        if not isinstance(value, str) or not value.strip():
            raise SpecError(f"tracking.mlflow.{key} must be a non-empty string, got {value!r}")
        mlflow[key] = value.strip()


def absolute_tracking(raw: dict) -> None:
    """Make ``raw``'s ``tracking.mlflow.uri`` absolute against the working directory when it names
    a local store by a relative path (``file:./mlruns``, ``file:mlruns``, ``sqlite:///mlflow.db``, a
    plain path such as ``mlruns``, which MLflow reads as a file store).
    Done once, where the URI is stored (a run's ``job.yaml``, a sweep's ``plan.json``): a resume
    from another folder logs to the same store (docs/design.md#tracking)."""
    mlflow = (raw.get("tracking") or {}).get("mlflow")
    uri = mlflow.get("uri") if isinstance(mlflow, dict) else None
    if not isinstance(uri, str):
        return
    if uri.startswith("file:") and not uri.startswith("file:/"):
        mlflow["uri"] = Path(os.path.expanduser(uri[5:])).resolve().as_uri()
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        mlflow["uri"] = "sqlite:///" + str(Path(os.path.expanduser(uri[10:])).resolve())
    elif uri and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri):  # a plain path: MLflow's file store
        mlflow["uri"] = Path(os.path.expanduser(uri)).resolve().as_uri()


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None, *, run_file: bool = False) -> JobSpec:
    """Read, override and validate a job spec file. ``run_file``: the file is a run
    directory's ``job.yaml``; one without ``data.standardize`` was written before the field
    existed, by a run that did not standardize: it reads as ``false``."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: job spec not found; pass a YAML file such as jobs/binary_synthetic.yaml")
    if path.is_dir():
        raise SpecError(f"{path}: is a directory; pass a job spec YAML file")
    doc = read_spec_yaml(path)
    if doc is None:
        raise SpecError(f"{path}: empty job spec; see jobs/ for examples")
    if run_file and isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc["data"].setdefault("standardize", False)
    if isinstance(doc, dict):
        doc = apply_overrides(doc, overrides or [])
    return spec_from_dict(doc, base_dir=path.parent.resolve(), where=str(path), source_file=str(path))


# Bounds of a spec file (docs/design.md#job-spec): a job spec is a few hundred bytes; these
# stop a hostile file (a YAML alias bomb, a huge or deeply nested file) before it costs
# memory or time, including inside an error message that would quote it.
MAX_SPEC_BYTES = 1 << 20     # the file
MAX_YAML_NODES = 1_000_000   # values, counted with every alias expanded
MAX_YAML_DEPTH = 50          # nesting of mappings and lists
MAX_YAML_TEXT = 1 << 20      # characters of keys and values, counted with every alias expanded


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that a spec refuses: a duplicate key, too many values, too deep."""


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (YAML's last-one-wins silently drops
    a block) and documents larger than ``MAX_YAML_NODES`` values or ``MAX_YAML_TEXT``
    characters once aliases are expanded."""

    def construct_document(self, node):
        _count_nodes(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor reports it
                if first is not key_node:
                    raise _Refused(
                        None, None, f"duplicate key {shown(key)} (first at line {first.start_mark.line + 1}); "
                                    f"keep one: YAML would silently drop the first", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads 59:59:59 as a base-60 integer (and 1:30.5 as a float), at a cost that
# grows with the square of the digits: a spec has no use for them, so they stay text
# (``train.epochs: 59:59`` is then "must be an integer, got '59:59'"). The same patterns
# as PyYAML's, less the base-60 branch, in the same order of resolvers.
_NO_BASE_60 = {
    "tag:yaml.org,2002:int": re.compile(r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""", re.X),
    "tag:yaml.org,2002:float": re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""", re.X),
}
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, _NO_BASE_60.get(tag, regexp)) for tag, regexp in resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _count_nodes(root) -> None:
    """Refuse a document whose alias-expanded size (values, and characters of text) or
    depth passes the bounds above. Each node's expanded size is computed once (an alias is
    a second reference to the same node), so this costs the size of the file, not of the
    expansion: an alias to a long string counts its length again, as the loaded value would."""
    sizes: dict[int, tuple[int, int]] = {}

    def size(node, depth: int) -> tuple[int, int]:
        if depth > MAX_YAML_DEPTH:
            raise _Refused(problem=f"nested deeper than {MAX_YAML_DEPTH} levels")
        key = id(node)
        if key in sizes:
            if sizes[key][0] < 0:
                raise _Refused(problem="an alias refers to a node that contains it (a recursive structure)")
            return sizes[key]
        sizes[key] = (-1, 0)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total, text = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
        for child in children:
            values, chars = size(child, depth + 1)
            total, text = total + values, text + chars
            if total > MAX_YAML_NODES:
                raise _Refused(problem=f"more than {MAX_YAML_NODES:,} values once its aliases (*name) are "
                                       f"expanded; a job spec needs a few dozen")
            if text > MAX_YAML_TEXT:
                raise _Refused(problem=f"more than {MAX_YAML_TEXT:,} characters of text once its aliases "
                                       f"(*name) are expanded; a job spec needs a few hundred")
        sizes[key] = (total, text)
        return sizes[key]

    size(root, 0)


def _parse_yaml(text: str, where: str) -> Any:
    """``text`` parsed by :class:`_SpecLoader`; any failure is a one-line ``SpecError``
    naming ``where`` (and the line, when the parser knows it)."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise SpecError(f"{where}: malformed YAML{at}: {problem[:200]}; fix the file") from None
    except (ValueError, RecursionError, MemoryError) as e:  # an integer of 5,000 digits; nesting
        reason = "nested too deeply" if isinstance(e, RecursionError) else (str(e).splitlines() or ["too large"])[0]
        raise SpecError(f"{where}: malformed YAML: {reason[:200]}; fix the file") from None


def read_spec_yaml(path: Path) -> Any:
    """The parsed YAML of a spec file; unreadable, malformed, larger than ``MAX_SPEC_BYTES``
    or than ``MAX_YAML_NODES`` values (aliases expanded), or with a duplicate key is a
    one-line ``SpecError``."""
    try:  # at most the bound and a byte is read, whatever the file is (/dev/zero, a FIFO)
        text = read_at_most(path, MAX_SPEC_BYTES).decode("utf-8")
    except TooLarge as e:
        held = f"{e.size:,} bytes" if e.size is not None else f"more than {MAX_SPEC_BYTES:,} bytes"
        raise SpecError(f"{path}: {held}, more than a job spec may hold ({MAX_SPEC_BYTES:,}); "
                        f"pass the job's YAML file, not a data file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read the job spec ({e}); pass a readable UTF-8 YAML file") from e
    return _parse_yaml(text, str(path))


def _example(f: _Field) -> str:
    """A value of ``f``'s kind for an error message's example."""
    if f.choices:
        return str(f.choices[0])
    return {"int": "3", "float": "0.5", "ints": "[16]", "map": "{}", "strs": "[x0, x1]",
            "path": "data/train.csv"}.get(f.kind, "x")


def _glued_key(value) -> str | None:
    """The first key of a mapping in ``value`` written as ``name:value`` without a space, which YAML
    reads as a key with no value (``{kind:cosine}`` is ``{"kind:cosine": None}``); None if none."""
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None and isinstance(k, str) and ":" in k and not k.startswith(":") and "://" not in k:
                return k
            inner = _glued_key(v)
            if inner is not None:
                return inner
    elif isinstance(value, list):
        for v in value:
            inner = _glued_key(v)
            if inner is not None:
                return inner
    return None


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """``section.field=value`` (value parsed as YAML). Relative paths resolve against the cwd."""
    doc = copy.deepcopy(doc)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {shown(item)}: expected section.field=value, e.g. --set train.epochs=3")
        key, _, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if parts[0] == "name" and len(parts) == 1:
            if not text.strip():
                raise SpecError("--set name=: empty value; give the job a name of letters, digits, '-', '_' "
                                "or '.', e.g. --set name=my-job")
            doc["name"] = text.strip()  # a name is text as written (--set name=null is the name 'null')
            continue
        if parts[0] not in SCHEMA:
            raise SpecError(f"--set {clip(key)}: unknown section {shown(parts[0])}{suggest(parts[0], SCHEMA)}")
        if len(parts) < 2:
            raise SpecError(f"--set {clip(key)}: name a field, e.g. --set {parts[0]}."
                            f"{next(iter(SCHEMA[parts[0]]))}=...")
        if parts[1] not in SCHEMA[parts[0]]:
            raise SpecError(f"--set {clip(key)}: unknown field {shown(parts[1])}{suggest(parts[1], SCHEMA[parts[0]])}")
        if not text.strip():
            # No field takes an empty string; a nullable one is cleared with null, not with nothing.
            f = SCHEMA[parts[0]][parts[1]]
            clear = f"; --set {parts[0]}.{parts[1]}=null restores the default (null)" if f.nullable else ""
            raise SpecError(f"--set {clip(key)}=: empty value; give one, e.g. --set {clip(key)}="
                            f"{_example(f)}{clear}")
        try:
            value = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
        except _Refused as e:
            raise SpecError(f"--set {clip(key)}: {e.problem}") from None
        except yaml.YAMLError:
            value = text  # not YAML (a path such as C:\\x): the text as written
        except (ValueError, RecursionError):
            raise SpecError(f"--set {clip(key)}: the value is not a usable number or is nested too deeply") \
                from None
        glued = _glued_key(value)
        if glued is not None:  # {kind:cosine} reads as the key 'kind:cosine' with no value
            name, _, rest = glued.partition(":")
            raise SpecError(f"--set {clip(key)}={clip(text.strip())}: YAML needs a space after ':' in a mapping, "
                            f"e.g. {{{clip(name, 30)}: {clip(rest, 30)}}}")
        if parts[0] == "data" and parts[1] in PATH_FIELDS and isinstance(value, str) and "://" not in value:
            if not value.strip():  # '' would resolve to the current directory
                raise SpecError(f"--set {clip(key)}: an empty path; give a file or folder, e.g. --set {clip(key)}="
                                f"{_example(SCHEMA[parts[0]][parts[1]])}, or null for none")
            value = os.path.abspath(os.path.expanduser(value))
        section = doc.setdefault(parts[0], {}) or {}
        doc[parts[0]] = section
        if len(parts) == 2:
            section[parts[1]] = value
        else:  # data.options.n_train=... (options and label_map are the mapping fields)
            if SCHEMA[parts[0]][parts[1]].kind != "map":
                raise SpecError(f"--set {clip(key)}: {parts[0]}.{parts[1]} is not a mapping; "
                                f"use --set {parts[0]}.{parts[1]}=VALUE")
            target = section.setdefault(parts[1], {}) or {}
            section[parts[1]] = target
            for p in parts[2:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = value
    return doc
