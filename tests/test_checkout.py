"""The tests exercise this checkout, in-process and in every subprocess they start."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_subprocesses_import_this_checkout(tmp_path):
    code = "import launcher, lr_core; print(launcher.__file__); print(lr_core.__file__)"
    # from another working directory, as Ray workers and horovodrun ranks start
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split():
        assert Path(line).resolve().is_relative_to(ROOT), line


def test_the_lrjob_script_runs_this_checkout(tmp_path, lrjob_bin):
    env = dict(os.environ, PYTHONVERBOSE="1")
    r = subprocess.run([lrjob_bin, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    # compiled from the source, or read from its cached bytecode (launcher/__pycache__/cli.*.pyc)
    loaded = re.findall(r"code object from '?(/\S*?/launcher/(?:cli\.py|__pycache__/cli\.[\w-]+\.pyc))'?$",
                        r.stderr, re.M)
    assert loaded, r.stderr[-2000:]
    assert all(Path(p).resolve().is_relative_to(ROOT) for p in loaded), loaded
