"""lrjob data-scale benchmarks: ingest into prepared datasets, training speed from a
prepared memory map, and out-of-core training with flat memory. Writes one JSON file and
a readable summary beside it; asserts nothing.

    make bench-data                     # = python -m benchmarks.data_scale --out bench-results/data_scale.json
    python -m benchmarks.data_scale --quick --out /tmp/ds.json     # small sizes, a few minutes

1. ingest: a 1,000,000 x 20 CSV (and the same rows as Parquet) read by the old CSV reader
   (benchmarks/baselines.py) and by ``lrjob validate JOB --data`` into a fresh
   ``data.cache``, then again with the cache prepared. Each measurement is its own
   subprocess, so its peak RSS (``os.wait4``) is its own; 4 interleaved rounds (``--ingest-reps``) after
   one untimed run of each command (it fills the compiled-module cache below).
2. mnist: ``TrainingLoop.train_epoch`` on the in-memory float32 MNIST and on the prepared
   uint8 memory map, in-process (epochs interleaved) and with 2 Ray + Horovod workers (one
   group at a time, in the blocks in-memory, prepared, prepared, in-memory).
3. out_of_core: a >= 3 GiB npy pair (1000 features) and a 0.1 GB one, prepared. A step
   probe (the first steps of lrjob's in-process loop in a 768 MiB cgroup: seconds and bytes
   read per step; also the what-if with ``madvise(MADV_RANDOM)`` on the features). Then
   ``lrjob run`` with ``--workers 0`` in a 768 MiB memory cgroup and ``--workers 2`` in a
   2 GiB one (cgroup v1, needs root; stopped after ``--run-timeout``), and the same two
   without a limit: their parity, and flat memory against the 0.1 GB set (every process
   of a run is in its cgroup, so it is found and polled there). The prepared files are
   dropped from the page cache before each run (``posix_fadvise(DONTNEED)``), so every run
   reads from disk.

Method: interleaved repetitions where a measure repeats (A B, B A, ...), the first one a
warm-up; medians of the rest. The machine is shared and noisy: compare the ratios
measured in one run, not absolute seconds across runs. Everything generated (~7 GB) lives
in one temporary directory, removed at the end with the cgroups, any process left in them
and the Ray session folders of our runs. SIGTERM cleans up like Ctrl-C.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from benchmarks.run import log, stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
LRJOB = str(Path(sys.executable).parent / "lrjob")
MiB, GiB = 1 << 20, 1 << 30
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
RUN_PIDS: list[int] = []  # the lrjob processes this benchmark started (clean-up checks their Ray)


def _env(pycache: Path | None = None) -> dict:
    """The environment of every child: a fresh local Ray, never a cluster named outside.
    ``pycache``: Python keeps its compiled modules there (``PYTHONPYCACHEPREFIX``), as an
    installed lrjob has them after its first run, even where the environment sets
    ``PYTHONDONTWRITEBYTECODE`` (then every command compiles this checkout's modules again)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------- process memory
def proc_status(pid: int) -> dict:
    """VmRSS, VmHWM (its peak so far), RssAnon and RssFile of a process in bytes ({} once
    it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return out


def proc_uss(pid: int) -> int | None:
    """Unique set size (pages only this process maps, file-backed ones included)."""
    try:
        import psutil
        return psutil.Process(pid).memory_full_info().uss
    except Exception:  # noqa: BLE001 - gone, or no smaps
        return None


def proc_read_bytes(pid: int) -> int | None:
    """Bytes this process has caused to be read from storage so far (/proc/PID/io)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Peaks:
    """Per-process peaks of polled memory figures, and what each process is."""

    def __init__(self, main_pid: int):
        self.main_pid = main_pid
        self.procs: dict[int, dict] = {}

    def sample(self, pid: int, uss: bool) -> None:
        st = proc_status(pid)
        if not st:
            return
        p = self.procs.setdefault(pid, {"pid": pid, "role": None, "cmd": ""})
        cmd = proc_cmdline(pid)
        if cmd:
            p["cmd"] = cmd[:160]
        p["role"] = self._role(pid, p["cmd"], p["role"])
        figures = dict(st)
        if uss:
            figures["USS"] = proc_uss(pid)
        for k, v in figures.items():
            if v is not None:
                p[f"peak_{k}"] = max(p.get(f"peak_{k}", 0), v)
        read = proc_read_bytes(pid)
        if read is not None:
            p["read_bytes"] = read  # cumulative: the last value seen

    def _role(self, pid: int, cmd: str, old: str | None) -> str:
        if pid == self.main_pid:
            return "driver"
        if old == "worker" or "HorovodWorker" in cmd:  # ray::BaseHorovodWorker.execute()
            return "worker"
        return (cmd.split()[0].rsplit("/", 1)[-1] if cmd else "?")[:40]

    def read_bytes(self) -> int:
        """Bytes read from storage by every process seen (until its last sample)."""
        return sum(p.get("read_bytes", 0) for p in self.procs.values())


def measure(cmd: list[str], *, cgroup: "MemoryCgroup | None" = None, interval: float = 0.1,
            uss: bool = False, timeout: float | None = None, log_file: Path | None = None,
            pycache: Path | None = None) -> dict:
    """Run ``cmd`` to the end: wall seconds, exit code, peak RSS of the process and its
    reaped children (``os.wait4``), polled peaks per process (the process alone, or every
    process of ``cgroup``), the cgroup's counters, and the tail of its output. A thread
    polls; this one waits, so the wall time is exact."""
    out_f = open(log_file, "w+") if log_file else tempfile.TemporaryFile("w+")
    with out_f:
        if cgroup is not None:
            cmd = cgroup.wrap(cmd)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out_f, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(pycache))
        RUN_PIDS.append(p.pid)
        poller = Poller(p.pid, cgroup, interval, uss, timeout)
        poller.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:  # interrupted: stop the child before anything is cleaned up
            poller.finish()
            _stop(p.pid)
            raise
        wall = time.perf_counter() - t0
        poller.finish()
        p.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        text = out_f.read()
    peaks = poller.peaks
    r = {"cmd": " ".join(cmd[-12:]), "exit_code": p.returncode, "seconds": wall, "timed_out": poller.timed_out,
         "needed_sigkill": poller.killed, "peak_rss_wait4": ru.ru_maxrss * 1024, "read_bytes": peaks.read_bytes(),
         "cpu_seconds": ru.ru_utime + ru.ru_stime,  # user + system, every thread, reaped children included
         "processes": sorted(peaks.procs.values(), key=lambda d: d["pid"]),
         "output_tail": text.strip().splitlines()[-15:]}
    r["main_peaks"] = {k: v for k, v in peaks.procs.get(p.pid, {}).items() if k.startswith("peak_")}
    if cgroup is not None:
        r["cgroup"] = {**cgroup.counters(), "peak_stat": poller.cgroup_peaks}
    return r


def _stop(pid: int, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps the process."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _interrupt(signum, frame):
    """SIGTERM stops the benchmark like Ctrl-C: the clean-up in ``finally`` blocks runs."""
    raise KeyboardInterrupt


class Poller(threading.Thread):
    """Samples the memory of a running command every ``interval`` seconds; stops it
    after ``timeout`` (SIGTERM, then SIGKILL ``KILL_AFTER`` seconds later)."""

    KILL_AFTER = 30.0

    def __init__(self, pid: int, cgroup: "MemoryCgroup | None", interval: float, uss: bool, timeout: float | None):
        super().__init__(daemon=True)
        self.pid, self.cgroup, self.interval, self.uss, self.timeout = pid, cgroup, interval, uss, timeout
        self.peaks = Peaks(pid)
        self.cgroup_peaks: dict = {}
        self.timed_out = self.killed = False
        self._done = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self._done.is_set():
            for q in (self.cgroup.pids() if self.cgroup is not None else [self.pid]):
                self.peaks.sample(q, self.uss)
            if self.cgroup is not None:
                for k, v in self.cgroup.stat().items():
                    self.cgroup_peaks[k] = max(self.cgroup_peaks.get(k, 0), v)
            if self.timeout:
                self._stop_when_late(time.perf_counter() - t0)
            self._done.wait(self.interval)

    def _stop_when_late(self, elapsed: float) -> None:
        if elapsed > self.timeout and not self.timed_out:
            self.timed_out = True
            log(f"  no end after {self.timeout:.0f} s: SIGTERM to pid {self.pid}")
            os.kill(self.pid, signal.SIGTERM)
        elif elapsed > self.timeout + self.KILL_AFTER and not self.killed:
            self.killed = True
            log(f"  pid {self.pid} still running {self.KILL_AFTER:.0f} s after SIGTERM: SIGKILL")
            os.kill(self.pid, signal.SIGKILL)

    def finish(self) -> None:
        self._done.set()
        self.join()


# --------------------------------------------------------------------------- memory cgroups
class MemoryCgroup:
    """A cgroup v1 memory cgroup of our own, with a hard limit or none (then it only
    accounts and tracks). ``wrap(cmd)`` starts a shell that moves itself in and execs
    ``cmd``: every process it starts (Ray's too) inherits the cgroup, so at exit whatever
    is still in it is ours to stop, by pid."""

    def __init__(self, name: str, limit_bytes: int | None):
        self.path = CGROUP_ROOT / f"{name}-{os.getpid()}"
        self.limit = limit_bytes

    @staticmethod
    def available() -> str | None:
        """None when memory cgroups can be made here, else why not."""
        if os.geteuid() != 0:
            return "needs root"
        if not (CGROUP_ROOT / "cgroup.procs").is_file():
            return f"no cgroup v1 memory controller at {CGROUP_ROOT}"
        return None

    def __enter__(self) -> "MemoryCgroup":
        self.path.mkdir()
        if self.limit is not None:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        return self

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *cmd]

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def stat(self) -> dict:
        """memory.stat's own figures: rss (anonymous), cache, mapped_file, shmem (bytes) and
        pgmajfault (major page faults so far)."""
        out = {}
        for line in self._read("memory.stat").splitlines():
            k, v = line.split()
            if k in ("rss", "cache", "mapped_file", "shmem", "pgmajfault"):
                out[k] = int(v)
        return out

    def counters(self) -> dict:
        oom = dict(line.split() for line in self._read("memory.oom_control").splitlines())
        return {"limit_bytes": int(self._read("memory.limit_in_bytes")),
                "max_usage_in_bytes": int(self._read("memory.max_usage_in_bytes")),
                "failcnt": int(self._read("memory.failcnt")), "oom_kill": int(oom.get("oom_kill", 0)),
                "stat_at_end": self.stat()}

    def reset(self) -> None:
        """Start the usage peak and failure count again (between runs)."""
        (self.path / "memory.max_usage_in_bytes").write_text("0")
        (self.path / "memory.failcnt").write_text("0")

    def stop_leftovers(self, grace: float = 30.0) -> list[dict]:
        """Wait for the processes still in the cgroup to exit; SIGKILL them after ``grace``."""
        deadline = time.monotonic() + grace
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [{"pid": q, "cmd": proc_cmdline(q)[:120]} for q in self.pids()]
        for q in self.pids():
            try:
                os.kill(q, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def __exit__(self, *exc) -> None:
        left = self.stop_leftovers()
        if left:
            log(f"  killed {len(left)} process(es) left in {self.path.name}: {left}")
        for _ in range(20):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.5)
        log(f"  warning: could not remove cgroup {self.path}")


def dmesg_oom_lines() -> list[str]:
    """Kernel messages about the OOM killer (best effort)."""
    try:
        text = subprocess.run(["dmesg", "-T"], capture_output=True, text=True, timeout=10).stdout
    except Exception:  # noqa: BLE001
        return []
    return [x for x in text.splitlines() if "oom" in x.lower() or "Killed process" in x][-12:]


def drop_page_cache(path: Path) -> None:
    """Evict one directory's files from the page cache (only those files: DONTNEED)."""
    for f in Path(path).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# --------------------------------------------------------------------------- job specs
def write_job(path: Path, name: str, data: dict, *, kind: str = "binary", train: dict | None = None) -> Path:
    spec = {"name": name, "model": {"kind": kind, "hidden": []}, "data": data,
            "train": train or {}, "resources": {"workers": 2, "cpus_per_worker": 1}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --------------------------------------------------------------------------- 1. ingest
def linear_labels(x: np.ndarray, w: np.ndarray, rng, noise: float = 0.5) -> np.ndarray:
    """0/1 labels from a fixed linear rule plus Gaussian noise."""
    z = x @ w + noise * rng.standard_normal(len(x))
    return (z > 0).astype(np.int64)


def write_tables(tmp: Path, rows: int, cols: int, seed: int = 7, chunk: int = 100_000) -> dict:
    """The same rows as a CSV (header, 5 decimals, a 0/1 ``label`` column) and as Parquet
    (float32 features, int64 label), written chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path, pq_path = tmp / "table.csv", tmp / "table.parquet"
    names = [f"x{j}" for j in range(cols)]
    w = np.random.default_rng(seed).standard_normal(cols) / np.sqrt(cols)
    schema = pa.schema([(n, pa.float32()) for n in names] + [("label", pa.int64())])
    t0 = time.perf_counter()
    with open(csv_path, "w") as f, pq.ParquetWriter(pq_path, schema) as pw:
        f.write(",".join(names + ["label"]) + "\n")
        for i, lo in enumerate(range(0, rows, chunk)):
            rng = np.random.default_rng([seed, i])
            x = rng.standard_normal((min(chunk, rows - lo), cols)).round(5)
            y = linear_labels(x, w, rng)
            np.savetxt(f, np.column_stack([x, y]), fmt=["%.5f"] * cols + ["%d"], delimiter=",")
            pw.write_table(pa.table([pa.array(x[:, j].astype(np.float32)) for j in range(cols)] + [pa.array(y)],
                                    schema=schema))
    return {"rows": rows, "features": cols, "csv": str(csv_path), "parquet": str(pq_path),
            "csv_bytes": csv_path.stat().st_size, "parquet_bytes": pq_path.stat().st_size,
            "float32_bytes": rows * cols * 4, "write_seconds": time.perf_counter() - t0}


def _mem(r: dict) -> dict:
    """The figures of one measured subprocess that the report keeps."""
    keep = {k: r[k] for k in ("exit_code", "seconds", "cpu_seconds", "peak_rss_wait4")}
    keep.update(r["main_peaks"])
    if r["exit_code"] != 0:
        keep["output_tail"] = r["output_tail"]
    return keep


def bench_ingest(tmp: Path, rows: int, cols: int, reps: int) -> dict:
    """Old reader vs ``lrjob validate --data`` (CSV and Parquet, fresh cache, then reuse)."""
    log(f"ingest: writing {rows} x {cols} CSV and Parquet")
    files = write_tables(tmp, rows, cols)
    log(f"  CSV {files['csv_bytes'] / 1e6:.0f} MB, Parquet {files['parquet_bytes'] / 1e6:.0f} MB "
        f"in {files['write_seconds']:.0f} s")
    jobs = {fmt: write_job(tmp / f"ingest_{fmt}.yaml", f"ingest_{fmt}", {"source": fmt, "path": files[fmt]})
            for fmt in ("csv", "parquet")}
    cmds = {
        "import_baseline": [PY, "-c", "import launcher.cli"],
        "validate_no_data": [LRJOB, "validate", str(jobs["csv"])],
        "old_reader": [PY, "-m", "benchmarks.baselines", files["csv"]],
    }
    # Every command as it runs on a user's machine: with Python's compiled modules kept (here
    # in a folder of the run's own, filled by one untimed run of each command first). Where
    # this environment forbids writing them (PYTHONDONTWRITEBYTECODE), the old reader and the
    # fresh CSV are also measured as it runs them: the installed packages' compiled modules
    # are read, this checkout's modules are compiled again on every command.
    pycache = tmp / "pycache"
    for cmd in (*cmds.values(), [LRJOB, "validate", str(jobs["csv"]), "--data", "--set", f"data.cache={tmp / 'warm'}"]):
        measure(cmd, pycache=pycache)
    shutil.rmtree(tmp / "warm", ignore_errors=True)
    recompiled = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    names = ["import_baseline", "validate_no_data", "old_reader", "csv_fresh", "csv_reuse", "parquet_fresh",
             "parquet_reuse"] + (["old_reader_recompiled", "csv_fresh_recompiled"] if recompiled else [])
    runs: dict[str, list] = {k: [] for k in names}
    for rep in range(reps):
        order = list(cmds) + ["csv", "parquet"] + (["recompiled"] if recompiled else [])
        if rep % 2:
            order.reverse()
        for what in order:
            if what in cmds:
                r = measure(cmds[what], pycache=pycache)
                runs[what].append(_mem(r))
                if what == "old_reader" and r["exit_code"] == 0:  # the read alone, without start-up
                    runs[what][-1]["read_seconds"] = json.loads(r["output_tail"][-1])["seconds"]
                continue
            if what == "recompiled":
                runs["old_reader_recompiled"].append(_mem(measure(cmds["old_reader"])))
                cache = tmp / f"cache-recompiled-{rep}"
                cmd = [LRJOB, "validate", str(jobs["csv"]), "--data", "--set", f"data.cache={cache}"]
                runs["csv_fresh_recompiled"].append(_mem(measure(cmd)))
                shutil.rmtree(cache, ignore_errors=True)
                continue
            cache = tmp / f"cache-{what}-{rep}"
            cmd = [LRJOB, "validate", str(jobs[what]), "--data", "--set", f"data.cache={cache}"]
            runs[f"{what}_fresh"].append(_mem(measure(cmd, pycache=pycache)))
            runs[f"{what}_reuse"].append(_mem(measure(cmd, pycache=pycache)))
            runs[f"{what}_fresh"][-1]["prepared_bytes"] = dir_bytes(cache)
            shutil.rmtree(cache, ignore_errors=True)
        log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f}s" for k, v in runs.items()))
    return {"files": files, "runs": runs, "compiled_modules_kept": True, **ingest_ratios(files, runs)}


def _med(runs: list[dict], key: str) -> float:
    return stats([r[key] for r in runs if r.get(key) is not None])["median"]


def _peak_rss(r: dict) -> int | None:
    """A process's own peak RSS: the kernel's high-water mark (VmHWM, reset at exec), last
    polled before it ended. ``os.wait4``'s ru_maxrss is no use for a small process: a
    child keeps the high-water mark of the process it was forked from (this benchmark's
    own ~145 MiB) across exec."""
    return r.get("peak_VmHWM") or r.get("peak_rss_wait4")


def ingest_ratios(files: dict, runs: dict) -> dict:
    f32 = files["float32_bytes"]
    for rs in runs.values():
        for r in rs:
            r["peak_rss"] = _peak_rss(r)
    old = _med(runs["old_reader"], "seconds")
    new, pq_new = _med(runs["csv_fresh"], "seconds"), _med(runs["parquet_fresh"], "seconds")
    base_rss = _med(runs["import_baseline"], "peak_rss")
    new_rss = _med(runs["csv_fresh"], "peak_rss")
    return {"ratios": {
        "old_over_new_time": old / new,
        # CPU seconds (user + system): on a machine shared with other jobs, the wall time of
        # the parallel reader depends on how many cores the others leave it
        "old_over_new_cpu": _med(runs["old_reader"], "cpu_seconds") / _med(runs["csv_fresh"], "cpu_seconds"),
        "old_read_only_over_new_time": _med(runs["old_reader"], "read_seconds") / new,
        "new_peak_rss_over_float32": new_rss / f32,
        "new_rss_growth_over_float32": (new_rss - base_rss) / f32,
        "parquet_peak_rss_over_float32": _med(runs["parquet_fresh"], "peak_rss") / f32,
        "old_peak_rss_over_float32": _med(runs["old_reader"], "peak_rss") / f32,
        "parquet_over_csv_time": pq_new / new,
        "reuse_over_fresh_time_csv": _med(runs["csv_reuse"], "seconds") / new,
        **({"old_over_new_time_recompiled": _med(runs["old_reader_recompiled"], "seconds")
            / _med(runs["csv_fresh_recompiled"], "seconds")} if runs.get("csv_fresh_recompiled") else {}),
    }, "medians": {k: {"seconds": _med(v, "seconds"), "cpu_seconds": _med(v, "cpu_seconds"),
                       "peak_rss": _med(v, "peak_rss"),
                       "peak_rss_wait4": _med(v, "peak_rss_wait4")}
                   for k, v in runs.items()}}


# --------------------------------------------------------------------------- 2. MNIST
def bench_mnist(tmp: Path, reps: int, dist_epochs: int, workers: int = 2) -> dict:
    """Samples/s of the in-memory float32 MNIST and the prepared uint8 memory map."""
    from launcher.spec import load_spec
    from lr_core.config import LoopConfig
    from lr_core.loop import TrainingLoop

    spec = load_spec(ROOT / "jobs/mnist_softmax.yaml", [f"data.cache={tmp / 'mnist-cache'}"])
    t0 = time.perf_counter()
    data = {"in_memory": spec.load_data()}
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    home = spec.prepare_data()
    prep_s = time.perf_counter() - t0
    data["prepared"] = spec.prepared_data()
    mem, prep = data["in_memory"], data["prepared"]
    out = {"load_in_memory_seconds": load_s, "prepare_seconds": prep_s, "train_rows": len(mem.x_train),
           "in_memory_nbytes": mem.nbytes, "in_memory_train_x_nbytes": int(mem.x_train.nbytes),
           "prepared_dir_bytes": dir_bytes(home), "prepared_train_x_bytes": (home / "train-x.bin").stat().st_size,
           "prepared_dtype": str(prep.x_train.dtype)}
    cfg = LoopConfig(kind="softmax", num_classes=10, batch_size=64, learning_rate=0.1)
    loops = {k: TrainingLoop(cfg, d) for k, d in data.items()}
    times: dict[str, list] = {k: [] for k in loops}
    losses: dict[str, list] = {k: [] for k in loops}
    for rep in range(reps):
        for k in (list(loops) if rep % 2 == 0 else list(loops)[::-1]):
            m = loops[k].train_epoch(rep)
            times[k].append(m["train_seconds"])
            losses[k].append(m["train_loss"])
        log(f"mnist in-process rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    n = len(mem.x_train)
    ip = {k: {**stats(v[1:]), "samples_per_s": n / stats(v[1:])["median"], "all": v, "train_loss": losses[k]}
          for k, v in times.items()}
    ip["prepared_over_in_memory_samples_per_s"] = ip["prepared"]["samples_per_s"] / ip["in_memory"]["samples_per_s"]
    ip["max_train_loss_diff"] = float(np.max(np.abs(np.subtract(losses["prepared"], losses["in_memory"]))))
    out["in_process"] = ip
    del loops
    out["distributed"] = mnist_distributed(data, cfg, dist_epochs, workers)
    return out


def mnist_distributed(data: dict, cfg, epochs: int, workers: int) -> dict:
    """Each dataset on ``workers`` Ray + Horovod workers, one group at a time, in the blocks
    in-memory, prepared, prepared, in-memory (each half of ``epochs``, its first epoch a
    warm-up): a group that waits beside the measured one still runs Horovod's background
    cycle every 0.1 ms and takes CPU from it (measured: 2-worker epochs of 3.2 to 6.1 s with
    both groups up, against 2.2 s for the same job alone)."""
    import ray

    from benchmarks import probes
    from launcher.backends import RayHorovodBackend
    from launcher.backends.cluster import ray_init_kwargs
    from launcher.quiet import silence_known_noise
    from launcher.spec import ResourcesSpec

    silence_known_noise()
    ray.init(num_cpus=workers, include_dashboard=False, **ray_init_kwargs())
    out: dict = {"workers": workers, "batch_size": cfg.batch_size, "blocks": []}
    per_block = max(2, epochs // 2)
    times: dict[str, list] = {k: [] for k in data}
    memory: dict = {}
    try:
        for k in ("in_memory", "prepared", "prepared", "in_memory"):
            be = RayHorovodBackend(cfg, data[k], ResourcesSpec(workers=workers))
            try:
                block = [max(m["train_seconds"] for m in be.run_epoch(e)) for e in range(per_block)]
                memory.setdefault(k, be.execute(probes.memory, "memory"))
            finally:
                be.shutdown()
            out["blocks"].append({"data": k, "epoch_seconds": block})
            times[k] += block[1:]
            log(f"mnist {workers} workers, {k}: epochs " + " ".join(f"{t:.3f}" for t in block) + " s")
        n = len(data["in_memory"].x_train)
        for k, v in times.items():
            out[k] = {**stats(v), "samples_per_s": n / stats(v)["median"], "all": v, "worker_memory": memory[k]}
        out["prepared_over_in_memory_samples_per_s"] = (out["prepared"]["samples_per_s"]
                                                        / out["in_memory"]["samples_per_s"])
    finally:
        ray.shutdown()
    return out


# --------------------------------------------------------------------------- 3. out of core
def write_npy_pair(directory: Path, rows: int, cols: int, seed: int, chunk: int = 16_384) -> dict:
    """``x.npy`` (float32, rows x cols) and ``y.npy`` (int64 0/1 from a fixed linear rule
    plus noise), written chunk by chunk into ``open_memmap`` files, each chunk's map
    dropped before the next, so the writer stays small."""
    from numpy.lib.format import open_memmap

    directory.mkdir(parents=True, exist_ok=True)
    w = np.random.default_rng(1234).standard_normal(cols).astype(np.float32) / np.sqrt(cols)
    t0 = time.perf_counter()
    xs = open_memmap(directory / "x.npy", mode="w+", dtype=np.float32, shape=(rows, cols))
    ys = open_memmap(directory / "y.npy", mode="w+", dtype=np.int64, shape=(rows,))
    del xs, ys
    for i, lo in enumerate(range(0, rows, chunk)):
        hi = min(rows, lo + chunk)
        rng = np.random.default_rng([seed, i])
        x = rng.standard_normal((hi - lo, cols), dtype=np.float32)
        xs = open_memmap(directory / "x.npy", mode="r+")
        ys = open_memmap(directory / "y.npy", mode="r+")
        xs[lo:hi], ys[lo:hi] = x, linear_labels(x, w, rng)
        xs.flush()
        ys.flush()
        del xs, ys
    return {"rows": rows, "features": cols, "bytes": dir_bytes(directory), "seconds": time.perf_counter() - t0}


def lrjob_prepare(job: Path, logs: Path) -> dict:
    """``lrjob prepare JOB --json``: its time, peak RSS and what it printed."""
    r = measure([LRJOB, "prepare", str(job), "--json"], log_file=logs / f"prepare-{job.stem}.log")
    out = _mem(r)
    for line in reversed(r["output_tail"]):
        if line.startswith("{"):
            out["info"] = json.loads(line)
            break
    return out


def probe_main(args) -> int:
    """Child of :func:`step_probe`: ``TrainingLoop.train_epoch`` for the first
    ``--probe-steps`` steps of epoch 1 on a prepared set; prints one JSON line."""
    import mmap
    import resource

    from lr_core.config import LoopConfig
    from lr_core.loop import TrainingLoop
    from lr_core.prepared import open_prepared

    data = open_prepared(args.probe)
    if args.probe_madvise_random:  # what-if: no read-around on the training features
        data.x_train._mmap.madvise(mmap.MADV_RANDOM)
    loop = TrainingLoop(LoopConfig(kind="binary", batch_size=1024, learning_rate=0.1, optimizer="sgd"), data)
    read0, flt0, t0 = proc_read_bytes(os.getpid()), resource.getrusage(resource.RUSAGE_SELF).ru_majflt, \
        time.perf_counter()
    loop.train_epoch(0, stop_step=args.probe_steps)
    seconds = time.perf_counter() - t0
    read = proc_read_bytes(os.getpid()) - read0
    k = args.probe_steps
    print(json.dumps({"steps": k, "steps_per_epoch": -(-len(data.x_train) // 1024), "seconds": seconds,
                      "seconds_per_step": seconds / k, "read_bytes": read, "read_bytes_per_step": read / k,
                      "needed_bytes_per_step": 1024 * data.x_train.shape[1] * data.x_train.itemsize,
                      "major_faults": resource.getrusage(resource.RUSAGE_SELF).ru_majflt - flt0}))
    return 0


def step_probe(home: Path, limit: int, steps: int, madvise_random: bool, logs: Path) -> dict:
    """The first ``steps`` steps of lrjob's in-process loop on the prepared set in a
    ``limit`` cgroup, page cache dropped first: seconds and bytes read per step, and the
    epoch time they project. ``madvise_random``: the what-if with MADV_RANDOM."""
    drop_page_cache(home)
    cmd = [PY, "-m", "benchmarks.data_scale", "--probe", str(home), "--probe-steps", str(steps)]
    if madvise_random:
        cmd.append("--probe-madvise-random")
    tag = "madvise_random" if madvise_random else "as_is"
    with MemoryCgroup(f"lrbench-probe-{tag}", limit) as cg:
        r = measure(cmd, cgroup=cg, log_file=logs / f"probe-{tag}.log")
    out = {"exit_code": r["exit_code"], "limit_bytes": limit, "cgroup": r["cgroup"]}
    try:
        out.update(json.loads(r["output_tail"][-1]))
        out["projected_epoch_seconds"] = out["seconds_per_step"] * out["steps_per_epoch"]
        out["read_amplification"] = out["read_bytes_per_step"] / out["needed_bytes_per_step"]
    except (IndexError, ValueError, KeyError):
        out["output_tail"] = r["output_tail"]
    return out


def _run_summary(r: dict) -> dict:
    """What the report keeps of one ``lrjob run``: success, time, IO, memory per process."""
    keep = {k: r[k] for k in ("exit_code", "seconds", "timed_out", "needed_sigkill", "read_bytes",
                              "peak_rss_wait4")}
    keep["ok"] = r["exit_code"] == 0 and not r["timed_out"]
    keep["cgroup"] = r.get("cgroup")
    procs = r["processes"]
    driver = [p for p in procs if p["role"] == "driver"]
    keep["driver"] = driver[0] if driver else None
    keep["workers"] = [p for p in procs if p["role"] == "worker"]
    others: dict = {}
    for p in procs:
        if p["role"] not in ("driver", "worker"):
            o = others.setdefault(p["role"], {"count": 0, "peak_VmRSS": 0, "peak_RssAnon": 0})
            o["count"] += 1
            for k in ("peak_VmRSS", "peak_RssAnon"):
                o[k] = max(o[k], p.get(k, 0))
    keep["other_processes"] = others
    if not keep["ok"]:
        keep["output_tail"] = r["output_tail"]
    return keep


def lrjob_run(job: Path, out_dir: Path, workers: int, limit: int | None, home: Path, timeout: float,
              logs: Path) -> dict:
    """``lrjob run JOB --workers N --output DIR`` in a memory cgroup of its own (``limit``
    bytes, or none), prepared files dropped from the page cache first; every process of
    the run polled every 0.5 s."""
    drop_page_cache(home)
    with MemoryCgroup(f"lrbench-{out_dir.name}", limit) as cg:
        r = measure([LRJOB, "run", str(job), "--workers", str(workers), "--output", str(out_dir)], cgroup=cg,
                    interval=0.5, uss=True, timeout=timeout, log_file=logs / f"{out_dir.name}.log")
        s = _run_summary(r)
        s["leftover_processes"] = cg.stop_leftovers()
    if r["exit_code"] != 0 and not r["timed_out"]:
        s["dmesg_oom"] = dmesg_oom_lines()
    summary = out_dir / "summary.json"
    if summary.is_file():
        sj = json.loads(summary.read_text())
        s["run_summary"] = {k: sj.get(k) for k in ("status", "wall_seconds", "train_seconds", "samples_per_s",
                                                   "startup_seconds", "error")}
        s["run_summary"]["final"] = {k: v for k, v in (sj.get("final") or {}).items()
                                     if k in ("train_loss", "val_loss", "val_accuracy", "val_auc")}
    return s


def run_outcome(path: Path):
    """A finished run's final parameters (newest checkpoint) and history, for ``compare``."""
    from launcher.report.parity import Outcome
    from launcher.rundir import RunDir

    run = RunDir.open(path)
    ckpt = run.latest_checkpoint()
    return Outcome(ckpt["params"] if ckpt else {}, run.history())


def parity(ref: Path, dist: Path, workers: int) -> dict:
    """``launcher.report.parity.compare`` of two finished runs (docs/design.md#parity-rule)."""
    from launcher.report.parity import compare

    try:
        report = compare(run_outcome(ref), run_outcome(dist), (), workers)
    except Exception as e:  # noqa: BLE001 - an unfinished run has nothing to compare
        return {"error": f"{type(e).__name__}: {e}"}
    return {"ok": report.ok, "max_param_diff": report.max_param_diff, "max_metric_diff": report.max_metric_diff,
            "param_tolerance": report.param_rows[0][3] if report.param_rows else None,
            "metric_tolerance": report.metric_rows[0][2] if report.metric_rows else None,
            "params": [(n, list(s), d) for n, s, d, _ in report.param_rows],
            "metrics": [(n, d) for n, d, _ in report.metric_rows]}


def bench_out_of_core(tmp: Path, sizes: dict, cols: int, limits: tuple[int, int], timeout: float,
                      probe_steps: tuple[int, int]) -> dict:
    """Prepare a small and a >= 3 GiB set; probe the in-process step rate under the small
    limit; train the big set in-process under the small limit and on 2 workers under the
    large one; then without limits (parity, and flat memory against the small set)."""
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    out: dict = {"features": cols, "limits_bytes": {"in_process": limits[0], "two_workers": limits[1]},
                 "run_timeout_s": timeout, "read_ahead_kb": read_ahead_kb(tmp)}
    for name, (rows, seed) in sizes.items():
        log(f"out-of-core: writing the {name} npy pair ({rows} x {cols}, {rows * cols * 4 / 1e9:.2f} GB)")
        out[f"{name}_npy"] = write_npy_pair(tmp / f"npy-{name}", rows, cols, seed)
    train = {"epochs": 1, "batch_size": 1024, "learning_rate": 0.1, "optimizer": "sgd"}
    jobs, homes = {}, {}
    for name in ("small", "big"):
        jobs[name] = write_job(tmp / f"ooc_{name}.yaml", f"ooc_{name}",
                               {"source": "npy", "path": str(tmp / f"npy-{name}"), "val_path": str(tmp / "npy-val"),
                                "cache": str(tmp / "ooc-cache")}, train=train)
        log(f"  lrjob prepare {jobs[name].name}")
        out[f"prepare_{name}"] = p = lrjob_prepare(jobs[name], logs)
        log(f"    {p['seconds']:.0f} s, peak RSS {_mb(p['peak_rss_wait4'])}")
        homes[name] = Path(p["info"]["prepared"])
    for steps, what_if in zip(probe_steps, (False, True)):
        key = "step_probe_madvise_random" if what_if else "step_probe"
        log(f"  step probe{' (what-if: MADV_RANDOM)' if what_if else ''}: {steps} in-process steps in a "
            f"{_mb(limits[0])} cgroup")
        out[key] = pr = step_probe(homes["big"], limits[0], steps, what_if, logs)
        if "seconds_per_step" in pr:
            log(f"    {pr['seconds_per_step']:.3f} s/step, {pr['read_bytes_per_step'] / 1e6:.0f} MB read/step "
                f"({pr['read_amplification']:.0f}x the rows), epoch projected {pr['projected_epoch_seconds']:.0f} s")
    runs = tmp / "runs"
    plan = [("big_in_process_limited", "big", 0, limits[0]), ("big_two_workers_limited", "big", 2, limits[1]),
            ("big_in_process", "big", 0, None), ("big_two_workers", "big", 2, None),
            ("small_two_workers", "small", 2, None)]
    for key, name, workers, limit in plan:
        log(f"  lrjob run {name} --workers {workers} in a {_mb(limit) if limit else 'no-limit'} cgroup")
        out[key] = r = lrjob_run(jobs[name], runs / key, workers, limit, homes[name], timeout, logs)
        cg = r["cgroup"]
        log(f"    exit {r['exit_code']}{' (timed out)' if r['timed_out'] else ''}, {r['seconds']:.0f} s, read "
            f"{r['read_bytes'] / 1e9:.1f} GB, max usage {_mb(cg['max_usage_in_bytes'])}, peak anon rss "
            f"{_mb(cg['peak_stat'].get('rss'))}, oom_kill {cg['oom_kill']}")
    out["parity_big"] = parity(runs / "big_in_process", runs / "big_two_workers", 2)
    if out["big_in_process_limited"]["ok"] and out["big_two_workers_limited"]["ok"]:
        out["parity_big_limited"] = parity(runs / "big_in_process_limited", runs / "big_two_workers_limited", 2)
    out["flat_memory"] = flat_memory(out["small_two_workers"], out["big_two_workers"],
                                     out["small_npy"]["bytes"], out["big_npy"]["bytes"])
    return out


def read_ahead_kb(path: Path) -> int | None:
    """The read-ahead window of the block device under ``path`` (mmap read-around uses it)."""
    try:
        dev = os.stat(path).st_dev
        sys_dev = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        for q in (sys_dev / "queue", sys_dev.resolve().parent / "queue"):
            if (q / "read_ahead_kb").is_file():
                return int((q / "read_ahead_kb").read_text())
    except (OSError, ValueError):
        pass
    return None


def flat_memory(small: dict, big: dict, small_bytes: int, big_bytes: int) -> dict:
    """Growth of the driver's peak RSS and each worker's peak USS and RssAnon from the
    small set to the big one (workers in pid order, i.e. start order)."""
    def fig(p, k):
        return (p or {}).get(f"peak_{k}")

    out = {"dataset_bytes": {"small": small_bytes, "big": big_bytes},
           "how": "/proc/PID/status and psutil USS polled every 0.5 s for every pid in the run's memory cgroup "
                  "(no limit); workers: the pids whose cmdline names HorovodWorker (ray::BaseHorovodWorker...)"}
    for k in ("VmRSS", "RssAnon", "USS"):
        a, b = fig(small["driver"], k), fig(big["driver"], k)
        out[f"driver_peak_{k}"] = {"small": a, "big": b, "growth": (b - a) if a and b else None}
    ws, wb = small["workers"], big["workers"]
    out["workers"] = []
    for i in range(min(len(ws), len(wb))):
        row = {"index": i}
        for k in ("USS", "RssAnon", "VmRSS", "RssFile"):
            a, b = fig(ws[i], k), fig(wb[i], k)
            row[k] = {"small": a, "big": b, "growth": (b - a) if a is not None and b is not None else None}
        out["workers"].append(row)
    return out


# --------------------------------------------------------------------------- clean-up
RAY_TMP = Path(tempfile.gettempdir()) / "ray"


def ray_sessions() -> set[str]:
    """The Ray session folders under /tmp/ray now."""
    return {d.name for d in RAY_TMP.glob("session_*") if not d.is_symlink()}


def remove_ray_sessions(before: set[str], pids: set[int]) -> list[str]:
    """Remove the Ray session folders our runs made: new since ``before`` and named after
    one of our driver pids (``session_<time>_<pid>``); not the one ``session_latest`` names."""
    link = RAY_TMP / "session_latest"
    latest = link.resolve().name if link.is_symlink() else None
    removed = []
    for name in sorted(ray_sessions() - before):
        tail = name.rsplit("_", 1)[-1]
        if tail.isdigit() and int(tail) in pids and name != latest:
            shutil.rmtree(RAY_TMP / name, ignore_errors=True)
            removed.append(name)
    return removed


def ray_processes_of(sessions: set[str]) -> list[str]:
    """Processes still alive that name one of ``sessions`` (our runs' Ray session folders)
    on their command line: gcs_server, raylet and Ray's agents do."""
    import psutil

    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(s in cmd for s in sessions):
            left.append(f"{p.info['pid']} {cmd[:120]}")
    return left


# --------------------------------------------------------------------------- report
def _mb(b) -> str:
    return "-" if b is None else f"{b / MiB:.0f} MiB"


def summarize(r: dict) -> str:
    m = r.get("machine", {})
    lines = [f"load averages (1, 5, 15 min) at the start {_load(m.get('load_average_start'))}, at the end "
             f"{_load(m.get('load_average_end'))}, {m.get('cpus')} cores", "",
             "| measure | value | target |", "|---|---|---|"]
    if "ingest" in r:
        lines += _summary_ingest(r["ingest"])
    if "mnist" in r:
        lines += _summary_mnist(r["mnist"])
    if "out_of_core" in r:
        lines += _summary_ooc(r["out_of_core"])
    return "\n".join(lines)


def _load(v) -> str:
    return "/".join(f"{x:.1f}" for x in v) if v else "?"


def _summary_ingest(g: dict) -> list[str]:
    f, q, m = g["files"], g["ratios"], g["medians"]
    n = f"{f['rows']:,} x {f['features']} CSV ({f['csv_bytes'] / 1e6:.0f} MB)"
    return [
        f"| ingest {n}: old reader / `lrjob validate --data` (fresh cache; compiled modules kept, as installed) | "
        f"{m['old_reader']['seconds']:.2f} s / {m['csv_fresh']['seconds']:.2f} s (**{q['old_over_new_time']:.1f}x**; "
        f"read alone {q['old_read_only_over_new_time']:.1f}x) | >= 10x |",
        *([f"| the same, lrjob's modules compiled on every command (`PYTHONDONTWRITEBYTECODE` set here) | "
           f"{m['old_reader_recompiled']['seconds']:.2f} s / {m['csv_fresh_recompiled']['seconds']:.2f} s "
           f"(**{q['old_over_new_time_recompiled']:.1f}x**) | |"] if "old_over_new_time_recompiled" in q else []),
        f"| the same, CPU seconds (user + system, all threads) | {m['old_reader']['cpu_seconds']:.1f} s / "
        f"{m['csv_fresh']['cpu_seconds']:.1f} s (**{q['old_over_new_cpu']:.1f}x**) | |",
        f"| ingest peak RSS / float32 data ({f['float32_bytes'] / 1e6:.0f} MB): new | "
        f"{_mb(m['csv_fresh']['peak_rss'])} "
        f"(**{q['new_peak_rss_over_float32']:.2f}x**; growth over `import launcher.cli` "
        f"{_mb(m['import_baseline']['peak_rss'])}: {q['new_rss_growth_over_float32']:.2f}x); old reader "
        f"{_mb(m['old_reader']['peak_rss'])} ({q['old_peak_rss_over_float32']:.1f}x) | <= 2x |",
        f"| ingest Parquet / CSV time (fresh cache) | {m['parquet_fresh']['seconds']:.1f} s / "
        f"{m['csv_fresh']['seconds']:.1f} s (**{q['parquet_over_csv_time']:.2f}x**), peak RSS "
        f"{_mb(m['parquet_fresh']['peak_rss'])} | |",
        f"| reuse: `validate --data` with the cache prepared / fresh | {m['csv_reuse']['seconds']:.2f} s / "
        f"{m['csv_fresh']['seconds']:.2f} s ({q['reuse_over_fresh_time_csv']:.2f}x; `validate` without --data "
        f"{m['validate_no_data']['seconds']:.2f} s) | |",
    ]


def _summary_mnist(g: dict) -> list[str]:
    ip, d = g["in_process"], g["distributed"]
    rows = [
        f"| MNIST in-process, batch 64: prepared uint8 map / in-memory float32 samples/s | "
        f"{ip['prepared']['samples_per_s']:.0f} / {ip['in_memory']['samples_per_s']:.0f} "
        f"(**{ip['prepared_over_in_memory_samples_per_s']:.3f}x**; train losses differ by at most "
        f"{ip['max_train_loss_diff']:.1e}) | >= 0.95x |"]
    if "prepared" in d:
        rows.append(f"| MNIST {d['workers']} workers, batch {d['batch_size']}: prepared / in-memory samples/s | "
                    f"{d['prepared']['samples_per_s']:.0f} / {d['in_memory']['samples_per_s']:.0f} "
                    f"(**{d['prepared_over_in_memory_samples_per_s']:.3f}x**; medians of {d['in_memory']['n']} epochs "
                    f"each, one group at a time) | >= 0.95x |")
    rows.append(f"| MNIST prepared on disk / in memory (train features) | {g['prepared_train_x_bytes'] / 1e6:.0f} MB / "
                f"{g['in_memory_train_x_nbytes'] / 1e6:.0f} MB (whole dir {g['prepared_dir_bytes'] / 1e6:.0f} MB, "
                f"whole dataset {g['in_memory_nbytes'] / 1e6:.0f} MB) | ~47 / 188 MB |")
    return rows


def _summary_ooc(o: dict) -> list[str]:
    if "skipped" in o:
        return [f"| out-of-core | skipped: {o['skipped']} | |"]
    big = o["big_npy"]
    gb = f"{big['bytes'] / 1e9:.2f} GB"
    rows = []
    for key in ("small", "big"):
        p = o[f"prepare_{key}"]
        rows.append(f"| `lrjob prepare` {key} set ({o[key + '_npy']['bytes'] / 1e9:.2f} GB npy, {o['features']} "
                    f"features) | {p['seconds']:.0f} s, peak RSS {_mb(p['peak_rss_wait4'])} (anon "
                    f"{_mb(p.get('peak_RssAnon'))}) | |")
    for key, what in (("step_probe", "as is"), ("step_probe_madvise_random", "what-if MADV_RANDOM")):
        pr = o.get(key, {})
        if "seconds_per_step" in pr:
            rows.append(f"| in-process step rate on the {gb} set in a {_mb(pr['limit_bytes'])} cgroup, {what} "
                        f"({pr['steps']} steps) | {pr['seconds_per_step']:.3f} s/step, read "
                        f"{pr['read_bytes_per_step'] / 1e6:.0f} MB/step for {pr['needed_bytes_per_step'] / 1e6:.1f} MB "
                        f"of rows (**{pr['read_amplification']:.0f}x**); epoch projected "
                        f"**{pr['projected_epoch_seconds'] / 60:.1f} min** (read-ahead {o['read_ahead_kb']} KB) | |")
    for key, what in (("big_in_process_limited", "--workers 0"), ("big_two_workers_limited", "--workers 2"),
                      ("big_in_process", "--workers 0"), ("big_two_workers", "--workers 2")):
        r = o[key]
        cg = r["cgroup"]
        where = f"a {_mb(cg['limit_bytes'])} cgroup" if key.endswith("limited") else "no memory limit"
        if r["ok"]:
            status = "ok"
        elif r["timed_out"]:
            status = (f"**did not finish within {o['run_timeout_s']:.0f} s** (stopped"
                      f"{', SIGTERM ignored: SIGKILL' if r['needed_sigkill'] else ''}; oom_kill {cg['oom_kill']})")
        else:
            error = ((r.get("run_summary") or {}).get("error") or "").split("; last")[0][:200]
            status = f"**FAILED** (exit {r['exit_code']}, oom_kill {cg['oom_kill']}{': ' + error if error else ''})"
        rows.append(f"| {gb} set, `lrjob run {what}` in {where} | {status}, {r['seconds']:.0f} s, read "
                    f"{r['read_bytes'] / 1e9:.1f} GB from disk; max_usage_in_bytes {_mb(cg['max_usage_in_bytes'])} "
                    f"(page cache included), peak anon rss {_mb(cg['peak_stat'].get('rss'))} | succeeds |")
    for key, what in (("parity_big", "no limit"), ("parity_big_limited", "in the cgroups")):
        p = o.get(key)
        if p is None:
            continue
        if "error" in p:
            rows.append(f"| parity, {gb} set, --workers 0 vs 2 ({what}) | not compared: {p['error']} | |")
        else:
            rows.append(f"| parity, {gb} set, --workers 0 vs 2 ({what}): max parameter / metric difference | "
                        f"{p['max_param_diff']:.2e} / {p['max_metric_diff']:.2e} "
                        f"({'holds' if p['ok'] else '**fails**'}) | <= {p['param_tolerance']:.0e} / "
                        f"{p['metric_tolerance']:.0e} |")
    f = o["flat_memory"]
    d = f["driver_peak_VmRSS"]
    span = f"{f['dataset_bytes']['small'] / 1e9:.1f} GB -> {f['dataset_bytes']['big'] / 1e9:.1f} GB"
    rows.append(f"| flat memory, {span} (2 workers, no limit): driver peak RSS | "
                f"{_mb(d['small'])} -> {_mb(d['big'])} (**{_mb(d['growth'])}**) | <= 100 MB |")
    for w in f["workers"]:
        u, a = w["USS"], w["RssAnon"]
        rows.append(f"| flat memory: worker {w['index']} peak USS; its anonymous part (RssAnon) | "
                    f"{_mb(u['small'])} -> {_mb(u['big'])} (**{_mb(u['growth'])}**); anon {_mb(a['small'])} -> "
                    f"{_mb(a['big'])} (**{_mb(a['growth'])}**) | <= 100 MB |")
    return rows


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results/data_scale.json",
                   help="JSON to write, a .md summary beside it (default: bench-results/data_scale.json)")
    p.add_argument("--quick", action="store_true", help="small sizes (100k-row CSV, 0.4 GB set): a smoke run")
    p.add_argument("--parts", default="ingest,mnist,out_of_core",
                   help="comma-separated sections to run, of ingest, mnist, out_of_core (default: all three)")
    p.add_argument("--reps", type=int, default=7, help="MNIST in-process epochs per dataset (first is warm-up; default 7)")
    p.add_argument("--ingest-reps", type=int, default=4,
                   help="interleaved rounds of the ingest commands (default 4; medians of all)")
    p.add_argument("--dist-epochs", type=int, default=12,
                   help="MNIST epochs per dataset with 2 workers, in two blocks (each block's first is a warm-up; default 12)")
    p.add_argument("--run-timeout", type=float, default=600,
                   help="seconds an out-of-core `lrjob run` may take before it is stopped (default 600)")
    p.add_argument("--tmp", default=None, help="folder for the generated data (default: the system temp dir)")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # child of step_probe: a prepared dir
    p.add_argument("--probe-steps", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--probe-madvise-random", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        return probe_main(args)
    signal.signal(signal.SIGTERM, _interrupt)
    parts = set(args.parts.split(","))
    q = args.quick
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="lrjob-data-scale-", dir=args.tmp))
    sessions_before = ray_sessions()
    r: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                           "load_average_start": os.getloadavg()}, "quick": q, "tmp": str(tmp)}
    seconds: dict = {}
    try:
        if "ingest" in parts:
            t0 = time.perf_counter()
            r["ingest"] = bench_ingest(tmp, 100_000 if q else 1_000_000, 20, reps=2 if q else args.ingest_reps)
            seconds["ingest"] = time.perf_counter() - t0
        if "mnist" in parts:
            t0 = time.perf_counter()
            r["mnist"] = bench_mnist(tmp, 3 if q else args.reps, 3 if q else args.dist_epochs)
            seconds["mnist"] = time.perf_counter() - t0
        if "out_of_core" in parts:
            t0 = time.perf_counter()
            why = MemoryCgroup.available()
            if why:
                r["out_of_core"] = {"skipped": why}
            else:
                # val first: the others' jobs name it; 810k x 1000 float32 = 3.24 GB (>= 3 GiB)
                sizes = {"val": (20_000, 3), "small": (27_000, 2), "big": (100_000 if q else 810_000, 1)}
                r["out_of_core"] = bench_out_of_core(tmp, sizes, 1000, (768 * MiB, 2 * GiB), args.run_timeout,
                                                     (3, 30) if q else (8, 100))
            seconds["out_of_core"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ours = {os.getpid(), *RUN_PIDS}
        new = {n for n in ray_sessions() - sessions_before if n.rsplit("_", 1)[-1] in {str(x) for x in ours}}
        r["cleanup"] = {"tmp_removed": not tmp.exists(), "ray_processes_left": ray_processes_of(new),
                        "ray_sessions_removed": remove_ray_sessions(sessions_before, ours)}
    r["machine"]["load_average_end"] = os.getloadavg()
    r["section_seconds"] = seconds
    r["bench_seconds"] = time.perf_counter() - t_all
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2, default=float) + "\n")
    text = summarize(r)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out} and {out.with_suffix('.md')} in {r['bench_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
