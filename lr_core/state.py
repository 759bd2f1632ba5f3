"""Optimizer state as plain arrays and JSON (no pickles), for checkpoints and resume.

Gluon's ``Trainer.save_states`` pickles the optimizer; a checkpoint read back from a
user-supplied directory must not be unpickled, so the state is taken apart here: each
state NDArray by parameter index, and the update counters that Adam's bias correction
and learning-rate schedules read.
"""
from __future__ import annotations

import numpy as np
import mxnet as mx

__all__ = ["get_optimizer_state", "set_optimizer_state"]


def get_optimizer_state(trainer) -> tuple[dict[str, np.ndarray], dict]:
    updater = trainer._updaters[0]
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, str] = {}
    for index, st in updater.states.items():
        if st is None:
            layout[str(index)] = "none"
        elif isinstance(st, (tuple, list)):
            layout[str(index)] = f"tuple{len(st)}"
            for j, a in enumerate(st):
                arrays[f"{index}.{j}"] = a.asnumpy()
        else:
            layout[str(index)] = "array"
            arrays[str(index)] = st.asnumpy()
    opt = trainer._optimizer
    # MXNet keeps one update-count dict per device id and switches to the weight's
    # device before each update: merge them (one device per worker here).
    counts: dict[int, int] = {}
    for per_device in opt._all_index_update_counts.values():
        for k, v in per_device.items():
            counts[int(k)] = max(counts.get(int(k), 0), int(v))
    meta = {"num_update": int(opt.num_update),
            "index_update_count": {str(k): v for k, v in counts.items()},
            "layout": layout}
    return arrays, meta


def set_optimizer_state(trainer, arrays: dict[str, np.ndarray], meta: dict, ctx) -> None:
    updater = trainer._updaters[0]
    for key, kind in meta.get("layout", {}).items():
        index = int(key)
        if kind == "none":
            st = None
        elif kind == "array":
            st = mx.nd.array(arrays[key], ctx=ctx, dtype=arrays[key].dtype)
        else:
            st = tuple(mx.nd.array(arrays[f"{key}.{j}"], ctx=ctx, dtype=arrays[f"{key}.{j}"].dtype)
                       for j in range(int(kind[5:])))
        updater.states[index] = st
        updater.states_synced[index] = True
    opt = trainer._optimizer
    opt.num_update = int(meta.get("num_update", 0))
    counts = {int(k): int(v) for k, v in meta.get("index_update_count", {}).items()}
    # Into the dict of the device the weights live on (Adam's bias correction reads it).
    for device_id in set(opt._all_index_update_counts) | {ctx.device_id}:
        opt._all_index_update_counts[device_id] = dict(counts)
    opt._index_update_count = opt._all_index_update_counts[ctx.device_id]
