"""lr_core: models, losses, metrics, data and the single-process reference trainer of
lrjob. Imports numpy and mxnet only: nothing of Ray or Horovod.

The names below load their module on first use, so that reading and checking data
(``lr_core.data``, ``lr_core.tables``, ``lr_core.prepared``) does not import MXNet.
"""
from __future__ import annotations

import importlib

_WHERE = {"Communicator": "comm", "SingleProcessCommunicator": "comm", "LoopConfig": "config",
          "Dataset": "data", "load_dataset": "data", "DataError": "errors", "LrjobError": "errors",
          "SpecError": "errors", "TrainingError": "errors", "TrainingLoop": "loop", "fit": "loop"}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'lr_core' has no attribute {name!r}")
