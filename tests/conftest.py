"""Shared fixtures. One real local Ray per test session (with 2 logical GPUs declared,
so GPU scheduling can be tested without hardware); stopped at the end.

The tests run the checkout they live in: this folder's ``lr_core`` and ``launcher`` come
first on ``sys.path`` and on ``PYTHONPATH``, which every subprocess inherits (``lrjob``,
``horovodrun`` ranks, Ray's workers), whatever checkout the environment's editable
install points at."""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A fault armed in the caller's shell must not leak into every run of the suite.
os.environ.pop("LRJOB_FAULT", None)

# A HOME of the session's own: every local Ray writes ~/.ray/auth_token (Ray 2.60 turns
# token auth on by default), and nothing a test starts may leave files in the user's
# HOME. And a data home of its own: the tests prepare hundreds of data sets from their
# temporary files, which stayed in the user's cache (900 folders after a few days). The
# installed MNIST files are still the ones the tests read (linked in; preparing them takes
# 0.3 s). The user's data home is found once, before the first change: a test process that
# this one starts (pytest-xdist's workers) inherits it.
from lr_core.data import data_home  # noqa: E402

_USER_DATA = Path(os.environ.setdefault("LRJOB_TESTS_USER_DATA_HOME", str(data_home())))
_SESSION_HOME = tempfile.mkdtemp(prefix="lrjob-tests-home-")
os.environ["HOME"] = _SESSION_HOME
os.environ["MPLCONFIGDIR"] = os.path.join(_SESSION_HOME, "matplotlib")
_SESSION_DATA = Path(_SESSION_HOME) / "data"
_SESSION_DATA.mkdir()
for _name in ("mnist", "fashion-mnist"):  # the downloaded files, read where make install put them
    if (_USER_DATA / _name).is_dir():
        (_SESSION_DATA / _name).symlink_to(_USER_DATA / _name, target_is_directory=True)
os.environ["LRJOB_DATA_HOME"] = str(_SESSION_DATA)
# Removed when this process exits (not per pytest session: a runner may start several
# sessions in one process; forked children leave it to their parent).
_OWNER = os.getpid()
atexit.register(lambda: os.getpid() == _OWNER and shutil.rmtree(_SESSION_HOME, ignore_errors=True))


def pytest_sessionstart(session):
    import launcher
    import lr_core

    for mod in (launcher, lr_core):
        where = Path(mod.__file__).resolve()
        if ROOT not in where.parents:
            raise pytest.UsageError(f"{mod.__name__} was imported from {where}, not from the checkout under "
                                    f"test {ROOT}; run the tests from this checkout's environment")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from launcher.backends.cluster import ray_init_kwargs
    from launcher.quiet import silence_known_noise

    silence_known_noise()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, **ray_init_kwargs())
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def lrjob_bin():
    return str(Path(sys.executable).parent / "lrjob")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3-compatible HTTP server (moto) on loopback with the bucket ``data``, stopped
    afterwards: ``(server, fs, query)``, ``query`` the URI options that reach it."""
    from moto.server import ThreadedMotoServer
    import pyarrow.fs as pfs

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    import urllib.request

    # moto keeps its buckets in this process across servers: start each test with none
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")).close()
    for k, v in {"AWS_ACCESS_KEY_ID": "lrjob", "AWS_SECRET_ACCESS_KEY": "lrjob",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    try:
        fs = pfs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                              allow_bucket_creation=True)
        fs.create_dir("data")
        yield server, fs, f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server):
    """``s3_server`` as ``(fs, query)``."""
    yield s3_server[1], s3_server[2]


@pytest.fixture(autouse=True)
def _pictures_only_where_asked(request, monkeypatch):
    """Runs in tests draw no pictures (LRJOB_PICTURES=0; report.html is still written, naming
    them skipped): matplotlib costs about 0.4 s a picture, over a second a run. Tests marked
    ``pictures`` draw them; subprocesses inherit the setting."""
    if request.node.get_closest_marker("pictures") is None:
        monkeypatch.setenv("LRJOB_PICTURES", "0")
    else:
        monkeypatch.delenv("LRJOB_PICTURES", raising=False)



@pytest.fixture
def sigint_default():
    """SIGINT raising KeyboardInterrupt, as Python's own handler does in a terminal, for a test of
    what a Ctrl-C does: a process started in the background of a non-interactive shell (nohup,
    ``cmd &``) inherits SIGINT ignored, and so do its pytest and pytest-xdist processes. The
    handler is a function of its own (yielded), so a test can check that it was put back."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    yield handler
    signal.signal(signal.SIGINT, old)
