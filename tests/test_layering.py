"""Dependencies point one way: lr_core loads neither Ray nor Horovod (nor launcher)."""
import subprocess
import sys


def test_lr_core_imports_no_ray_or_horovod():
    code = ("import sys, lr_core, lr_core.loop, lr_core.data, lr_core.metrics, lr_core.export; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'horovod', 'launcher')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- launcher's shape
import ast  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _modules(package: str) -> dict[str, ast.Module]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _imports(name: str, tree: ast.Module, is_package: bool, known: set[str]) -> set[str]:
    """Every launcher module that ``name`` imports, at the top or inside a function."""
    found = set()
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_launcher_has_no_import_cycle():
    mods = _modules("launcher")
    packages = {n for n in mods if (ROOT / n.replace(".", "/") / "__init__.py").is_file()}
    graph = {n: _imports(n, t, n in packages, set(mods)) for n, t in mods.items()}
    # a package's __init__ is imported by its own modules; only real edges count
    for n in graph:
        graph[n] = {m for m in graph[n] if not (m in packages and n.startswith(m + "."))}
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


SPEC_KEY = re.compile(r"^(model|data|train|resources|checkpoint|failure|tracking)(\.\w+)?$")


def test_no_spec_field_is_read_by_a_string_key_outside_the_spec_module():
    bad = []
    for name, tree in _modules("launcher").items():
        if name == "launcher.spec":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.slice.value, str) and SPEC_KEY.match(node.slice.value) \
                    and "." in node.slice.value:
                bad.append(f"{name}:{node.lineno} [{node.slice.value!r}]")
            # the resolved mapping behind the typed sections: spec.raw["train"]["epochs"]
            if isinstance(node, ast.Attribute) and node.attr == "raw":
                bad.append(f"{name}:{node.lineno} .raw")
    assert not bad, bad


def test_no_launcher_function_takes_more_than_five_parameters():
    bad = []
    for name, tree in _modules("launcher").items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs] + \
                    [p.arg for p in (a.vararg, a.kwarg) if p]
                params = [p for p in params if p not in ("self", "cls")]
                if len(params) > 5:
                    bad.append(f"{name}.{node.name}: {len(params)} parameters")
    assert not bad, bad
