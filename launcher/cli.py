"""lrjob: run logistic and softmax training jobs on 0..N Horovod workers through Ray.

    lrjob run jobs/mnist_softmax.yaml --workers 2
    lrjob parity jobs/binary_synthetic.yaml --workers 2
    lrjob predict runs/binary_2d --input points.csv

Exit codes: 0 success, 2 bad input (spec, data, arguments), 1 training or cluster failure,
130 interrupted (Ctrl-C; the last checkpoint is kept).
"""
from __future__ import annotations

import os
import shlex

# One OpenMP thread is the fastest setting for these small models on few cores
# (measured: see benchmarks/); must be set before MXNet loads. The user's value wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from lr_core.errors import LrjobError, LrjobInputError, SpecError, clip  # noqa: E402
from lr_core.files import missing_folders, remove_empty  # noqa: E402

__all__ = ["main", "build_parser"]

EXAMPLES = {
    "run": "lrjob run jobs/binary_synthetic.yaml --workers 2 --set train.epochs=3",
    "parity": "lrjob parity jobs/digits_softmax.yaml --workers 2",
    "validate": "lrjob validate jobs/mnist_softmax.yaml --set train.batch_size=128",
    "prepare": "lrjob prepare jobs/mnist_softmax.yaml --set data.cache=/shared/lrjob-prepared",
    "doctor": "lrjob doctor",
    "predict": "lrjob predict runs/buyers --input customers.csv --id-column customer_id --output preds.csv",
    "export": "lrjob export runs/binary_2d-20260101T000000Z --format onnx",
    "evaluate": "lrjob evaluate runs/mnist_softmax-20260101T000000Z",
    "submit": "lrjob submit jobs/binary_synthetic.yaml --address http://127.0.0.1:8265 --workers 2 --wait",
    "status": "lrjob status lrjob-binary_synthetic-20260101T000000Z --address http://127.0.0.1:8265",
    "logs": "lrjob logs lrjob-binary_synthetic-20260101T000000Z --follow --address http://127.0.0.1:8265",
    "stop": "lrjob stop lrjob-binary_synthetic-20260101T000000Z --address http://127.0.0.1:8265",
    "list": "lrjob list --address http://127.0.0.1:8265",
    "runs": "lrjob runs --where train.optimizer=adam --sort -val_accuracy",
    "compare": "lrjob compare runs/digits_softmax-20260101T000000Z runs/digits_softmax-20260102T000000Z",
    "k8s": "lrjob k8s jobs/mnist_softmax.yaml --kind rayjob --workers 4 --image lrjob:0.1.0",
    "sweep": "lrjob sweep jobs/digits_softmax.yaml --workers 0 --grid train.learning_rate=0.01,0.1,1 "
             "--grid train.batch_size=64,256",
    "worker": "horovodrun --gloo -np 2 -H localhost:2 lrjob worker jobs/binary_synthetic.yaml --output runs/x",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse errors are bad input: one line, exit 2
        """Print the usage and ``lrjob: error: <message>`` to stderr, then exit 2."""
        self.print_usage(sys.stderr)
        sys.stderr.write(f"lrjob: error: {message}\n")
        sys.exit(2)


def _sub(subs, name, help_, description=None):
    p = subs.add_parser(name, help=help_, description=description or help_,
                        epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=argparse.RawDescriptionHelpFormatter)
    return p


def _add_spec_args(p, workers_default_help="from the spec (resources.workers)"):
    p.add_argument("job", nargs="?", help="job spec YAML (e.g. jobs/binary_synthetic.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"number of Horovod workers; 0 = in-process reference run (default: {workers_default_help})")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (default: from the spec)")


def _add_oversubscribe(p):
    p.add_argument("--oversubscribe", action="store_true",
                   help="with a local Ray (no --address): allow more workers x cpus_per_worker than this "
                        "machine has CPUs; the workers then share the cores (slower; without it such a "
                        "request is refused)")


class _Version(argparse.Action):
    """``--version``: ``launcher.__version__``."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show lrjob's version and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"lrjob {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``lrjob`` argument parser with every subcommand (submit, status, logs, stop, list and
    k8s are added by ``launcher.deploy``)."""
    p = _Parser(prog="lrjob", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Without it, `lrjob --version` answered "the following arguments are required: COMMAND".
    p.add_argument("--version", action=_Version)
    subs = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subs.required = True

    r = _sub(subs, "run", "train a job and write its run directory")
    _add_spec_args(r)
    r.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--output", default=None,
                   help="run directory (default: runs/<name>-<UTC timestamp>), or a storage URI such as "
                        "s3://bucket/run (staged locally under --runs-dir/.staging and uploaded)")
    r.add_argument("--runs-dir", default="runs", help="parent of new run directories (default: runs)")
    r.add_argument("--resume", default=None, metavar="RUN",
                   help="continue RUN (a folder or a storage URI) from its newest checkpoint; a staging copy "
                        "kept after a failed upload is uploaded to its URI as it goes on")
    _add_oversubscribe(r)
    r.add_argument("--track", default=None, metavar="URI",
                   help="also log the run to MLflow at URI, e.g. http://127.0.0.1:5000 or file:./mlruns "
                        "(sets tracking.mlflow.uri)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--quiet", action="store_true", help="print only the run directory")
    g.add_argument("--json", action="store_true", help="print one JSON object per event (for scripts)")

    q = _sub(subs, "parity", "run --workers 0 and --workers N and compare parameters and metrics")
    _add_spec_args(q)
    for action in q._actions:
        if action.dest == "workers":
            action.help = ("workers of the distributed run, >= 1 (default: the spec's resources.workers, "
                           "2 when it is 0); compared with --workers 0")
    q.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    q.add_argument("--keep", default=None, metavar="DIR", help="keep both run directories under DIR")
    _add_oversubscribe(q)

    v = _sub(subs, "validate", "check a job spec and print it resolved")
    _add_spec_args(v)
    v.add_argument("--data", action="store_true", help="also load and check the data")

    pp = _sub(subs, "prepare", "convert a job's data once into its prepared, memory-mapped form")
    pp.description = (
        "Reads the job's data source once, in blocks, checks every row as training does, and writes\n"
        "its rows as raw arrays that every worker memory-maps, with a SHA-256 per 64 MB shard, into\n"
        "<data.cache>/<source>-<key>/ (default data.cache: $LRJOB_DATA_HOME/prepared, else\n"
        "~/.cache/lrjob/prepared). The key hashes the data section, seed, model kind and the source\n"
        "files' names, sizes and times: an unchanged job reuses its folder (after checking it), a\n"
        "changed one prepares anew. lrjob run prepares on first use too. Removing the cache folder\n"
        "is safe; --clean does it for you.")
    pp.add_argument("job", nargs="?", help="job spec YAML (optional with --list/--clean)")
    pp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec field, e.g. --set data.cache=/shared/prepared (repeatable)")
    pp.add_argument("--json", action="store_true", help="print the result as JSON")
    g = pp.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="list the prepared folders of the cache (JOB's data.cache, "
                                                      "else the default) with their size and origin")
    g.add_argument("--clean", action="store_true", help="remove the cache's prepared folders (all but JOB's "
                                                       "current one, when JOB is given)")

    _sub(subs, "doctor", "check MXNet, the Horovod build, Ray and the data cache").add_argument(
        "--gpu", action="store_true", help="also check the GPU stack (CUDA MXNet, NCCL)")

    pr = _sub(subs, "predict", "predict with a trained run's exported model")
    pr.description = (
        "Writes one CSV row per input row: the id (the --id-column value, else the row number,\n"
        "from 1), the predicted class in the training data's own labels (data.label_map\n"
        "inverted: yes/no in, yes/no out) and the probability of every class, one column\n"
        "prob_<label> each, in class order:\n"
        "    row,prediction,prob_no,prob_yes\n"
        "    1,yes,0.203441423,0.796558577\n"
        "Columns are matched by name when the file and the training data name them.")
    pr.add_argument("run", help="run directory (holds model/)")
    pr.add_argument("--input", required=True,
                    help="CSV or Parquet (columns matched by name; extra columns ignored) or NPY/NPZ (x)")
    pr.add_argument("--output", default=None, help="CSV to write (default: stdout)")
    pr.add_argument("--id-column", default=None, metavar="NAME",
                    help="a column of --input passed through as each row's id, as written (CSV or Parquet; "
                         "default: the row number, column 'row')")

    ex = _sub(subs, "export", "write a trained run's model in another format: model/model.onnx")
    ex.description = (
        "Writes RUN/model/model.onnx from the run's MXNet export (runs trained before lrjob wrote it,\n"
        "or whose ONNX export failed), with the input scale and standardization in the graph, and\n"
        "records its input and output in model/meta.json (key onnx). onnxruntime alone then gives\n"
        "the probabilities lrjob predict prints.")
    ex.add_argument("run", help="run directory (holds model/)")
    ex.add_argument("--format", default="onnx", choices=["onnx"], help="the format to write (default: onnx)")

    ev = _sub(subs, "evaluate", "report a trained model's metrics on a dataset")
    ev.add_argument("run", help="run directory")
    ev.add_argument("--data", default=None, help="CSV/NPZ with labels (default: the run's validation data)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")

    rs = _sub(subs, "runs", "a table of past runs")
    rs.add_argument("--dir", default=None, help="folder of run directories (default: runs)")
    rs.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                    help="only runs whose spec field or result has this value, e.g. --where train.learning_rate=0.1 "
                         "or --where status=completed (repeatable: all must hold)")
    rs.add_argument("--sort", default=None, metavar="[-]KEY",
                    help="order by a result (val_accuracy, val_loss, best_val_accuracy, wall_seconds) or a spec "
                         "field (train.learning_rate); a leading - sorts descending: --sort -val_accuracy "
                         "(default: oldest first)")
    cp = _sub(subs, "compare", "two runs side by side: spec differences and results")
    cp.add_argument("run_a")
    cp.add_argument("run_b")

    sw = _sub(subs, "sweep", "run a grid or random search of a job on Ray Tune, one lrjob run per trial")
    sw.description = (
        "Every trial is an lrjob run of the job with some fields overridden, in its own run directory\n"
        "(DIR/trials/tNNN), with the job's workers (or in-process with --workers 0), packed onto the\n"
        "Ray cluster's CPUs. Writes DIR/sweep.json, sweep.csv and sweep.png and names the best run.\n"
        "A job file's sweep: section (grid, range, random, seed, metric, asha, concurrent) gives the\n"
        "same settings; the command line wins.")
    _add_spec_args(sw)
    sw.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                    help="try each value of a spec field, e.g. --grid train.learning_rate=0.01,0.1,1 "
                         "(repeatable: every combination)")
    sw.add_argument("--range", dest="ranges", action="append", default=[], metavar="FIELD=LOW:HIGH[:log|lin|int]",
                    help="draw a spec field from a range, e.g. --range train.learning_rate=1e-3:1:log (with --random)")
    sw.add_argument("--random", type=int, default=None, metavar="K",
                    help="K points drawn from the --range fields (for each --grid point)")
    sw.add_argument("--seed", type=int, default=None, help="seed of the --random draws (default 0)")
    sw.add_argument("--metric", default=None,
                    help="the metric that ranks trials (default: the --asha metric, else val_accuracy); losses "
                         "are minimized, others maximized")
    sw.add_argument("--asha", default=None, metavar="METRIC",
                    help="stop poor trials early with ASHA on this per-epoch metric, e.g. --asha val_loss")
    sw.add_argument("--concurrent", type=int, default=None, metavar="N",
                    help="at most N trials at once (default: as many as the CPUs take)")
    sw.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    sw.add_argument("--output", default=None, help="sweep directory (default: sweeps/<name>-<UTC timestamp>)")
    sw.add_argument("--sweeps-dir", default="sweeps", help="parent of new sweep directories (default: sweeps)")
    sw.add_argument("--resume", default=None, metavar="DIR",
                    help="continue the sweep in DIR: only its trials that have not ended run")
    _add_oversubscribe(sw)
    sw.add_argument("--track", default=None, metavar="URI",
                    help="log the sweep to MLflow at URI, each trial a child run (sets tracking.mlflow.uri)")

    w = _sub(subs, "worker", "run as one rank under horovodrun/mpirun (rank 0 writes the run directory)")
    w.add_argument("job", nargs="?", help="job spec YAML")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field (repeatable)")
    w.add_argument("--output", default=None, help="run directory (shared storage when ranks are on several hosts)")
    w.add_argument("--resume", default=None, metavar="RUN", help="continue RUN from its newest checkpoint")

    from .deploy.submit import add_parsers as add_submit_parsers

    add_submit_parsers(subs, _sub)

    from .deploy.k8s import add_parser as add_k8s_parser

    add_k8s_parser(subs, _sub)
    return p


def _load(args):
    from .spec import load_spec

    if not args.job:
        raise SpecError(f"JOB: give a job spec file, e.g. {EXAMPLES.get(args.command, EXAMPLES['run'])}")
    overrides = list(args.overrides)
    if getattr(args, "workers", None) is not None:
        overrides.append(f"resources.workers={args.workers}")
    if getattr(args, "gpus_per_worker", None) is not None:
        overrides.append(f"resources.gpus_per_worker={args.gpus_per_worker}")
    if getattr(args, "track", None) is not None:
        overrides.append(f"tracking.mlflow.uri={args.track}")
    # a run's own job.yaml (--resume RUN): written before data.standardize existed, it reads as off
    from .rundir import RunDir

    run_file = bool(getattr(args, "resume", None)) and (Path(args.job) == RunDir(args.resume).spec_file
                                                        or args.job == getattr(args, "remote_spec", None))
    with _named_where_given(args):
        return load_spec(args.job, overrides, run_file=run_file)


@contextlib.contextmanager
def _named_where_given(args):
    """A ``SpecError`` raised inside ends with where the command line gave the value (``_given_by``)."""
    try:
        yield
    except SpecError as e:
        raise SpecError(f"{e}{_given_by(str(e), args)}") from None


def _given_by(message: str, args) -> str:
    """" (from --set train.epochs=x)" when ``message`` is about a field the command line set, so
    the user looks at the command, not at the spec file; "" otherwise (and when it says so already)."""
    if message.startswith("--set "):
        return ""

    def about(field: str) -> bool:  # the message is about this field, or a field inside it
        return any(message.startswith(field + end) for end in (" ", ":", "."))

    flags = {"tracking.mlflow.uri": ("--track", getattr(args, "track", None)),  # applied after every --set
             "resources.workers": ("--workers", getattr(args, "workers", None)),
             "resources.gpus_per_worker": ("--gpus-per-worker", getattr(args, "gpus_per_worker", None))}
    for field, (flag, value) in flags.items():
        if value is not None and about(field):
            return f" (from {flag} {value:g})" if isinstance(value, float) else f" (from {flag} {clip(value, 60)})"
    for item in reversed(list(args.overrides)):  # the last --set of a field is the one applied
        field = item.partition("=")[0].strip()
        if field and about(field):
            return f" (from --set {clip(item, 60)})"
    return ""


def _spec_file_of(run: str) -> Path:
    """The ``job.yaml`` of the run directory to resume."""
    from .rundir import RunDir

    spec_file = RunDir(run).spec_file
    if not spec_file.is_file():
        raise SpecError(f"--resume {run}: not a run directory (no job.yaml); pass a folder that lrjob run wrote")
    return spec_file


def cmd_run(args) -> int:
    """``lrjob run``: train the job (or continue ``--resume RUN``) and write its run directory;
    returns 0, or 130 after Ctrl-C."""
    from .driver import DriverOptions, run_job
    from .report.progress import Reporter

    from .storage import is_remote

    if args.resume and (args.output or (args.runs_dir != "runs" and not is_remote(args.resume))):
        raise SpecError("--resume continues in the run's own directory; drop --output/--runs-dir")
    with tempfile.TemporaryDirectory(prefix="lrjob-spec-") as tmp:
        if args.resume and not args.job and is_remote(args.resume):
            # the run's job.yaml, read from its storage (docs/design.md#storage)
            from .storage import open_remote

            args.job = args.remote_spec = str(Path(tmp) / "job.yaml")
            Path(args.job).write_bytes(open_remote(args.resume, "--resume").spec_bytes())
        elif args.resume and not args.job:
            args.job = str(_spec_file_of(args.resume))
        spec = _load(args)
    mode = "json" if args.json else "quiet" if args.quiet else "human"
    reporter = Reporter(mode)
    try:
        run_job(spec, args.output, resume=args.resume, reporter=reporter,
                options=DriverOptions(address=args.address, runs_dir=args.runs_dir,
                                      oversubscribe=args.oversubscribe))
    except KeyboardInterrupt as e:
        if getattr(e, "resume", None):
            sys.stderr.write(f"lrjob: interrupted; checkpoint {e.checkpoint} is kept; continue with: {e.resume}\n")
        else:
            from .storage import without_logins

            given = list(_ARGV)
            if getattr(e, "run_dir", None) and not args.output and not args.resume:  # into the folder it made
                given += ["--output", e.run_dir]
            again = shlex.join(["lrjob", *map(without_logins, given)])  # a URI's login is never printed
            sys.stderr.write(f"lrjob: interrupted before the first checkpoint; start it again with: {again}\n")
        _json_event(args, {"event": "interrupted", "resume": getattr(e, "resume", None), "exit_code": 130})
        return 130
    return 0


def cmd_parity(args) -> int:
    """``lrjob parity``: run the job with ``--workers 0`` and with N workers and print the parity
    report; returns 0 when parity holds, else 1. The runs are deleted unless ``--keep``."""
    from .driver import DriverOptions, run_job
    from .report.parity import compare

    spec = _load(args)
    workers = args.workers if args.workers is not None else (spec.resources.workers or 2)
    if workers < 1:
        raise SpecError(f"--workers must be >= 1 for parity (it compares against --workers 0), got {workers}")
    from .backends.cluster import check_embedded_gpus, cluster_address, embedded_cpus

    if cluster_address(args.address) is None:
        # the local Ray's GPUs and CPUs are known now: a request beyond them is refused before the
        # reference run, not after it (GPUs first, as check_resources does once Ray is up)
        check_embedded_gpus(workers, spec.resources.gpus_per_worker)
        embedded_cpus(workers, spec.resources.cpus_per_worker, args.oversubscribe)
    made = _keep_folder(Path(args.keep), workers) if args.keep else []
    # as _keep_folder made it: "new/../other" is "other" (a folder "new" made on the way would stay)
    base = Path(os.path.realpath(args.keep)) if args.keep else Path(tempfile.mkdtemp(prefix="lrjob-parity-"))
    # the reference run is in-process, on the CPU, whatever the distributed run's devices
    ref_spec = spec.with_overrides(["resources.workers=0", "resources.gpus_per_worker=0"])
    dist_spec = spec.with_overrides([f"resources.workers={workers}"])
    try:
        print(f"parity: {spec.name}, reference run (--workers 0) ...", file=sys.stderr)
        ref = run_job(ref_spec, output=base / "workers-0")
        print(f"parity: {spec.name}, distributed run (--workers {workers}) ...", file=sys.stderr)
        dist = run_job(dist_spec, base / f"workers-{workers}",
                       options=DriverOptions(address=args.address, oversubscribe=args.oversubscribe))
        report = compare(ref, dist, spec.model.hidden, workers)
        print(report.render())
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
        elif base.is_dir() and any(base.iterdir()):
            print(f"runs kept in {base}", file=sys.stderr)
        else:  # nothing was written in the folders this check made: they go too, deepest first
            remove_empty(made)
    return 0 if report.ok else 1


def _keep_folder(keep: Path, workers: int) -> list[Path]:
    """``parity --keep``: a folder made now (returns the folders made, itself and the parents it
    needed, deepest first), or one without a finished run of either side. A finished run kept by
    an earlier check would be found complete and compared again, training nothing: a stale
    verdict. An unfinished one (the check was stopped) is continued, as the same ``lrjob run``
    would continue it. The path is taken as the system resolves it (``realpath``): "nope/../b" is
    "b", and makes no "nope"."""
    from .rundir import RunDir

    plain = Path(os.path.realpath(keep))
    if (keep.exists() or keep.is_symlink() or plain.exists()) and not plain.is_dir():
        raise LrjobInputError(f"--keep {keep}: exists and is not a folder; give a folder to keep both runs in")
    held = [name for name in ("workers-0", f"workers-{workers}")
            if (plain / name / "summary.json").is_file() and (RunDir(plain / name).summary() or {}).get("status")
            == "completed"]
    if held:
        raise LrjobInputError(f"--keep {keep}: already holds the finished {' and '.join(held)} of an earlier check, "
                              f"which would be read again rather than trained; give a new folder, or remove them")
    made = missing_folders(plain)
    try:
        plain.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty(made)  # what it made before the failure goes again
        raise LrjobInputError(f"--keep {keep}: cannot make the folder ({e.strerror or e}); give a folder you "
                              f"can write") from None
    return made


def cmd_validate(args) -> int:
    """``lrjob validate``: print the resolved spec as YAML (with ``--data``, also load and check
    the data); returns 0."""
    from .report.progress import prepare_feedback

    spec = _load(args)
    d = spec.prepared_data(*prepare_feedback()) if args.data else None  # a data error is then all it prints
    sys.stdout.write(spec.to_yaml())
    if d is not None:
        print(f"# data ok: {len(d.x_train)} train / {len(d.x_val)} {d.val_name} rows, {d.num_features} features",
              file=sys.stderr)
    return 0


def cmd_prepare(args) -> int:
    """``lrjob prepare``: prepare the job's data (or find it prepared and intact); prints the
    directory and its size on stdout; returns 0."""
    from lr_core.prepared import open_prepared

    from .report.progress import prepare_feedback

    if args.list or args.clean:
        return _prepare_cache_command(args)
    spec = _load(args)
    t0, started = time.perf_counter(), time.time()
    home = spec.prepare_data(*prepare_feedback())
    d = open_prepared(home)
    size = sum(f.stat().st_size for f in home.iterdir())
    reused = (home / "manifest.json").stat().st_mtime < started  # written before this command began
    info = {"prepared": str(home), "reused": reused, "train_rows": int(len(d.x_train)),
            "val_rows": int(len(d.x_val)), "features": d.num_features, "dtype": str(d.x_train.dtype),
            "bytes": size, "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        print(json.dumps(info))
    else:
        print(home)
        print(f"# {'reused' if reused else 'prepared'}: {info['train_rows']} train / {info['val_rows']} "
              f"{d.val_name} rows, {d.num_features} features ({info['dtype']}), {size / 1e6:.1f} MB, "
              f"{info['seconds']:.1f} s", file=sys.stderr)
    return 0


def _prepare_cache_command(args) -> int:
    """``lrjob prepare --list`` / ``--clean``."""
    from lr_core.prepared import cache_entries, clean_cache, default_cache

    from .report.progress import prepare_feedback

    spec = _load(args) if args.job else None
    cache = spec.data.cache if spec is not None else None
    root = Path(cache).expanduser() if cache else default_cache()
    if args.list:
        entries = cache_entries(root)
        if args.json:
            print(json.dumps(entries))
            return 0
        print(f"# {root}: {len(entries)} prepared folder(s), {sum(e['bytes'] for e in entries) / 1e6:.1f} MB")
        for e in entries:
            rows = f"{e['rows'][0]}+{e['rows'][1]} rows" if e["rows"] else "damaged"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["modified"]))
            print(f"{Path(e['path']).name}  {rows}  {e['bytes'] / 1e6:.1f} MB  {when}  {e['from'] or ''}")
        return 0
    keep = {str(spec.prepare_data(*prepare_feedback()))} if spec is not None else set()
    removed = clean_cache(root, keep)
    print(json.dumps({"removed": removed, "kept": sorted(keep)}) if args.json else
          f"removed {len(removed)} prepared folder(s) from {root}" + (f"; kept {next(iter(keep))}" if keep else ""))
    return 0


def cmd_doctor(args) -> int:
    """``lrjob doctor``: returns ``run_doctor``'s exit code (0 when every check passes)."""
    from .doctor import run_doctor

    return run_doctor(gpu=args.gpu)


def _model(run: str):
    """The exported model of a run directory (or of a model folder given directly)."""
    from lr_core.export import ExportedModel

    from .rundir import RunDir

    run_dir = RunDir.open(run)
    model = run_dir.model_dir if run_dir.model_dir.is_dir() else run_dir.path
    if not (model / "meta.json").is_file():
        raise LrjobInputError(f"{run}: no exported model (expected {run_dir.model_dir / 'meta.json'}); "
                              f"pass a finished run directory")
    return ExportedModel(model)


def _input_blocks(path: str, meta: dict, require_labels: bool, id_column: str | None = None, first: bool = True):
    """The rows of ``path`` in blocks ``(x, y)``, each checked as training data is (the
    errors name the file's row); ``y`` is None when labels are not required (``predict``, whose
    ``--input`` names the file; ``evaluate`` requires them, and its ``--data`` names it). An
    ``id_column`` is never a feature. On the ``first`` read of the file, once every row has passed,
    the ids are counted (``_count_ids``) and the columns the model does not use are named
    (``_note_ignored_columns``): an error stands alone, and a second read says nothing again."""
    import numpy as np

    from lr_core.data import apply_label_map, check_features, check_labels
    from lr_core.errors import DataError
    from lr_core.tables import open_table

    if "://" not in str(path) and not any(c in str(path) for c in "*?[") and not os.path.lexists(path):
        # a local file named on this command line (a URI or a glob is resolved by open_table)
        raise DataError(f"{path}: file not found; check {'--data' if require_labels else '--input'}")

    label_column = meta.get("label_column") or "label"
    wanted = _trained_columns(meta)
    if id_column is not None and wanted is not None and id_column in wanted:
        # dropping it would leave the model a feature short ('2 feature columns, the model expects 3')
        raise LrjobInputError(f"--id-column {id_column}: is a feature the model was trained on, and an id is "
                              f"never a feature; name another column, or leave --id-column out to number the rows")
    table = None
    if wanted is not None:  # the model's columns by name first: other columns (a text id) are never read
        try:
            table = open_table(path, label_column, require_labels=require_labels,
                               features=_list_column(wanted) or wanted)
        except DataError:
            pass  # a file without those names: read as it is, and said so below
    by_name = table is not None
    table = table or open_table(path, label_column, require_labels=require_labels)
    if wanted is not None and _named(table.columns) and table.columns != wanted:
        # The file names its columns and so did the training data: take the model's, in its order.
        base = _list_column(wanted)
        missing = [c for c in wanted if c not in table.columns] if base is None else []
        if missing:  # the training job's data.features is not what the user can fix here
            shown = ", ".join(wanted[:8]) + (", ..." if len(wanted) > 8 else "")
            raise LrjobInputError(f"{path}: no column {missing[0]!r}"
                                  f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}, which the "
                                  f"model was trained on; give every training column by name, in any order: {shown}")
        table = open_table(path, label_column, require_labels=require_labels, features=base or wanted)
    elif id_column is not None and id_column in table.columns:  # unnamed training columns: all but the id
        table = open_table(path, label_column, require_labels=require_labels,
                           features=[c for c in table.columns if c != id_column])
    done = 0
    for x, y in table.batches():
        x = check_features(np.asarray(x), str(path), int(meta["num_features"]), table.columns, offset=done)
        if require_labels:  # a label column, if the file has one, is not needed to predict
            if meta.get("label_map"):
                y = apply_label_map(np.asarray(y, dtype=object), meta["label_map"], str(path), offset=done)
            y = check_labels(np.asarray(y), meta["kind"], int(meta["num_classes"]), str(path), offset=done)
        else:
            y = None
        done += len(x)
        yield x, y
    if not done:
        raise LrjobInputError(f"{path}: no rows; give at least one row of features")
    if first and id_column is not None:
        _count_ids(path, id_column, done)
    if first and by_name:
        _note_ignored_columns(path, label_column, wanted, id_column)


def _note_ignored_columns(path: str, label_column: str, wanted: list[str], id_column: str | None) -> None:
    """Say which columns of the file the model does not use (a note on stderr, not an error)."""
    from lr_core.errors import DataError
    from lr_core.tables import open_table

    try:
        every = open_table(path, label_column, require_labels=False).columns
    except DataError:
        return
    base = _list_column(wanted)
    extra = [c for c in every if c not in wanted and c != id_column and c != base]
    if extra:
        shown = ", ".join(extra[:10]) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        print(f"lrjob: note: {path}: {len(extra)} column(s) the model was not trained on, ignored: {shown}",
              file=sys.stderr)


def _named(columns: list[str]) -> bool:
    """Whether a table's column names are its own (not 'column N' of a file without them)."""
    import re

    return bool(columns) and not all(re.fullmatch(r"column \d+", c) for c in columns)


def _trained_columns(meta: dict) -> list[str] | None:
    columns = list(meta.get("columns") or [])
    return columns if _named(columns) else None


def _list_column(columns: list[str]) -> str | None:
    """``pixels`` for the columns ``pixels[0]``, ``pixels[1]``, ... of one list column."""
    base = columns[0].rsplit("[", 1)[0] if columns[0].endswith("[0]") else None
    return base if base and columns == [f"{base}[{i}]" for i in range(len(columns))] else None


def _read_input(path: str, meta: dict, require_labels: bool):
    """Every row of ``path`` (checked), in memory."""
    import numpy as np

    from lr_core.errors import DataError

    try:
        xs, ys = zip(*_input_blocks(path, meta, require_labels))
        return np.concatenate(xs), (np.concatenate(ys) if require_labels else None)
    except MemoryError:
        raise DataError(f"{path}: not enough memory to hold every row at once; evaluate a smaller file, "
                        f"or split it") from None


def _prediction_rows(model, path: str, id_column: str | None):
    """The CSV text of ``predict``, block by block: a header ``<id>,prediction,prob_<label>...``,
    then per row its id, its predicted label and every class's probability
    (docs/design.md#cli)."""
    import csv
    import io
    import itertools

    from lr_core.tables import text_column

    labels = model.labels
    ids = itertools.chain.from_iterable(text_column(path, id_column)) if id_column else None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([id_column or "row", "prediction", *(f"prob_{label}" for label in labels)])
    done = 0
    for x, _ in _input_blocks(path, model.meta, require_labels=False, id_column=id_column, first=False):
        pred, prob = model.probabilities(x, scale=model.scale)
        names = list(itertools.islice(ids, len(x))) if ids is not None else range(done + 1, done + len(x) + 1)
        for name, c, p in zip(names, pred, prob):
            writer.writerow([name, labels[c], *(format(v, ".9g") for v in p)])
        done += len(x)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _count_ids(path: str, id_column: str, rows: int) -> None:
    """The id column has one value per row of features (both are read from the file)."""
    from lr_core.tables import text_column

    n = sum(len(block) for block in text_column(path, id_column))
    if n != rows:
        raise LrjobInputError(f"{path}: --id-column {id_column} gives {n} values for {rows} rows of features; "
                              f"every row needs an id (empty lines and quoting differ?)")


def cmd_predict(args) -> int:
    """``lrjob predict``: write ``<id>,prediction,prob_<label>...`` CSV rows for ``--input`` to
    ``--output`` or stdout; returns 0."""
    from .rundir import atomic_write_text

    if args.output:  # before any work: a folder or a missing parent is the user's to fix
        out = Path(args.output)
        if out.is_dir():
            raise LrjobInputError(f"--output {out}: is a folder; give a file to write, e.g. "
                                  f"--output {out / 'predictions.csv'}")
        if not out.parent.exists():
            raise LrjobInputError(f"--output {out}: folder {out.parent} does not exist")
        if out.is_symlink() or (out.exists() and not out.is_file()):
            # Replacing it would drop a link, a FIFO or a device node the user made (docs/design.md#cli).
            raise LrjobInputError(f"--output {out}: exists and is not a regular file (a symbolic link, FIFO or "
                                  f"device); remove it or choose another path")
    model = _model(args.run)
    taken = ["prediction", *(f"prob_{label}" for label in model.labels)]
    if args.id_column in taken:  # the output's header would name two columns alike
        raise LrjobInputError(f"--id-column {args.id_column}: the output has a column of that name "
                              f"({', '.join(taken)}); rename the id column in the input file")
    count, largest = 0, 0.0
    # every row is checked, and the ids counted, before anything is written
    for x, _ in _input_blocks(args.input, model.meta, require_labels=False, id_column=args.id_column):
        count += len(x)
        largest = max(largest, float(abs(x).max())) if x.size else largest
    if model.scale is not None and model.scale < 1 and 0 < largest <= 1:
        # images scaled already (pixels / 255): the model scales them again, silently wrong
        sys.stderr.write(f"lrjob: warning: every value of {args.input} is within [-1, 1], but this model "
                         f"multiplies its inputs by {model.scale:.6g} (its training data's stored scale); "
                         f"give the values as stored, e.g. pixels 0-255\n")

    def text():  # read a second time, now that every row is known to be good
        return _prediction_rows(model, args.input, args.id_column)

    if args.output:
        try:
            atomic_write_text(out, text())
        except OSError as e:
            raise LrjobInputError(f"--output {out}: cannot write ({e.strerror or e}); choose a writable path") \
                from None
        print(f"wrote {count} predictions to {out}", file=sys.stderr)
    else:
        for piece in text():
            sys.stdout.write(piece)
    return 0


def cmd_evaluate(args) -> int:
    """``lrjob evaluate``: print the exported model's metrics on ``--data`` (default: the run's
    validation data), as text or with ``--json``; returns 0."""
    import numpy as np

    from lr_core.metrics import EvalCounts, from_logits, summarize

    from .report.progress import prepare_feedback
    from .rundir import RunDir

    model = _model(args.run)
    meta = model.meta
    if args.data:
        x, y = _read_input(args.data, meta, require_labels=True)
        where, scale = args.data, model.scale  # the file's values as predict takes them
    else:
        spec = RunDir.open(args.run).spec()
        if spec is None:
            raise LrjobInputError(f"{args.run}: no job.yaml to find the validation data; pass --data FILE")
        d = spec.prepared_data(*prepare_feedback())
        x, y, where, scale = d.x_val, np.asarray(d.y_val), f"{spec.name} {d.val_name} set", d.scale
    kind = meta["kind"]
    pred, prob, losses = from_logits(kind, model.logits(x, scale=scale), float(meta["threshold"]), y)
    k = 2 if kind == "binary" else int(meta["num_classes"])
    counts = EvalCounts(k)
    counts.update(y, pred, losses)
    res = summarize(kind, counts, y, prob if kind == "binary" else None)
    res["labels"] = labels = model.labels  # class j's own label: confusion and recall are in this order
    if args.json:
        print(json.dumps(res))
    else:
        print(f"evaluate {args.run} on {where} ({len(y)} rows)")
        if kind == "binary":
            print(f"  positive   {labels[1]} (tp, fp, precision, recall, f1 and auc are about it)")
        for key, val in res.items():
            if key in ("confusion", "per_class_recall", "labels"):
                continue
            print(f"  {key:<10} {val:.4f}" if isinstance(val, float) else f"  {key:<10} {val}")
        if "per_class_recall" in res:
            print("  recall     " + ", ".join(f"{label}: {r:.4f}" if r is not None else f"{label}: -"
                                              for label, r in zip(labels, res["per_class_recall"])))
        if "confusion" in res:
            width = max(5, *(len(label) for label in labels[:50]))
            print("  confusion (rows: true, columns: predicted)")
            print("   " + " " * width + " " + " ".join(f"{label[:width]:>{width}}" for label in labels))
            for label, row in zip(labels, res["confusion"]):
                print(f"   {label[:width]:>{width}} " + " ".join(f"{v:{width}d}" for v in row))
    return 0


def cmd_export(args) -> int:
    """``lrjob export``: write ``model/model.onnx`` for a run (``lr_core.export.export_onnx``) and
    print its path; returns 0."""
    from lr_core.export import export_onnx

    model = _model(args.run)  # the MXNet export, checked: a damaged one is a one-line error
    print(export_onnx(model.directory))
    return 0


def cmd_sweep(args) -> int:
    """``lrjob sweep``: run the sweep (or continue ``--resume DIR``), print its table and best run;
    returns 0 when every trial ended (a failed trial included) and one completed or was stopped, also
    after a Ctrl-C that came when every trial had ended; 130 after Ctrl-C or SIGTERM that left a trial
    unfinished (or a second one that cut the table), naming the command that continues the sweep."""
    from .sweep import SweepInterrupted

    try:
        result = _sweep(args)
    except SweepInterrupted as e:
        if not e.unfinished:
            sys.stderr.write(f"lrjob: interrupted while the table was written; every trial had ended; write the "
                             f"table again with: {e.resume}\n")
            return 130
        sys.stderr.write(f"lrjob: interrupted; {len(e.unfinished)} trial(s) did not end; continue with: "
                         f"{e.resume}\n")
        return 130
    return 0 if result.best is not None else 1


def _sweep(args):
    from .sweep import SweepOptions, SweepRequest, plan_from_args, resume_sweep, run_sweep

    if args.resume:
        given = [flag for flag, v in (("JOB", args.job), ("--set", args.overrides), ("--grid", args.grid),
                                      ("--range", args.ranges), ("--random", args.random), ("--seed", args.seed),
                                      ("--metric", args.metric), ("--asha", args.asha), ("--workers", args.workers),
                                      ("--gpus-per-worker", args.gpus_per_worker), ("--output", args.output),
                                      ("--track", args.track), ("--concurrent", args.concurrent))
                 if v not in (None, [])]
        if given or args.sweeps_dir != "sweeps":
            raise SpecError(f"--resume continues the sweep's own plan ({args.resume}/plan.json); drop "
                            f"{', '.join(given) or '--sweeps-dir'}")
        result = resume_sweep(args.resume, SweepOptions(address=args.address, oversubscribe=args.oversubscribe))
    else:
        if not args.job:
            raise SpecError("JOB: give a job spec file, e.g. lrjob sweep jobs/digits_softmax.yaml --grid "
                            "train.learning_rate=0.01,0.1")
        overrides = list(args.overrides)
        if args.workers is not None:
            overrides.append(f"resources.workers={args.workers}")
        if args.gpus_per_worker is not None:
            overrides.append(f"resources.gpus_per_worker={args.gpus_per_worker}")
        if args.track is not None:
            overrides.append(f"tracking.mlflow.uri={args.track}")
        with _named_where_given(args):  # a bad value the command line gave says so, as for `lrjob run`
            plan = plan_from_args(args.job, overrides, SweepRequest(
                grid=tuple(args.grid), ranges=tuple(args.ranges), random=args.random, seed=args.seed,
                metric=args.metric, asha=args.asha, concurrent=args.concurrent))
        result = run_sweep(plan, args.output, SweepOptions(sweeps_dir=args.sweeps_dir, address=args.address,
                                                           oversubscribe=args.oversubscribe))
    return result


def cmd_worker(args) -> int:
    """``lrjob worker``: run this process as one rank of a ``horovodrun`` job (``run_rank``);
    returns 0."""
    from .driver import run_rank
    from .report.progress import Reporter

    if args.resume and not args.job:
        args.job = str(_spec_file_of(args.resume))
    spec = _load(args)
    return run_rank(spec, args.output, resume=args.resume, reporter=Reporter("human"))


def cmd_runs(args) -> int:
    """``lrjob runs``: print the table of past runs under ``--dir``; returns 0."""
    from .report.history import DAMAGED, describe_runs, filter_runs, list_runs, render_runs, sort_runs

    if args.dir is not None and not Path(args.dir).is_dir():  # a named folder must exist
        raise LrjobInputError(f"--dir {args.dir}: no such folder; pass the folder lrjob run wrote runs into")
    rows = list_runs(args.dir or "runs")
    for r in rows:  # one damaged run is marked in the table; the others are listed as usual
        if r["status"] == DAMAGED:
            sys.stderr.write(f"lrjob: warning: {r['path']}/summary.json cannot be read or has fields of the wrong "
                             f"type; its row shows what could be read\n")
    rows = filter_runs(describe_runs(rows), args.where)
    if args.sort:
        rows = sort_runs(rows, args.sort)
    if not rows and args.where:
        print(f"no run matches {' and '.join(args.where)}")
        return 0
    print(render_runs(rows, args.dir or "runs"))
    return 0


def cmd_compare(args) -> int:
    """``lrjob compare``: print two runs side by side; returns 0."""
    from .report.history import render_compare

    print(render_compare(args.run_a, args.run_b))
    return 0


def cmd_k8s(args) -> int:
    """``lrjob k8s``: print the Kubernetes manifests (``launcher.deploy.k8s.cmd_k8s``); returns 0."""
    from .deploy.k8s import cmd_k8s as run
    from .spec import load_spec

    if args.job:  # the --set values first, alone: k8s applies --workers/--gpus-per-worker after them
        with _named_where_given(argparse.Namespace(overrides=args.overrides)):
            load_spec(args.job, list(args.overrides))
    with _named_where_given(args):
        return run(args)


def cmd_submit(args) -> int:
    """``lrjob submit``: submit the job to a Ray cluster's Jobs API; returns 0, or with ``--wait``
    0 when the job succeeded, else 1."""
    from .deploy.submit import Submission, submit

    return submit(_load(args), Submission(address=args.address, output=args.output, wait=args.wait,
                                          submission_id=args.submission_id, insecure=args.insecure))


def _submit_cmd(name):
    def run(args):
        from .deploy import submit as s

        return getattr(s, f"cmd_{name}")(args)
    return run


COMMANDS = {"run": cmd_run, "parity": cmd_parity, "validate": cmd_validate, "prepare": cmd_prepare,
            "doctor": cmd_doctor,
            "predict": cmd_predict, "evaluate": cmd_evaluate, "export": cmd_export, "submit": cmd_submit,
            "worker": cmd_worker,
            "runs": cmd_runs, "compare": cmd_compare, "k8s": cmd_k8s, "sweep": cmd_sweep,
            **{n: _submit_cmd(n) for n in ("status", "logs", "stop", "list")}}


def _sort_value_attached(argv: list[str]) -> list[str]:
    """``lrjob runs --sort -val_loss`` as ``--sort=-val_loss``: argparse would take the value for an
    option. Only ``runs`` takes ``--sort``: another command's error shows its arguments as given."""
    if next((a for a in argv if not a.startswith("-")), None) != "runs":
        return list(argv)
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--sort" and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][:2] != "--":
            out.append(f"--sort={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


# the command line of this ``main`` call, as given (a message that says "run it again" quotes it)
_ARGV: list[str] = []

# the commands that can start Horovod ranks (docs/design.md#the-ranks-threads)
RANK_COMMANDS = ("run", "worker", "parity", "sweep")


def main(argv: list[str] | None = None) -> int:
    """The ``lrjob`` entry point: parse ``argv`` and run the command; returns the exit code (0 ok,
    2 bad input, 1 training, cluster or internal failure, 130 interrupted)."""
    from .quiet import silence_known_noise

    silence_known_noise()
    parser = build_parser()
    _ARGV[:] = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args, extra = parser.parse_known_args(_sort_value_attached(_ARGV))
    if extra:  # the command's own usage, not the top level's, for an option after the command
        given = sys.argv[1:] if argv is None else list(argv)
        after = args.command in given and given.index(args.command) < given.index(extra[0]) \
            if extra[0] in given else True
        sub = next((a.choices.get(args.command) for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)), None) if after else None
        (sub or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command in RANK_COMMANDS:
            from .backends.cluster import gloo_loop_nice

            gloo_loop_nice()  # a bad $LRJOB_GLOO_LOOP_NICE fails here, before Ray or hvd.init starts
        return COMMANDS[args.command](args)
    except LrjobError as e:
        sys.stderr.write(f"lrjob: error: {e}\n")
        _json_event(args, {"event": "error", "message": str(e), "exit_code": e.exit_code})
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("lrjob: interrupted\n")
        return 130
    except BrokenPipeError as e:
        gone = [s for s in (sys.stdout, sys.stderr) if _reader_gone(s)]
        if not gone:  # a socket or file of the run's, not our output: a failure like any other
            return _internal_error(e)
        from .report.progress import silence_closed_pipe

        for stream in gone:  # the reader went away (| head): not a failure
            silence_closed_pipe(stream)
        return 0
    except Exception as e:  # a bug, not bad input: keep the traceback
        code = _internal_error(e)
        _json_event(args, {"event": "error", "message": f"internal error: {type(e).__name__}: {e}",
                           "exit_code": code})
        return code


def _json_event(args, event: dict) -> None:
    """With ``run --json``, how the run ended as the stream's last event too (``error`` or
    ``interrupted``, on stdout), so a script reading the events learns why; stderr has said it."""
    if getattr(args, "command", None) != "run" or not getattr(args, "json", False):
        return
    try:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - stdout closed or gone (None): stderr has said it
        pass


def _internal_error(e: BaseException) -> int:
    """A bug, not bad input: the traceback, one line asking to report it; exit code 1."""
    try:
        traceback.print_exception(type(e), e, e.__traceback__)
        sys.stderr.write("lrjob: internal error (above); please report it with the command you ran\n")
    except OSError:
        pass
    return 1


def _reader_gone(stream) -> bool:
    """Whether ``stream`` is a pipe whose reader closed it (``| head``): the only
    BrokenPipeError that ends lrjob with exit code 0 (docs/design.md#exit-codes)."""
    import select

    try:
        fd = stream.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


if __name__ == "__main__":
    sys.exit(main())
