"""Silences known, harmless noise; real warnings stay visible.

horovod.ray 0.28.1 reads ``ray.get_runtime_context().node_id``, which Ray 2.60 marks
deprecated and warns about in every worker. The filter is narrow: that category, from
horovod.ray's modules only. It runs in the driver and, through Ray's
``worker_process_setup_hook``, in each worker process before horovod.ray's code.

Never silenced: Ray's warning that a cluster runs without token authentication. Only its
announcement that token authentication is on (printed at every local start) is dropped.
"""
from __future__ import annotations

import logging
import os
import warnings

__all__ = ["silence_known_noise", "silence_tune_noise", "AUTH_LOGGER"]

AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropAuthEnabledNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled ..." notice; every other record passes,
    "Token authentication is disabled ..." above all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


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
    # Ray 2.60 announces token authentication at every local start: not actionable here. The
    # filter drops that notice only: the warning that authentication is off always shows.
    auth = logging.getLogger(AUTH_LOGGER)
    if not any(isinstance(f, _DropAuthEnabledNotice) for f in auth.filters):
        auth.addFilter(_DropAuthEnabledNotice())
    for name in ("horovod.ray.runner", "horovod.ray.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def silence_tune_noise() -> None:
    """Ray Tune in ``lrjob sweep`` (launcher/sweep.py): its progress tables and status lines
    (the sweep prints its own table) and its notices about its own deprecated APIs. Its
    warnings and errors stay visible."""
    silence_known_noise()
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard/CSV/JSON loggers
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.(tune|train|air)(\..*)?$")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # What the sweep's table reports itself (a failed trial, with its one-line error; trials
    # that did not complete; how to resume), and Tune's result files that lrjob does not write.
    for name in _TUNE_REPORTED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTuneReported) for f in logger.filters):
            logger.addFilter(_DropTuneReported())


_TUNE_REPORTED = {
    "ray.tune.execution.tune_controller": ("Trial task failed for trial",),
    # after Ctrl-C, Tune's hint to resume with Tuner.restore: the sweep names lrjob sweep --resume
    "ray.tune.tune": ("Trials did not complete", "Experiment has been interrupted", "Training has been interrupted"),
    "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics for",),
}


class _DropTuneReported(logging.Filter):
    """Drops Tune's records of what the sweep's own table reports; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TUNE_REPORTED.get(record.name, ()))
