"""launcher/quiet.py silences known noise, never Ray's warning that a cluster runs without
token authentication. Fast: Ray's own warning functions, no cluster."""
import logging

from ray._private.authentication import authentication_token_setup as auth_setup

from launcher.quiet import AUTH_LOGGER, silence_known_noise


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_auth_disabled_warning_is_never_muted():
    assert auth_setup.logger.name == AUTH_LOGGER  # the logger quiet.py configures is Ray's
    silence_known_noise()
    silence_known_noise()  # twice: one filter, no harm
    records = _Records()
    auth_setup.logger.addHandler(records)
    try:
        auth_setup._warn_token_auth_enabled()   # the notice at every local start: dropped
        auth_setup._warn_token_auth_disabled()  # the warning: kept
    finally:
        auth_setup.logger.removeHandler(records)
    assert len(records.messages) == 1, records.messages
    assert records.messages[0].startswith("Token authentication is disabled for this Ray cluster")
    assert auth_setup.logger.isEnabledFor(logging.WARNING)


def test_tunes_resume_hint_after_ctrl_c_is_dropped_and_its_stop_notice_kept(monkeypatch):
    """After Ctrl-C a sweep prints its own resume command (lrjob sweep --resume); Tune's hint to
    call Tuner.restore would mislead. Tune's notice that the stop signal arrived stays."""
    import warnings

    from ray.tune import tune as tune_module

    from launcher.quiet import silence_tune_noise

    for k in ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "RAY_AIR_NEW_OUTPUT", "RAY_DEDUP_LOGS"):
        monkeypatch.setenv(k, "1")  # silence_tune_noise sets these when unset; restored afterwards
    with warnings.catch_warnings():
        silence_tune_noise()
    logger = tune_module.logger
    assert logger.name == "ray.tune.tune"  # the logger quiet.py filters is Tune's
    records = _Records()
    logger.addHandler(records)
    try:
        logger.warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.")
        logger.warning('Experiment has been interrupted, but the most recent state was saved.\n'
                       'Resume experiment with: Tuner.restore(path="/x/tune/attempt-1", trainable=...)')
    finally:
        logger.removeHandler(records)
    assert records.messages == ["Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run."]
