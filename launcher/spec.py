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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from lr_core.config import INITS, MODEL_KINDS, OPTIMIZERS, LoopConfig
from lr_core.data import SOURCES, source_options
from lr_core.errors import SpecError

__all__ = ["JobSpec", "load_spec", "spec_from_dict", "apply_overrides", "SCHEMA", "SAFE_RESUME_CHANGES"]

@dataclass(frozen=True)
class _Field:
    kind: str                      # int | float | str | bool | ints | map | path
    default: Any
    check: Callable[[Any], bool] | None = None
    expect: str = ""
    nullable: bool = False
    choices: tuple | None = None


def _ge(lo):
    return lambda v: v >= lo


def _gt(lo):
    return lambda v: v > lo


SCHEMA: dict[str, dict[str, _Field]] = {
    "model": {
        "kind": _Field("str", "binary", choices=MODEL_KINDS),
        "num_classes": _Field("int", 2, _ge(2), ">= 2"),
        "hidden": _Field("ints", []),
    },
    "data": {
        "source": _Field("str", "synthetic-binary", choices=SOURCES),
        "path": _Field("path", None, nullable=True),
        "val_path": _Field("path", None, nullable=True),
        "val_fraction": _Field("float", 0.1, lambda v: 0 < v < 1, "between 0 and 1 (exclusive)"),
        "label_column": _Field("str", "label"),
        "label_map": _Field("map", None, nullable=True),
        "options": _Field("map", {}),
    },
    "train": {
        "epochs": _Field("int", 10, _ge(1), ">= 1"),
        "batch_size": _Field("int", 64, _ge(1), ">= 1"),
        "learning_rate": _Field("float", 0.1, _gt(0), "> 0"),
        "optimizer": _Field("str", "sgd", choices=OPTIMIZERS),
        "weight_decay": _Field("float", 0.0, _ge(0), ">= 0"),
        "momentum": _Field("float", 0.0, lambda v: 0 <= v < 1, "in [0, 1)"),
        "init": _Field("str", "xavier", choices=INITS),
        "init_sigma": _Field("float", 0.01, _gt(0), "> 0"),
        "seed": _Field("int", 12345, _ge(0), ">= 0"),
        "threshold": _Field("float", 0.5, lambda v: 0 < v < 1, "between 0 and 1 (exclusive)"),
    },
    "resources": {
        "workers": _Field("int", 2, _ge(0), ">= 0 (0: in-process reference run)"),
        "cpus_per_worker": _Field("float", 1, _gt(0), "> 0"),
        # Whole GPUs: each worker drives gpu(local_rank), one device of its own.
        "gpus_per_worker": _Field("float", 0, lambda v: v >= 0 and float(v).is_integer(), "a whole number >= 0"),
    },
    "checkpoint": {
        "every_epochs": _Field("int", 1, _ge(1), ">= 1"),
        "keep": _Field("int", 3, _ge(1), ">= 1"),
    },
    "failure": {
        "max_failures": _Field("int", 0, _ge(0), ">= 0"),
        # 0 = automatic: 10x the slowest finished epoch, at least 300 s.
        "epoch_timeout_s": _Field("float", 0, _ge(0), ">= 0 (0: automatic)"),
    },
}
TOP_LEVEL = ("name", *SCHEMA)
# Fields that may differ between a checkpoint's spec and the spec of a resume.
SAFE_RESUME_CHANGES = {"train.epochs", "resources.workers", "resources.cpus_per_worker",
                       "resources.gpus_per_worker", "checkpoint.every_epochs", "checkpoint.keep",
                       "failure.max_failures", "failure.epoch_timeout_s", "name"}


def _suggest(word: str, options) -> str:
    near = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else f"; allowed: {', '.join(options)}"


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
                raise SpecError(f"{where} must be an integer, got {value!r}")
    elif k == "float":
        if isinstance(value, str):
            # PyYAML reads 1e-3 (no dot) as a string: accept what is plainly a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise SpecError(f"{where} must be a finite number, got {value!r}")
    elif k in ("str", "path"):
        if not isinstance(value, str) or not value.strip():
            raise SpecError(f"{where} must be a non-empty string, got {value!r}")
    elif k == "ints":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                       for v in value):
            raise SpecError(f"{where} must be a list of layer widths >= 1 (e.g. [10, 10]), got {value!r}")
        value = [int(v) for v in value]
    elif k == "map":
        if not isinstance(value, dict):
            raise SpecError(f"{where} must be a mapping (key: value), got {value!r}")
        value = dict(value)
    if f.choices and value not in f.choices:
        near = difflib.get_close_matches(str(value), list(f.choices), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SpecError(f"{where} must be one of {', '.join(f.choices)}, got {value!r}{hint}")
    if f.check and not f.check(value):
        raise SpecError(f"{where} must be {f.expect}, got {value!r}")
    return value


@dataclass(frozen=True)
class JobSpec:
    """A validated job. ``raw`` is the resolved mapping that ``job.yaml`` stores."""

    raw: dict
    source_file: str | None = None

    def __getitem__(self, dotted: str) -> Any:
        section, _, key = dotted.partition(".")
        return self.raw[section][key] if key else self.raw[section]

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def workers(self) -> int:
        return int(self.raw["resources"]["workers"])

    def to_dict(self) -> dict:
        return copy.deepcopy(self.raw)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False, default_flow_style=None)

    def digest(self, ignore: set[str] = frozenset()) -> str:
        d = self.to_dict()
        for dotted in ignore:
            section, _, key = dotted.partition(".")
            if key:
                d.get(section, {}).pop(key, None)
            else:
                d.pop(section, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def loop_config(self) -> LoopConfig:
        m, t = self.raw["model"], self.raw["train"]
        return LoopConfig(kind=m["kind"], num_classes=2 if m["kind"] == "binary" else m["num_classes"],
                          hidden=tuple(m["hidden"]), epochs=t["epochs"], batch_size=t["batch_size"],
                          learning_rate=t["learning_rate"], optimizer=t["optimizer"],
                          weight_decay=t["weight_decay"], momentum=t["momentum"], init=t["init"],
                          init_sigma=t["init_sigma"], seed=t["seed"], threshold=t["threshold"])

    def data_kwargs(self) -> dict:
        d, m = self.raw["data"], self.raw["model"]
        return dict(kind=m["kind"], num_classes=2 if m["kind"] == "binary" else m["num_classes"],
                    seed=self.raw["train"]["seed"], path=d["path"], val_path=d["val_path"],
                    val_fraction=d["val_fraction"], label_column=d["label_column"],
                    label_map=d["label_map"], options=d["options"])

    def diff(self, other: "JobSpec") -> list[str]:
        """Dotted names of the fields that differ."""
        out = []
        for section in TOP_LEVEL:
            a, b = self.raw.get(section), other.raw.get(section)
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
        if key not in TOP_LEVEL:
            raise SpecError(f"{where}: unknown key {key!r}{_suggest(str(key), TOP_LEVEL)}")
    raw: dict[str, Any] = {}
    name = doc.get("name") or (Path(source_file).stem if source_file else "job")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SpecError(f"name must be letters, digits, '-', '_' or '.', got {name!r}")
    raw["name"] = name
    for section, fields in SCHEMA.items():
        given = doc.get(section) or {}
        if not isinstance(given, dict):
            raise SpecError(f"{section}: expected a mapping of fields, got {given!r}")
        for key in given:
            if key not in fields:
                raise SpecError(f"{where}: unknown key '{section}.{key}'{_suggest(str(key), fields)}")
        out = {}
        for key, f in fields.items():
            value = given[key] if key in given else copy.deepcopy(f.default)
            out[key] = _coerce(f"{section}.{key}", f, value)
        raw[section] = out
    for key in ("path", "val_path"):
        p = raw["data"][key]
        if p is not None:
            p = os.path.expanduser(p)
            if base_dir is not None and not os.path.isabs(p):
                p = os.path.normpath(os.path.join(base_dir, p))
            raw["data"][key] = p
    _cross_checks(raw)
    return JobSpec(raw=raw, source_file=source_file)


def _cross_checks(raw: dict) -> None:
    d, m = raw["data"], raw["model"]
    allowed = source_options(d["source"])
    for key in d["options"]:
        if key not in allowed:
            hint = _suggest(str(key), sorted(allowed)) if allowed else f"; source {d['source']} takes no options"
            raise SpecError(f"data.options: unknown option {key!r} for source {d['source']}{hint}")
        v = d["options"][key]
        if key in ("n_train", "n_val", "n_features"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"data.options.{key} must be an integer >= 1, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or (key != "boundary" and v <= 0):
            raise SpecError(f"data.options.{key} must be a {'number' if key == 'boundary' else 'positive number'}, "
                            f"got {v!r}")
    if d["source"] in ("csv", "npz") and not d["path"]:
        raise SpecError(f"data.path: source {d['source']} needs a file; set data.path")
    if d["source"] == "synthetic-binary" and m["kind"] != "binary" or \
            d["source"] == "synthetic-blobs" and m["kind"] != "binary":
        raise SpecError(f"model.kind: source {d['source']} has binary labels; use model.kind: binary")
    if d["source"] in ("mnist", "fashion-mnist", "digits") and m["kind"] == "softmax" and m["num_classes"] < 10:
        raise SpecError(f"model.num_classes: {d['source']} has 10 classes, got {m['num_classes']}; set 10")
    if d["source"] in ("mnist", "fashion-mnist", "digits") and m["kind"] == "binary" and not d["label_map"]:
        raise SpecError(f"model.kind: {d['source']} has 10 classes; use kind: softmax, or map them to 0/1 "
                        f"with data.label_map")
    if d["label_map"]:
        for k, v in d["label_map"].items():
            if isinstance(k, bool):
                raise SpecError(f"data.label_map: YAML reads the key {str(k).lower()!r}/yes/no as a boolean; "
                                f"quote it, e.g. {{'yes': 1, 'no': 0}}")
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpecError(f"data.label_map: {k!r} maps to {v!r}; targets must be integer classes")


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a job spec file."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: job spec not found; pass a YAML file such as jobs/binary_synthetic.yaml")
    if path.is_dir():
        raise SpecError(f"{path}: is a directory; pass a job spec YAML file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read the job spec ({e})") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{path}: malformed YAML{at}: {problem}; fix the syntax") from e
    if doc is None:
        raise SpecError(f"{path}: empty job spec; see jobs/ for examples")
    if isinstance(doc, dict):
        doc = apply_overrides(doc, overrides or [])
    return spec_from_dict(doc, base_dir=path.parent.resolve(), where=str(path), source_file=str(path))


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """``section.field=value`` (value parsed as YAML). Relative paths resolve against the cwd."""
    doc = copy.deepcopy(doc)
    for item in overrides:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected section.field=value, e.g. --set train.epochs=3")
        key, _, text = item.partition("=")
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        if parts[0] == "name" and len(parts) == 1:
            doc["name"] = str(value)
            continue
        if parts[0] not in SCHEMA:
            raise SpecError(f"--set {key}: unknown section {parts[0]!r}{_suggest(parts[0], SCHEMA)}")
        if len(parts) < 2:
            raise SpecError(f"--set {key}: name a field, e.g. --set {parts[0]}."
                            f"{next(iter(SCHEMA[parts[0]]))}=...")
        if parts[1] not in SCHEMA[parts[0]]:
            raise SpecError(f"--set {key}: unknown field {parts[1]!r}{_suggest(parts[1], SCHEMA[parts[0]])}")
        if parts[0] == "data" and parts[1] in ("path", "val_path") and isinstance(value, str):
            value = os.path.abspath(os.path.expanduser(value))
        section = doc.setdefault(parts[0], {}) or {}
        doc[parts[0]] = section
        if len(parts) == 2:
            section[parts[1]] = value
        else:  # data.options.n_train=... (options and label_map are the mapping fields)
            if SCHEMA[parts[0]][parts[1]].kind != "map":
                raise SpecError(f"--set {key}: {parts[0]}.{parts[1]} is not a mapping; "
                                f"use --set {parts[0]}.{parts[1]}=VALUE")
            target = section.setdefault(parts[1], {}) or {}
            section[parts[1]] = target
            for p in parts[2:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = value
    return doc
