"""pytest plugin for `make mutants` (mutmut loads it with ``-p mutants_scope``).

mutmut runs, for each mutant, the tests that called the mutated function while it
collected its stats. This plugin narrows that further, so that a run fits on 2 cores:

- only the fast, in-process tests named in ``SCOPE`` take part at all (tests that drive
  a ``lrjob`` subprocess with signals, or need Ray and Horovod, are left out);
- a mutant of function ``f`` in module ``m`` runs only the tests ``SCOPE`` gives for
  ``m.f``, else for ``m``: a mutant of ``lr_core.sharding`` is not judged by a 5-second
  resume test that happens to call it;
- the tests run fastest first (durations from mutmut's stats), so a killed mutant is
  usually killed by a quick test.

With no mutant under test (stats, clean and forced-fail runs) only the first rule holds.
An entry is a test file name, or ``file::pattern`` for some of its tests, or ``!file::pattern``
for tests to leave out of the module's scope (slow tests whose claims smaller ones check); a
file named here that does not exist (yet) is simply absent.
"""
from __future__ import annotations

import fnmatch
import gc
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

# The training loop in-process on tiny data: hundredths of a second each.
_CORE = ("test_losses_oracle.py", "test_optimizers_oracle.py", "test_sharding.py",
         "test_sharding_more.py", "test_state.py", "test_config.py", "test_errors.py", "test_models.py",
         "test_comm.py", "test_loop.py", "test_mutant_kills_loop.py",
         # the in-process runs on standardized, class-weighted rows (about a second each)
         "test_standardize.py::test_training_matches_the_oracle_on_standardized_weighted_rows*")

# pyarrow readers on small local files (the S3 test starts a server: left out).
_TABLES = tuple(f"test_tables.py::{p}" for p in ("test_csv*", "test_parquet*", "test_npy*", "test_npz*", "test_missing*",
                                                  "test_a_directory*", "test_uri*", "test_fingerprint*", "test_glob*",
                                                  "test_open*", "test_block*", "test_read_all*"))

# whole in-process runs (run_job, workers=0) on small jobs: about a second each; the
# mid-epoch checkpoints (checkpoint.every_steps) are written and resumed only by these
_DRIVER = ("test_driver.py", "test_resume.py::test_mid_epoch*", "test_resume.py::test_a_restart_continues_from_the_mid_epoch*",
           "test_resume.py::test_a_resume_on_other_data*", "test_mutant_kills_driver.py")

# two in-process runs that judge only the epoch loop, the resume lines of the output and the exported
# model (a best epoch between mid-epoch checkpoints, the early stop, the epoch timeout, the tracker; the
# resume messages): about a second each, spared every other function of the driver
_DRIVER_BEST = "test_mutant_kills_driver.py::test_the_best_epoch_and_the_stopping_epoch*"
_DRIVER_RESUMED = "test_mutant_kills_driver.py::test_a_resume_says_where*"

# the run directory's tests but the redraw by a second process (below, for the lock's mutants)
_RUNDIR = ("test_rundir.py", "!test_rundir.py::test_redrawing_a_run_takes_its_lock*")

SCOPE: dict[str, tuple[str, ...]] = {
    "lr_core.comm": _CORE,
    "lr_core.config": _CORE,
    # test_properties.py is left out: hypothesis draws new cases each run (a verdict must
    # not depend on luck) and takes seconds per mutant.
    # the two slowest (the installed MNIST cache, 12 s; every CSV encoding, 8 s) are left out:
    # the small IDX and CSV files of test_data.py and test_tables.py check the same readers
    "lr_core.data": ("test_data.py", "test_sources.py", "test_spec.py", "test_mutant_kills_data.py") + _TABLES
    + ("test_mutant_kills_tables_arrays.py", "test_mutant_kills_tables_csv.py")
    + ("!test_sources.py::test_mnist_cache_matches_the_idx_bytes", "!test_tables.py::test_csv_encoding_and_csv_module_errors"),
    # test_mutant_kills_tables_arrays.py: the NumPy readers' refusals and display's URIs; and the
    # in-process tests of the CSV chunks' row count, the line-width guard and the numbers taken
    # from Arrow buffers (their names do not start with a reader's name)
    "lr_core.tables": _TABLES + ("test_data.py", "test_text_column.py", "test_mutant_kills_tables_arrays.py", "test_mutant_kills_tables_csv.py",
                                 "test_tables.py::test_a_line*", "test_tables.py::test_a_local_csv*",
                                 "test_tables.py::test_a_csv*", "test_tables.py::test_plain*"),
    # the two tests of a set larger than the memory budget (32 MiB mapped and smaps read 64 times;
    # a run of 6,000 rows of 4 KiB read row by row), 1 to 3 s each, judge only what maps and reads it
    "lr_core.prepared": ("test_prepared.py", "test_mutant_kills_prepared.py",
                         "!test_prepared.py::test_mapped_pages_of_a_large_set*",
                         "!test_prepared.py::test_training_maps_none_of_a_large_set"),
    **{f"lr_core.prepared.{f}": ("test_prepared.py", "test_mutant_kills_prepared.py")
       for f in ("xǁMappedPagesǁ__init__", "xǁMappedPagesǁactive", "xǁMappedPagesǁread", "xǁMappedPagesǁrelease",
                 "x__reads_whole", "x__advise", "x_read_rows")},
    # test_hostile.py: the hostile files whose errors the message helpers shorten (in-process CLI)
    "lr_core.errors": ("test_errors.py", "test_mutant_kills_errors.py", "test_data.py", "test_spec.py",
                       "test_hostile.py"),
    # and the ONNX export of small wide models (the rest of test_onnx.py trains MNIST first)
    "lr_core.export": ("test_export.py", "test_mutant_kills_export.py", "test_onnx.py::test_a_wide*") + _RUNDIR,
    "lr_core.faults": ("test_faults.py", "test_mutant_kills_faults.py") + _RUNDIR,
    # and the two in-process runs that take the loop's other paths: a learning-rate schedule,
    # and a set larger than memory (each step reads its rows from the file)
    "lr_core.loop": _CORE + ("test_schedule.py::test_the_loop_trains_the_oracles_scheduled_run*",
                             "test_prepared.py::test_training_maps_none_of_a_large_set"),
    "lr_core.losses": _CORE + ("test_mutant_kills_losses.py",),
    "lr_core.metrics": ("test_metrics.py",) + _CORE,
    "lr_core.models": _CORE,
    "lr_core.sharding": ("test_sharding.py", "test_sharding_more.py", "test_losses_oracle.py"),
    # an epoch cut into segments by mid-epoch checkpoints: the driver's in-process runs cut them
    "lr_core.sharding.x_segments": _CORE + _DRIVER + ("!" + _DRIVER_BEST, "!" + _DRIVER_RESUMED),
    "lr_core.state": ("test_state.py", "test_optimizers_oracle.py"),
    "launcher.report.parity": ("test_parity_compare.py",),
    "launcher.rundir": _RUNDIR + ("test_mutant_kills_rundir.py",),
    # the redraw of a run by a second process, which must take the run's lock (11 s: two
    # `python -m launcher.report.plots`), judges the lock's mutants only
    **{f"launcher.rundir.xǁRunLockǁ{m}": ("test_rundir.py", "test_mutant_kills_rundir.py")
       for m in ("__init__", "acquire", "release")},
    "launcher.rundir.x__holder_pid": ("test_rundir.py", "test_mutant_kills_rundir.py"),
    "launcher.driver": _DRIVER + ("!" + _DRIVER_BEST, "!" + _DRIVER_RESUMED),
    "launcher.driver.xǁDriverǁ_epochs": _DRIVER + ("!" + _DRIVER_RESUMED,),
    "launcher.driver.xǁDriverǁ_train": _DRIVER,
    # the one in-process run whose best epoch's checkpoint is gone (summary.json's warning), 2 s
    "launcher.driver.xǁDriverǁ_exported_params": _DRIVER + (
        "!" + _DRIVER_RESUMED, "test_early_stopping.py::test_a_lost_best_checkpoint_exports_the_last_epoch_with_a_warning",),
    # a run's storage URI staged in the constructor: the in-process runs to a file:// store (about a second each)
    "launcher.driver.xǁDriverǁ__init__": _DRIVER + ("!" + _DRIVER_BEST, "!" + _DRIVER_RESUMED,
                                                   "test_storage.py::test_a_file_uri*"),
    # the same command again on a finished run returns the stored summary and writes nothing (a second each)
    "launcher.driver.xǁDriverǁ_finished_already": _DRIVER + (
        "!" + _DRIVER_BEST, "!" + _DRIVER_RESUMED, "test_resume.py::test_the_same_command_on_a_finished_run_writes_nothing*"),
    "lr_core.schedule": ("test_schedule.py", "test_mutant_kills_schedule.py"),
    # bounded reads of small files: a spec, a run's JSON, a model's meta.json (test_hostile.py's
    # 400,000-cell rows and the run directory's tests only pass through them, and made each
    # timeout of a mutant that reads without a bound cost 30 to 60 s)
    "lr_core.files": ("test_mutant_kills_files.py", "test_export.py", "test_spec.py"),
}

# mutmut's own process: this plugin is imported once, there, before any mutant's run is forked
_MUTMUT_PID = os.getpid()

ALL = frozenset(e for entries in SCOPE.values() for e in entries if not e.startswith("!"))


def _mutant_under_test() -> str | None:
    """``lr_core.sharding.x_local_plan`` for mutant ``lr_core.sharding.x_local_plan__mutmut_3``;
    None outside a mutant's run."""
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    return name.partition("__mutmut_")[0] if "__mutmut_" in name else None


def scope_of(function: str | None) -> frozenset[str]:
    if function is None:
        return ALL
    module = function.rpartition(".")[0]
    return frozenset(SCOPE.get(function, SCOPE.get(module, ())))


def _matches(file: str, name: str, entry: str) -> bool:
    efile, _, pattern = entry.partition("::")
    return efile == file and (not pattern or fnmatch.fnmatchcase(name, pattern))


def in_scope(nodeid: str, entries: frozenset[str]) -> bool:
    path, _, name = nodeid.partition("::")
    file = Path(path).name
    if any(_matches(file, name, e[1:]) for e in entries if e.startswith("!")):
        return False
    return any(_matches(file, name, e) for e in entries if not e.startswith("!"))


_DURATIONS: dict[tuple, dict[str, float]] = {}


def _durations() -> dict[str, float]:
    """mutmut's clean duration of each test, read once per version of its stats file (the
    parent process reads it, so the mutants' forked processes need not parse 2.5 MB each)."""
    p = Path("mutmut-stats.json")
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
        if key not in _DURATIONS:
            _DURATIONS.clear()
            _DURATIONS[key] = json.loads(p.read_text()).get("duration_by_test", {})
        return _DURATIONS[key]
    except (OSError, ValueError):
        return {}


@pytest.hookimpl(hookwrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """tests/conftest.py calls project code when it is imported (``data_home()``), and
    pytest imports it again for every run. That import is set-up, not a test: it runs
    the original code, so a mutant (or mutmut's forced-failure check) is judged by the
    tests alone instead of breaking the collection."""
    active = os.environ.get("MUTANT_UNDER_TEST")
    if active is not None:
        os.environ["MUTANT_UNDER_TEST"] = ""
    try:
        yield
    finally:
        if active is not None:
            os.environ["MUTANT_UNDER_TEST"] = active


def pytest_ignore_collect(collection_path, config):
    """Test files outside the scope are not even imported (one being edited elsewhere
    cannot break a run that does not use it)."""
    name = collection_path.name
    if collection_path.suffix == ".py" and name.startswith("test_"):
        return None if any(e.partition("::")[0] == name for e in ALL) else True
    return None


def pytest_configure(config):
    """With a mutant under test, mutmut names every test that called its function: on
    average seven files, three of them in the function's scope. The others are dropped
    before collection (collecting a file costs more than most killed mutants' tests); one
    name is kept if none is in scope, so that nothing runs (exit 5) instead of every test;
    pytest still imports that one file (a file named on the command line is collected
    whatever pytest_ignore_collect says)."""
    function = _mutant_under_test()
    if function is None:
        _durations()  # read in mutmut's own process, before it forks the mutants' runs
        return
    if not config.args:
        return
    entries = scope_of(function)
    kept = [a for a in config.args if "::" in a and in_scope(a, entries)
            or "::" not in a and any(e.lstrip("!").partition("::")[0] == Path(a).name for e in entries)]
    config.args[:] = kept or config.args[:1]


def pytest_unconfigure(config):
    """mutmut forks every mutant's process from its own, which has imported MXNet, pyarrow
    and the tests. Each forked session's end runs pytest's ``gc.collect()`` five times, over
    every object the fork inherited (about 0.09 s of a mutant's 0.2). What is left once
    mutmut's own session is collected is frozen: the collector skips it in the forks. Done
    in mutmut's own process (no mutant under test), before it forks.

    A forked run ends with ``os._exit``, which runs no ``atexit`` handler: what its session
    made in the temporary folder (pytest's numbered ``basetemp``, the HOME that
    tests/conftest.py makes on each import) is removed here, or a whole run leaves about
    20,000 folders and 17 GB there."""
    if os.getpid() != _MUTMUT_PID:
        _remove_own_temporaries(config)
    elif _mutant_under_test() is None:
        gc.collect()
        gc.freeze()


def _remove_own_temporaries(config) -> None:
    factory = getattr(config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None)
    if base is not None and getattr(factory, "_given_basetemp", None) is None:  # not a --basetemp the forks share
        shutil.rmtree(base, ignore_errors=True)
    conftest = sys.modules.get("conftest")
    if getattr(conftest, "_OWNER", None) == os.getpid():  # made by this process's import of it
        shutil.rmtree(conftest._SESSION_HOME, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    function = _mutant_under_test()
    entries = scope_of(function)
    kept = [item for item in items if in_scope(item.nodeid, entries)]
    dropped = [item for item in items if not in_scope(item.nodeid, entries)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    if function is not None:
        durations = _durations()
        kept.sort(key=lambda item: durations.get(item.nodeid, 0.0))
    items[:] = kept
