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
