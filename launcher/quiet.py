"""Silences known, harmless noise; real warnings stay visible.

horovod.ray 0.28.1 reads ``ray.get_runtime_context().node_id``, which Ray 2.60 marks
deprecated and warns about in every worker. The filter is narrow: that category, from
horovod.ray's modules only. It runs in the driver and, through Ray's
``worker_process_setup_hook``, in each worker process before horovod.ray's code.
"""
from __future__ import annotations

import logging
import os
import warnings

__all__ = ["silence_known_noise"]


def silence_known_noise() -> None:
    """Filter the known harmless warnings and quiet Ray's and horovod.ray's chatty loggers (see the
    module docstring)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"horovod\.ray(\..*)?$")
    warnings.filterwarnings("ignore", message=r".*Use get_node_id\(\) instead", category=DeprecationWarning)
    # horovod.ray's PGStrategy passes placement_group=/placement_group_bundle_index=.
    warnings.filterwarnings("ignore", message=r"placement_group(_bundle_index)? parameter is deprecated",
                            category=DeprecationWarning)
    # MXNet's Gluon warns when a hybridized block is re-traced for a new batch shape.
    warnings.filterwarnings("ignore", message=r".*Gradient of Parameter .* has not been updated", category=UserWarning)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray 2.60 announces token authentication at every local start: not actionable here.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    for name in ("horovod.ray.runner", "horovod.ray.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
