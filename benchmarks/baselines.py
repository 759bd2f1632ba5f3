"""Baselines that lrjob's data path is measured against (benchmarks/data_scale.py).

``_read_csv`` is, verbatim, the CSV reader lrjob used before pyarrow (commit 7812090,
``lr_core/data.py``): ``csv.reader`` into a list of every row, then a Python loop
converting each cell into a float64 matrix. Only the imports are adapted.

    python -m benchmarks.baselines data.csv      # read one file; prints rows, features, seconds as JSON
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from lr_core.errors import DataError

__all__ = ["_read_csv", "_is_number"]


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _read_csv(path: Path, label_column: str | None, require_labels: bool):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not a cell
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text CSV file ({e.reason}); save it as UTF-8 CSV") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from e
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from e
    if not rows:
        raise DataError(f"{path}: empty file; the dataset needs a header and at least one row")
    header = None
    # A header row has no number in it; a data row with a bad cell is reported as such.
    if not any(_is_number(c) for c in rows[0]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: no data rows after the header; the dataset is empty")
    width = len(header) if header else len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            line = i + (2 if header else 1)
            raise DataError(f"{path}: line {line} has {len(r)} columns, expected {width}; fix the row")
    label_idx = None
    if label_column is not None and header is not None and label_column in header:
        label_idx = header.index(label_column)
    elif require_labels:
        if header is None:
            raise DataError(f"{path}: no header row, so label column {label_column!r} cannot be found; "
                            f"add a header naming the columns")
        raise DataError(f"{path}: no column {label_column!r} (columns: {', '.join(header[:8])}"
                        f"{', ...' if len(header) > 8 else ''}); set data.label_column")
    feat_idx = [j for j in range(width) if j != label_idx]
    columns = [header[j] for j in feat_idx] if header else [f"column {j + 1}" for j in feat_idx]
    x = np.empty((len(rows), len(feat_idx)), dtype=np.float64)
    for i, r in enumerate(rows):
        for k, j in enumerate(feat_idx):
            cell = r[j].strip()
            try:
                x[i, k] = float(cell)
            except ValueError:
                line = i + (2 if header else 1)
                raise DataError(f"{path}: line {line}, column {columns[k]!r}: {cell!r} is not a number; "
                                f"features must be numeric") from None
    y = None
    if label_idx is not None:
        raw = [r[label_idx].strip() for r in rows]
        y = np.array([float(v) if _is_number(v) else v for v in raw], dtype=object)
        if all(isinstance(v, float) for v in y):
            y = y.astype(np.float64)
    return x, y, columns


def main(argv=None) -> int:
    """Read one CSV with the old reader; print one JSON line: rows, features, seconds."""
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.perf_counter()
    x, y, columns = _read_csv(Path(argv[0]), "label", True)
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": int(x.shape[0]), "features": int(x.shape[1]), "dtype": str(x.dtype),
                      "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
