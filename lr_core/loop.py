"""The training loop, written once for every world size.

``TrainingLoop`` holds the model, the Gluon trainer and the data of one worker; the
caller (the in-process reference run, or the launcher's Horovod worker) calls
``run_epoch(e)`` for each epoch. Batching follows the parity rule (``sharding.py``):
every rank walks the same global batches, takes its slice, backpropagates the sum of
its per-sample losses, and the communicator's ``step`` divides the gradient summed over
ranks by the real size of the global batch: the single-process update.

Hot path: the features are a zero-copy NDArray view of the (shared, read-only) NumPy
data, so N workers on a node hold the dataset once; each step gathers its rows; model
and loss run as one hybridized graph; the per-step loss sums stay on the device and are
read once per epoch (no host synchronisation per step).

    from lr_core import LoopConfig, fit, load_dataset
    loop, history = fit(LoopConfig(kind="softmax", num_classes=10), load_dataset("digits", ...))
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

import numpy as np
import mxnet as mx
from mxnet import autograd

from . import faults
from .comm import Communicator, SingleProcessCommunicator
from .config import LoopConfig
from .data import Dataset
from .prepared import RESIDENT_BYTES, MappedPages, read_rows
from .errors import DivergenceError
from .data import standardizer
from .losses import LossGraph, class_weights, row_weights
from .metrics import EvalCounts, from_logits, summarize
from .models import build_model
from .schedule import rate
from .sharding import epoch_permutation, local_plan, shard_bounds
from .state import get_optimizer_state, set_optimizer_state

# The most steps a host queues ahead of its device (docs/design.md#progress-and-the-device): every
# RUN_AHEAD // 2 steps of a segment, the host waits for the step it queued RUN_AHEAD // 2 steps before.
# A set read from its file row by row queues each step's rows on the host, so there the bound is
# also what RESIDENT_BYTES holds.
RUN_AHEAD = 1024


class _Confirmer:
    """Calls ``progress(done, steps)`` once the device has run the step before each report, from a
    thread of its own, so that the training thread never waits for its device to report
    (docs/design.md#progress-and-the-device).

    ``post(done, mark)``: report ``done`` once ``mark`` (an output of step ``done - 1``, or None
    before the first step) can be read. Reports are confirmed in the order they are posted. An
    error of the device or of ``progress`` stops the thread and is kept in ``error``, for the
    training thread to raise: MXNet raises a device error to the first reader only."""

    def __init__(self, progress: Callable[[int, int], None], steps: int):
        self._progress, self._steps = progress, steps
        self._posted: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lrjob-confirm", daemon=True)
        self._thread.start()

    def post(self, done: int, mark) -> None:
        """Report ``done`` once ``mark`` is computed; raises the thread's error, if any."""
        if self.error is not None:
            raise self.error
        self._posted.put((done, mark))

    def _run(self) -> None:
        while (item := self._posted.get()) is not None:
            done, mark = item
            try:
                if mark is not None:
                    mark.wait_to_read()  # MXNet waits with the GIL released
                with self._lock:
                    if self._stopped:
                        return
                    self._progress(done, self._steps)
            except BaseException as e:  # noqa: BLE001 - raised by the training thread
                self.error = e
                return

    def close(self) -> None:
        """Confirm every report posted, then stop; the thread's error is raised here."""
        self._posted.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self, timeout: float = 1.0) -> None:
        """Stop without raising, after the reports the device finishes within ``timeout`` s: the
        training thread is raising, and its device may never finish (a lost peer). No report is
        made after this returns."""
        try:
            self._posted.put(None)
            self._thread.join(timeout)
        finally:
            self._stopped = True  # no report starts after this
            with self._lock:  # and the one running, if any, has ended
                pass


def optimizer_params(cfg: LoopConfig) -> dict:
    params = {"learning_rate": cfg.learning_rate, "wd": cfg.weight_decay}
    if cfg.optimizer in ("sgd", "nag"):
        params["momentum"] = cfg.momentum
    return params


def predict_logits(net, x: mx.nd.NDArray, batch: int = 4096) -> np.ndarray:
    """Logits for every row of ``x`` in large batches, as float32 NumPy."""
    outs = [net(x[a:a + batch]) for a in range(0, x.shape[0], batch)]
    if not outs:
        return np.zeros((0, 1), dtype=np.float32)
    return mx.nd.concat(*outs, dim=0).asnumpy()


class TrainingLoop:
    """One worker's training state. World size comes only from ``comm``."""

    def __init__(self, cfg: LoopConfig, data: Dataset, comm: Communicator | None = None,
                 ctx: mx.Context | None = None, record_shards: bool = False, gather: bool | None = None):
        self.cfg, self.data = cfg, data
        self.comm = comm or SingleProcessCommunicator()
        self.ctx = ctx or mx.cpu()
        self.record_shards = record_shards
        self.shard_log: dict[int, np.ndarray] = {}
        self.epochs_done = 0
        # Inside an epoch (mid-epoch checkpoints): the next step, and the loss sum of each
        # finished step of the epoch, summed over ranks (the epoch's train_loss needs them).
        self.step = 0
        self._done_losses: list[np.ndarray] = []
        self._done_seconds = 0.0
        self._done_rows = 0  # rows of the epoch trained in this process (a resumed epoch: fewer)
        # (epoch, step) this rank's host is at, both 0-based: a Horovod worker reports it, so a
        # hang is blamed on the rank that stopped first (docs/design.md#failures-and-restarts).
        self.position = (-1, 0)

        self.net = build_model(cfg, data.num_features, self.ctx)
        self.comm.broadcast_parameters(self.net.collect_params())
        # Class weights (docs/design.md#class-weights): per-class, from the whole training
        # set's labels, then one float32 weight per row, gathered with the row.
        self.class_weights = class_weights(cfg.class_weight, data.y_train, cfg.num_outputs_classes)
        # A set larger than memory: each step's rows are read from the file (read_rows), and
        # what validation maps is unmapped as it goes, so this process's memory stays flat
        # (docs/design.md#prepared-data).
        self.train_pages, self.val_pages = MappedPages(data.x_train), MappedPages(data.x_val)
        # Otherwise (``gather`` None or True) the graph gathers each step's rows itself
        # (docs/design.md#the-update-step); ``gather=False`` gathers them before the graph.
        self.gather = not self.train_pages.active and gather is not False
        # What a host may queue ahead of its device (RUN_AHEAD); rows read from the file are held
        # by the steps queued, so there no more than RESIDENT_BYTES of them
        self.run_ahead = RUN_AHEAD
        if self.train_pages.active:
            step_bytes = -(-cfg.batch_size // self.comm.size) * data.x_train[:1].nbytes
            self.run_ahead = max(2, min(RUN_AHEAD, RESIDENT_BYTES // max(1, step_bytes)))
        self.graph = LossGraph(self.net, cfg.kind, cast=data.x_train.dtype != np.float32, scale=data.scale,
                               weighted=self.class_weights is not None, standardized=data.stats is not None,
                               gather=self.gather)
        # static_shape: the graph's memory plan is kept from step to step (made again when a
        # step's shape differs: the short last batch; docs/design.md#the-update-step)
        self.graph.hybridize(static_alloc=True, static_shape=True)
        self.net.hybridize(static_alloc=True)
        self.trainer = self.comm.make_trainer(self.net.collect_params(), cfg.optimizer, optimizer_params(cfg))

        self.x = _device_array(data.x_train, self.ctx)  # the stored dtype; the graph casts and scales
        y = data.y_train.astype(np.float32)
        self.y = mx.nd.array(y.reshape(-1, 1) if cfg.kind == "binary" else y, ctx=self.ctx, dtype="float32")
        # The graph's inputs after (x, y): the rows' weights, then the standardization
        # (the training rows' float32 mean and 1/std: the same numbers on every rank).
        self.w = (mx.nd.array(row_weights(self.class_weights, data.y_train).reshape(-1, 1), ctx=self.ctx,
                              dtype="float32") if self.class_weights is not None else None)
        self.consts = [mx.nd.array(a, ctx=self.ctx, dtype="float32") for a in standardizer(data.stats)] \
            if data.stats is not None else []
        # Validation: this rank's contiguous slice; counts are summed across ranks.
        a, b = shard_bounds(len(data.x_val), self.comm.rank, self.comm.size)
        self.val_slice = (a, b)
        self.has_val = b > a

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int, progress: Callable[[int, int], None] | None = None,
                    start_step: int = 0, stop_step: int | None = None) -> dict:
        """One pass over the training rows, or its steps ``[start_step, stop_step)``: a
        segment between mid-epoch checkpoints (``{"partial": True, ...}`` until the last
        step). ``progress(done, steps)`` is called about 50 times per epoch, from a thread of its
        own (``_Confirmer``), once the device has run step ``done - 1``'s forward pass (so every
        step before it is finished), and never after this returns."""
        cfg, comm = self.cfg, self.comm
        n = len(self.data.x_train)
        perm = epoch_permutation(cfg.seed, epoch, n)
        idx, offsets, global_sizes = local_plan(perm, cfg.batch_size, comm.rank, comm.size)
        if self.record_shards:
            self.shard_log[epoch] = idx.copy()
        steps = len(global_sizes)
        stop = steps if stop_step is None else min(int(stop_step), steps)
        if start_step == 0:
            self._done_losses, self._done_seconds, self._done_rows = [], 0.0, 0
        elif start_step != self.step:
            raise ValueError(f"epoch {epoch + 1}: segment starts at step {start_step}, the loop is at {self.step}")
        t0 = time.perf_counter()
        if len(idx):
            idx_nd = mx.nd.array(idx, ctx=self.ctx, dtype="int64")
        # Per-step loss sums stay on the device in a list (a slice assignment per step
        # costs a third of the epoch); one concat and one host read at the end.
        losses = []
        zero = mx.nd.zeros((1,), ctx=self.ctx, dtype="float32")
        row0 = mx.nd.zeros((1,), ctx=self.ctx, dtype="int64")
        # one output of each step, to wait for (a rank's empty step adds its zero-weighted loss)
        marks = []
        half = max(1, self.run_ahead // 2)
        # at least every quarter of the steps between the host's waits, so that a host waiting
        # for its device has posted reports for the thread to confirm meanwhile
        report_every, next_report = max(1, min(steps // 50, half // 4)), 0.0
        # A schedule's rate depends on the global step only (docs/design.md#learning-rate-schedules):
        # the same on every rank and every world size, and found again on resume from (epoch, step).
        schedule = cfg.schedule
        confirm = _Confirmer(progress, steps) if progress is not None and stop > start_step else None
        try:
            for s in range(start_step, stop):
                self.position = (epoch, s)
                # about 50 reports per epoch, and one at least every second (they are also the
                # heartbeat the epoch timeout watches): each is confirmed once the device has
                # finished the steps before it, by a thread that waits for it (``_Confirmer``)
                if confirm is not None and (s % report_every == 0 or time.perf_counter() >= next_report):
                    confirm.post(s, marks[-1] if marks else None)
                    next_report = time.perf_counter() + 1.0
                # the host stays at most ``run_ahead`` steps ahead of its device
                ahead = s - start_step
                if ahead and ahead % half == 0:
                    marks[ahead - half].wait_to_read()
                if faults.ARMED:  # tests only: a crash or hang at an exact step (faults.py)
                    faults.hit("step", epoch=epoch + 1, step=s + 1, rank=comm.rank)
                a, b = int(offsets[s]), int(offsets[s + 1])
                if b > a:
                    # Gather this step's rows from the shared, read-only data (no per-worker
                    # copy of the dataset: workers on a node share Ray's object store).
                    rows = idx_nd[a:b]
                    if self.gather:  # the graph takes the rows (one operator call, not three)
                        inputs = [self.x, self.y, rows] + ([self.w] if self.w is not None else [])
                    else:  # the rows before the graph; a set larger than memory reads them, maps none
                        xb = (mx.nd.array(read_rows(self.data.x_train, idx[a:b]), ctx=self.ctx, dtype=self.x.dtype)
                              if self.train_pages.active else mx.nd.take(self.x, rows))
                        inputs = [xb, mx.nd.take(self.y, rows)] + ([mx.nd.take(self.w, rows)] if self.w is not None else [])
                    with autograd.record():
                        total = self.graph(*inputs, *self.consts)
                    total.backward()
                    losses.append(total)
                    marks.append(total)
                else:
                    # This rank has no rows in this global batch: it still joins the
                    # allreduce, with an exact zero gradient (a zero-weighted real row).
                    first = [self.x, self.y, row0] if self.gather else [self.x[0:1], self.y[0:1]]
                    wb = ([self.w] if self.gather else [self.w[0:1]]) if self.w is not None else []
                    with autograd.record():
                        total = self.graph(*first, *wb, *self.consts) * 0
                    total.backward()
                    losses.append(zero)
                    marks.append(total)
                if schedule is not None:
                    self.trainer.set_learning_rate(rate(schedule, cfg.learning_rate, epoch * steps + s, steps))
                comm.step(self.trainer, int(global_sizes[s]))
            if confirm is not None:
                confirm.close()  # the reports posted: progress is never called after this epoch's call
        except BaseException as e:
            if confirm is not None:
                confirm.abandon()
                if isinstance(e, Exception) and confirm.error is not None and confirm.error is not e:
                    raise confirm.error  # the device failed first (a lost peer may follow); e is its context
            raise
        self.position = (epoch, stop)  # every step queued: the loss read, then evaluation
        # the one host sync of the epoch
        local = mx.nd.concat(*losses, dim=0).asnumpy().astype(np.float64) if losses else np.zeros(0)
        self.train_pages.release()  # every step has run: nothing of the epoch stays mapped
        self._done_seconds += time.perf_counter() - t0
        per_step = comm.allreduce_sum(local, name=f"train_loss.{epoch}.{start_step}")
        if not np.all(np.isfinite(per_step)):
            step = start_step + int(np.flatnonzero(~np.isfinite(per_step))[0])
            raise DivergenceError(
                f"loss became {per_step[step - start_step]} at epoch {epoch + 1}, step {step + 1} of {steps}; "
                f"lower train.learning_rate (now {cfg.learning_rate:g}) or check the data scale")
        self._done_losses.append(per_step)
        self._done_rows += int(global_sizes[start_step:stop].sum())
        if stop < steps:
            self.step = stop
            return {"partial": True, "epoch": epoch + 1, "step": stop, "steps": steps}
        per_step = np.concatenate(self._done_losses)
        train_seconds, rows = self._done_seconds, self._done_rows
        self.step, self._done_losses, self._done_seconds, self._done_rows = 0, [], 0.0, 0
        self.epochs_done = epoch + 1
        return {"train_loss": float(per_step.sum() / n), "train_seconds": train_seconds,
                "steps": steps, "local_rows": int(len(idx)), "timed_rows": rows}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, epoch: int | None = None) -> dict:
        """Validation metrics over the whole validation set (shards merged)."""
        cfg, comm = self.cfg, self.comm
        n_val = len(self.data.x_val)
        a, b = self.val_slice
        counts = EvalCounts(2 if cfg.kind == "binary" else cfg.num_classes)
        scores_global = np.zeros(n_val, dtype=np.float64) if cfg.kind == "binary" else None
        if self.has_val:
            logits = self._val_logits(a, b)
            y = self.data.y_val[a:b]
            pred, prob, losses = from_logits(cfg.kind, logits, cfg.threshold, y)
            if scores_global is not None:
                scores_global[a:b] = prob
            counts.update(y, pred, losses)
        tag = "" if epoch is None else f".{epoch}"
        total = EvalCounts.from_vector(comm.allreduce_sum(counts.to_vector(), name=f"val_counts{tag}"),
                                       counts.num_classes)
        if scores_global is not None:
            # Each rank filled only its own positions; the sum is the whole set's scores.
            scores_global = comm.allreduce_sum(scores_global, name=f"val_scores{tag}")
        return summarize(cfg.kind, total, self.data.y_val, scores_global)

    def _val_logits(self, a: int, b: int) -> np.ndarray:
        """Logits of validation rows [a, b), read in blocks (a memory-mapped set is never
        copied whole)."""
        step = max(self.cfg.eval_batch_size, 1)
        outs = []
        for i in range(a, b, step):
            rows = self.data.x_val[i:min(b, i + step)]
            outs.append(self.net(mx.nd.array(self.data.features(rows), ctx=self.ctx, dtype="float32")).asnumpy())
            self.val_pages.read(len(rows))
        self.val_pages.release()
        return np.concatenate(outs) if outs else np.zeros((0, 1), dtype=np.float32)

    def run_epoch(self, epoch: int, progress: Callable[[int, int], None] | None = None,
                  start_step: int = 0, stop_step: int | None = None) -> dict:
        """Train one epoch (or the segment ``[start_step, stop_step)`` of it) and, at its
        end, evaluate; returns the epoch's metrics (``{"partial": True, ...}`` before the end)."""
        tr = self.train_epoch(epoch, progress, start_step, stop_step)
        if tr.get("partial"):
            return tr
        t0 = time.perf_counter()
        ev = self.evaluate(epoch)
        seconds = tr["train_seconds"] + time.perf_counter() - t0  # the segments' training, then evaluation
        out = {"epoch": epoch + 1, "train_loss": tr["train_loss"], "val_loss": ev.pop("loss")}
        if not np.isfinite(out["val_loss"]):
            # The epoch's losses were finite, but its last update was not: the parameters
            # are NaN or infinite, and such a model must never be exported as a completed
            # run (docs/design.md#failures-and-restarts, "Divergence"). The validation loss
            # is a sum over every rank: each rank raises alike.
            raise DivergenceError(
                f"the validation loss became {out['val_loss']} after epoch {epoch + 1} (the parameters are no "
                f"longer finite); lower train.learning_rate (now {self.cfg.learning_rate:g}) or check the data scale")
        out.update({f"val_{k}" if k in ("accuracy", "precision", "recall", "f1", "auc", "macro_f1") else k: v
                    for k, v in ev.items() if k != "n"})
        out.update({"epoch_seconds": seconds, "train_seconds": tr["train_seconds"],
                    "samples_per_s": tr["timed_rows"] / tr["train_seconds"] if tr["train_seconds"] else 0.0,
                    "steps": tr["steps"]})
        return out

    # ------------------------------------------------------------------ state
    def get_params(self) -> dict[str, np.ndarray]:
        return {name: p.data().asnumpy() for name, p in self.net.collect_params().items()}

    def set_params(self, values: dict[str, np.ndarray]) -> None:
        for name, p in self.net.collect_params().items():
            p.set_data(mx.nd.array(values[name], ctx=self.ctx, dtype="float32"))

    def get_state(self) -> dict:
        """Parameters, optimizer state and the data cursor: all a resume needs."""
        arrays, meta = get_optimizer_state(self.trainer)
        return {"params": self.get_params(), "optimizer_arrays": arrays, "optimizer_meta": meta,
                "epochs_done": self.epochs_done, "step": self.step,
                "step_losses": (np.concatenate(self._done_losses) if self._done_losses else np.zeros(0)).tolist()}

    def set_state(self, state: dict) -> None:
        self.set_params(state["params"])
        set_optimizer_state(self.trainer, state["optimizer_arrays"], state["optimizer_meta"], self.ctx)
        self.epochs_done = int(state["epochs_done"])
        self.step = int(state.get("step", 0))
        losses = np.asarray(state.get("step_losses", []), dtype=np.float64)
        self._done_losses, self._done_seconds, self._done_rows = ([losses] if self.step else []), 0.0, 0


def _device_array(x: np.ndarray, ctx: mx.Context) -> mx.nd.NDArray:
    """Features as an NDArray in their stored dtype (float32, or uint8 that the graph
    scales). On the CPU this is a zero-copy view of the (read-only, memory-mapped or
    object-store backed) NumPy array; on a GPU one copy on the device."""
    dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    x = np.ascontiguousarray(x, dtype=dtype) if not (x.flags.c_contiguous and x.dtype == dtype) else x
    if ctx.device_type == "cpu" and x.size:
        return mx.nd.from_numpy(x, zero_copy=True)
    return mx.nd.array(x, ctx=ctx, dtype=x.dtype)


def fit(cfg: LoopConfig, data: Dataset, comm: Communicator | None = None,
        on_epoch: Callable[[dict], None] | None = None, start_epoch: int = 0,
        state: dict | None = None) -> tuple[TrainingLoop, list[dict]]:
    """Train ``cfg.epochs`` epochs (from ``start_epoch``); returns the loop and the history."""
    loop = TrainingLoop(cfg, data, comm)
    if state is not None:
        loop.set_state(state)
    history = []
    for epoch in range(start_epoch, cfg.epochs):
        metrics = loop.run_epoch(epoch)
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
    return loop, history
