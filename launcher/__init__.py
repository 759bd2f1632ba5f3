"""lrjob's launcher: job specs, the CLI, the in-process and Ray + Horovod runners."""

# pyproject.toml's version (tests/test_cli.py checks that they agree). Read from here, not from
# the installed package's metadata: that lookup costs about 25 ms, which every command paid.
__version__ = "0.1.0"
