"""The bare floor of the scaling map: MNIST training written directly against
horovod.ray's ``RayExecutor``, plain Gluon and Horovod's ``DistributedTrainer``, hybridized,
without lrjob. Prints one JSON object: per configuration, rank 0's seconds of each epoch.

    python -m benchmarks.bare_hvd_ray --data DIR --workers 2 --epochs 3 --config 0:64 --config 256,256:512

``DIR`` holds the four MNIST IDX files (``benchmarks/scaling.py`` writes a subset). A
``--config HIDDEN:BATCH`` is the hidden widths (``0`` for none) and the global batch. An epoch
is timed as lrjob times one (docs/design.md#run-directory, ``train_seconds``): from the first
step queued to the host holding every step's result.
"""
from __future__ import annotations

import argparse
import json
import sys

# What lrjob's workers run with (launcher/backends/cluster.py, worker_env and
# EMBEDDED_SYSTEM_CONFIG), so the floor differs in how the workers are hosted, not in settings.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", "HOROVOD_CYCLE_TIME": "0.1"}
SYSTEM_CONFIG = {"worker_niceness": 0}


def read_idx(path: str):
    """An uncompressed IDX file as a uint8 array of its declared shape."""
    import numpy as np

    raw = np.fromfile(path, dtype=np.uint8)
    ndim = int(raw[3])
    shape = tuple(int(d) for d in raw[4:4 + 4 * ndim].view(">u4"))
    return raw[4 + 4 * ndim:].reshape(shape)


def train(data_dir: str, configs: list[tuple[tuple[int, ...], int]], epochs: int, seed: int = 12345) -> dict:
    """Run in every Horovod worker: each configuration trains ``epochs`` epochs; returns
    ``{"HIDDEN:BATCH": [seconds, ...]}`` of this rank."""
    import time

    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    import horovod.mxnet as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    x_all = mx.nd.array(read_idx(f"{data_dir}/train-images-idx3-ubyte").reshape(-1, 784), dtype="float32") / 255
    y_all = mx.nd.array(read_idx(f"{data_dir}/train-labels-idx1-ubyte"), dtype="float32")
    n = x_all.shape[0]
    out = {}
    for hidden, batch in configs:
        net = gluon.nn.HybridSequential()
        for width in hidden:
            net.add(gluon.nn.Dense(width, activation="relu"))
        net.add(gluon.nn.Dense(10))
        net.initialize(mx.init.Xavier())
        net.hybridize(static_alloc=True)
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        loss_fn.hybridize(static_alloc=True)
        net(x_all[0:1])  # shapes known before the broadcast
        params = net.collect_params()
        hvd.broadcast_parameters(params, root_rank=0)
        trainer = hvd.DistributedTrainer(params, "sgd", {"learning_rate": 0.1})
        seconds = []
        for epoch in range(epochs):
            perm = np.random.default_rng([seed, epoch]).permutation(n)
            # this rank's contiguous part of every global batch, on the device
            steps = [np.array_split(perm[a:a + batch], size)[rank] for a in range(0, n, batch)]
            idx = mx.nd.array(np.concatenate(steps), dtype="int64")
            bounds = np.cumsum([0] + [len(s) for s in steps])
            t0 = time.perf_counter()
            losses = []
            for s in range(len(steps)):
                rows = idx[int(bounds[s]):int(bounds[s + 1])]
                xb, yb = mx.nd.take(x_all, rows), mx.nd.take(y_all, rows)
                with autograd.record():
                    loss = loss_fn(net(xb), yb).sum()
                loss.backward()
                losses.append(loss)
                trainer.step(min(batch, n - s * batch) / size)  # the global batch's mean gradient
            mx.nd.concat(*losses, dim=0).asnumpy()  # the one host sync of the epoch
            seconds.append(time.perf_counter() - t0)
        out[f"{','.join(map(str, hidden)) or 0}:{batch}"] = seconds
    return out


def parse_config(text: str) -> tuple[tuple[int, ...], int]:
    """``256,256:512`` -> ((256, 256), 512); ``0:64`` -> ((), 64)."""
    hidden, _, batch = text.partition(":")
    widths = tuple(int(w) for w in hidden.split(",") if w and w != "0")
    return widths, int(batch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bare_hvd_ray", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with the four MNIST IDX files")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--config", action="append", required=True, metavar="HIDDEN:BATCH")
    args = p.parse_args(argv)
    configs = [parse_config(c) for c in args.config]

    import ray
    from horovod.ray import RayExecutor

    ray.init(address="local", num_cpus=max(args.workers, 1), include_dashboard=False,
             runtime_env={"env_vars": WORKER_ENV}, _system_config=SYSTEM_CONFIG, logging_level="WARNING")
    try:
        ex = RayExecutor(RayExecutor.create_settings(timeout_s=60), num_workers=args.workers, cpus_per_worker=1)
        ex.start()
        try:
            per_rank = ex.run(train, args=[args.data, configs, args.epochs])
        finally:
            ex.shutdown()
    finally:
        ray.shutdown()
    print(json.dumps({"workers": args.workers, "epochs": args.epochs, "seconds": per_rank[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
