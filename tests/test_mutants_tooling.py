"""The mutation run's own logic (`make mutants`, docs/mutants.md): which tests judge a mutant
(.ci/mutants_scope.py), which mutants of the driver are run, how a survivor's reason is
found, what the report counts, and that a report is never written from no results
(.ci/mutants.py). A fault here would pass mutants by or mark them explained unseen."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"lrjob_ci_{name}", ROOT / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scope():
    return _load("mutants_scope")


@pytest.fixture(scope="module")
def mutants():
    return _load("mutants")


def test_a_mutant_is_judged_by_its_functions_scope_else_its_modules(scope):
    redraw = "tests/test_rundir.py::test_redrawing_a_run_takes_its_lock_and_refuses_while_a_run_holds_it"
    other = "tests/test_rundir.py::test_utc_stamp_is_now_in_utc"
    lock = scope.scope_of("launcher.rundir.xǁRunLockǁacquire")  # a key of its own
    listing = scope.scope_of("launcher.rundir.x_list_checkpoints")  # the module's key
    assert scope.in_scope(redraw, lock) and scope.in_scope(other, lock)
    assert not scope.in_scope(redraw, listing), "a '!' entry leaves the test out of the module's scope"
    assert scope.in_scope(other, listing)
    assert not scope.in_scope("tests/test_driver.py::test_anything", listing), "another module's test file"
    assert scope.scope_of("lr_core.nowhere.x_f") == frozenset()
    assert scope.scope_of(None) == scope.ALL and not any(e.startswith("!") for e in scope.ALL)
    # a pattern after :: selects by test name
    assert scope.in_scope("tests/test_tables.py::test_csv_anything", scope.scope_of("lr_core.tables.x_f"))
    assert not scope.in_scope("tests/test_tables.py::test_s3_anything", scope.scope_of("lr_core.tables.x_f"))


def test_the_mutant_under_test_is_read_from_mutmuts_environment(scope, monkeypatch):
    monkeypatch.setenv("MUTANT_UNDER_TEST", "lr_core.sharding.x_segments__mutmut_31")
    assert scope._mutant_under_test() == "lr_core.sharding.x_segments"
    for value in ("", "stats", "fail"):
        monkeypatch.setenv("MUTANT_UNDER_TEST", value)
        assert scope._mutant_under_test() is None


def test_each_mutant_is_named_with_its_original_and_mutated_lines(mutants):
    from mutmut.mutation.file_mutation import mutate_file_contents

    source = "def add(a, b):\n    total = a + b\n    return total\n"
    code = mutate_file_contents("pkg/calc.py", source).code
    changes = mutants.changes_in("pkg/calc.py", code)
    assert changes and all(name.startswith("pkg.calc.x_add__mutmut_") for name in changes)
    assert (["total = a + b"], ["total = a - b"]) in changes.values()
    assert all(old != new for old, new in changes.values())


def test_the_driver_is_mutated_only_where_it_resumes_and_checkpoints(mutants):
    assert mutants.selected("launcher.driver.xǁDriverǁ_restart__mutmut_3", (["x = 1"], ["x = 2"]))
    assert mutants.selected("launcher.driver.x__resume_command__mutmut_1", (["x = 1"], ["x = 2"]))
    assert mutants.selected("launcher.driver.xǁDriverǁrun__mutmut_9", (["ckpt = self.checkpoint"], ["ckpt = None"]))
    assert not mutants.selected("launcher.driver.xǁDriverǁrun__mutmut_9", (["x = 1"], ["x = 2"]))
    assert mutants.selected("lr_core.loop.x_fit__mutmut_1", (["x = 1"], ["x = 2"])), "other modules whole"


def test_a_reason_is_found_by_function_and_mutated_line_not_by_number(mutants):
    entries = [{"function": "lr_core.m.x_f", "change": "a = 2 / b = 3", "why": "equivalent: because"}]
    assert mutants.reason_for("lr_core.m.x_f__mutmut_7", (["a = 1"], ["a = 2", "b = 3"]), entries) == "equivalent: because"
    assert mutants.reason_for("lr_core.m.x_f__mutmut_8", (["a = 1"], ["a = 2"]), entries) is None
    assert mutants.reason_for("lr_core.m.x_g__mutmut_7", (["a = 1"], ["a = 2", "b = 3"]), entries) is None


def test_the_report_counts_each_outcome_and_names_every_untriaged_survivor(mutants, tmp_path, monkeypatch):
    yaml_file = tmp_path / "equivalent.yaml"
    yaml_file.write_text("- function: lr_core.m.x_f\n  change: 'a = 3'\n  why: 'equivalent: a is never read'\n")
    monkeypatch.setattr(mutants, "EQUIVALENT", yaml_file)
    changes = {f"lr_core.m.x_f__mutmut_{i}": (["a = 1"], [f"a = {i}"]) for i in range(1, 8)}
    codes = {"lr_core.m.x_f__mutmut_1": 1, "lr_core.m.x_f__mutmut_2": 1, "lr_core.m.x_f__mutmut_3": 0,
             "lr_core.m.x_f__mutmut_4": 0, "lr_core.m.x_f__mutmut_5": 36, "lr_core.m.x_f__mutmut_6": 33,
             "lr_core.m.x_f__mutmut_7": None}
    text = mutants.render(changes, codes, [])
    assert "| lr_core.m | 7 | 2 | 2 | 1 | 1 | 0 | 1 | 60.0 |" in text  # killed, survived, timeout, no tests, other, not run
    assert "**Survivors: 2**: 1 with a reason (1 equivalent;" in text and "1 untriaged." in text
    assert "- `lr_core.m.x_f__mutmut_3` `a = 1` → `a = 3`: equivalent: a is never read" in text
    assert "- `lr_core.m.x_f__mutmut_4` `a = 1` → `a = 4`: **untriaged**" in text
    assert text.startswith(mutants.BEGIN) and text.endswith(mutants.END)


def test_the_report_is_written_between_its_markers_only(mutants, tmp_path, monkeypatch):
    doc = tmp_path / "mutants.md"
    doc.write_text(f"# Hand-written\n\nkept\n\n{mutants.BEGIN}\nold\n{mutants.END}\n\ntail kept\n")
    monkeypatch.setattr(mutants, "DOC", doc)
    mutants.write_report(f"{mutants.BEGIN}\nnew\n{mutants.END}")
    assert doc.read_text() == f"# Hand-written\n\nkept\n\n{mutants.BEGIN}\nnew\n{mutants.END}\n\ntail kept\n"


def test_report_only_without_results_refuses_and_writes_nothing(mutants, tmp_path, monkeypatch, capsys):
    doc = tmp_path / "mutants.md"
    doc.write_text("the committed report\n")
    monkeypatch.setattr(mutants, "DOC", doc)
    monkeypatch.setattr(mutants, "RUN_INFO", tmp_path / "mutants" / "lrjob-run.json")
    monkeypatch.chdir(tmp_path)  # main() moves to the checkout; the fixture moves back
    assert mutants.main(["--report-only"]) == 1
    assert doc.read_text() == "the committed report\n"
    assert "no results in mutants/" in capsys.readouterr().err


def test_a_forked_mutant_run_removes_the_temporary_folders_its_session_made(scope, tmp_path, monkeypatch):
    """mutmut ends each mutant's forked run with os._exit: no atexit handler runs, so its
    session's basetemp and the HOME tests/conftest.py made are removed at unconfigure, and
    a HOME the fork inherited from mutmut's own process is left to that process."""
    import os
    import sys
    import types

    base, own_home, inherited = tmp_path / "pytest-7", tmp_path / "home-child", tmp_path / "home-parent"
    for d in (base, own_home, inherited):
        (d / "sub").mkdir(parents=True)
    config = types.SimpleNamespace(_tmp_path_factory=types.SimpleNamespace(_basetemp=base, _given_basetemp=None))
    conftest = types.ModuleType("conftest")
    monkeypatch.setitem(sys.modules, "conftest", conftest)

    def in_a_fork(owner_is_child: bool, home: Path) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1  # an exception in the fork fails the test
            try:
                conftest._OWNER = os.getpid() if owner_is_child else os.getppid()
                conftest._SESSION_HOME = str(home)
                scope.pytest_unconfigure(config)
                code = 0
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert in_a_fork(False, inherited) == 0
    assert inherited.exists(), "the parent's HOME was removed by a fork"
    assert not base.exists(), "the fork's basetemp was left behind"
    assert in_a_fork(True, own_home) == 0
    assert not own_home.exists(), "the HOME the fork's own conftest import made was left behind"
    assert inherited.exists()
    # a --basetemp given on the command line is every fork's: none removes it
    shared = tmp_path / "given"
    (shared / "sub").mkdir(parents=True)
    config._tmp_path_factory = types.SimpleNamespace(_basetemp=shared, _given_basetemp=shared)
    assert in_a_fork(False, inherited) == 0
    assert shared.exists(), "a fork removed the --basetemp that every fork shares"
