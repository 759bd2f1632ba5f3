"""``lrjob doctor``: checks the stack and prints the fix for each problem."""
from __future__ import annotations

import sys

__all__ = ["run_doctor"]


def _check(name, fn):
    try:
        ok, detail, fix = fn()
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        ok, detail, fix = False, f"{type(e).__name__}: {e}", "reinstall with `make install`"
    print(f"[{'ok' if ok else 'FAIL':>4}] {name}: {detail}" + ("" if ok else f"\n       fix: {fix}"), flush=True)
    return ok


def run_doctor(gpu: bool = False) -> int:
    """Check numpy, MXNet, Horovod, Ray and the MNIST cache (with ``gpu``, also the GPU and NCCL)
    and print each result with its fix; returns 0 when every check passes, else 1."""
    def numpy_check():
        import numpy as np
        ok = np.__version__.startswith("1.23.")
        return ok, f"numpy {np.__version__}", "pip install numpy==1.23.5 (mxnet 1.9.1 breaks on numpy >= 1.24)"

    def mxnet_check():
        import mxnet as mx
        x = mx.nd.ones((2, 2))
        return float((x * 2).sum().asscalar()) == 8.0, f"mxnet {mx.__version__} computes", "pip install mxnet==1.9.1"

    def horovod_check():
        import horovod
        from horovod.common.util import extension_available, gloo_built
        mx_ok, gloo = extension_available("mxnet"), gloo_built()
        return (mx_ok and gloo, f"horovod {horovod.__version__}: MXNet {'yes' if mx_ok else 'no'}, "
                f"Gloo {'yes' if gloo else 'no'}",
                "rebuild: HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 pip install --no-build-isolation "
                "--no-cache-dir horovod==0.28.1 (see .ci/install)")

    def ray_check():
        import ray
        from horovod.ray import RayExecutor  # noqa: F401
        return ray.__version__ == "2.60.0", f"ray {ray.__version__}, horovod.ray imports", \
            "pip install 'ray[default,tune]==2.60.0'"

    def data_check():
        from lr_core.data import data_home, verify_idx_dir
        d = data_home() / "mnist"
        problems = verify_idx_dir(d)
        return not problems, (f"MNIST cache {d} verified" if not problems else problems[0]), \
            "python -m launcher.datacache ensure"

    checks = [("numpy", numpy_check), ("mxnet", mxnet_check), ("horovod", horovod_check),
              ("ray", ray_check), ("data", data_check)]
    if gpu:
        def gpu_check():
            import mxnet as mx
            n = mx.context.num_gpus()
            return n > 0, f"MXNet sees {n} GPU(s)", "pip install mxnet-cu112 (CUDA 11.2) instead of mxnet"

        def nccl_check():
            from horovod.common.util import nccl_built
            return bool(nccl_built()), f"Horovod NCCL: {'yes' if nccl_built() else 'no'}", \
                "rebuild Horovod with HOROVOD_GPU_OPERATIONS=NCCL"
        checks += [("gpu", gpu_check), ("nccl", nccl_check)]
    results = [_check(n, f) for n, f in checks]
    if all(results):  # a success goes to stdout, with the checks; a failure's count to stderr
        print("all checks passed", flush=True)
    else:
        print(f"{results.count(False)} check(s) failed", file=sys.stderr)
    return 0 if all(results) else 1
