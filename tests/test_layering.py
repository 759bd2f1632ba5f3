"""Dependencies point one way: lr_core loads neither Ray nor Horovod (nor launcher)."""
import subprocess
import sys


def test_lr_core_imports_no_ray_or_horovod():
    code = ("import sys, lr_core, lr_core.loop, lr_core.data, lr_core.metrics, lr_core.export; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'horovod', 'launcher')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
