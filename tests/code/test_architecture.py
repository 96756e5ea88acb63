"""Architecture rules, checked on the import graph (grimp) and on dvc.yaml.

Nothing here lists modules by hand: every check is derived from the import graph of
``radclip`` (function-level imports included, ``if TYPE_CHECKING:`` imports excluded) and
from the stages of dvc.yaml, so the rules keep holding while modules move. The rules
themselves are the constants below; the helpers are plain functions, and the self-tests
at the end run the same helpers on tiny packages built in ``tmp_path`` to prove each
check can fail.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import itertools
import shlex
import textwrap
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import grimp
import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DVC_YAML = PROJECT_ROOT / "dvc.yaml"

# ---------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------

ROOT_PACKAGE = "radclip"

# Rule 2: the core layer is plain Python/NumPy/Torch. It must exist, and its modules may
# import (directly) no radclip module outside it (radclip.config, radclip.offline and the
# root package included) and none of these external packages.
CORE_LAYER = "radclip.core"
CORE_FORBIDDEN_EXTERNAL = ("mlflow", "ray", "optuna", "dvc", "great_expectations", "typer")

# Rule 3: only the io adapters talk to these services.
ADAPTER_LAYER = "radclip.io"
ADAPTER_ONLY_PACKAGES = ("mlflow", "optuna", "ray")

# Rule 4: layer -> the layers it must not import (directly). A layer is a package (or
# module) and everything under it; modules in no layer named here are not constrained.
LAYER_FORBIDDEN_IMPORTS: dict[str, tuple[str, ...]] = {
    "radclip.core": ("radclip.config", "radclip.data", "radclip.io", "radclip.jobs", "radclip.cli"),
    "radclip.data": ("radclip.io", "radclip.jobs", "radclip.cli"),
    "radclip.io": ("radclip.jobs", "radclip.cli"),
    "radclip.jobs": ("radclip.cli",),
}

# Rule 5: dvc.yaml deps that name code (the rest are data deps and not checked here).
CODE_DEP_PREFIXES = (f"{ROOT_PACKAGE}/", "pipelines/")


# ---------------------------------------------------------------------------------------
# Graph helpers (shared by the rules and the self-tests)
# ---------------------------------------------------------------------------------------


def build_graph(root: str = ROOT_PACKAGE) -> grimp.ImportGraph:
    importlib.invalidate_caches()
    # cache_dir=None: no .grimp_cache written into the checkout
    return grimp.build_graph(root, include_external_packages=True, exclude_type_checking_imports=True, cache_dir=None)


def is_under(module: str, package: str) -> bool:
    """``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def internal_modules(graph: grimp.ImportGraph, root: str) -> set[str]:
    return {m for m in graph.modules if is_under(m, root)}


def import_lines(graph: grimp.ImportGraph, importer: str, imported: str) -> list[int]:
    details = graph.get_import_details(importer=importer, imported=imported)
    return sorted({d["line_number"] for d in details})


def _lines_text(lines: Iterable[int]) -> str:
    lines = list(lines)
    return ("line " if len(lines) == 1 else "lines ") + ", ".join(map(str, lines)) if lines else "line ?"


def strongly_connected_components(nodes: Iterable[str], edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; each component sorted, components in a stable order."""
    nodes = sorted(nodes)
    node_set = set(nodes)
    succ = {n: sorted(m for m in edges.get(n, ()) if m in node_set) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(succ[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def find_cycles(graph: grimp.ImportGraph, root: str = ROOT_PACKAGE) -> list[list[str]]:
    """Import cycles among ``root``'s modules: SCCs of more than one module, and self-imports."""
    nodes = internal_modules(graph, root)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in nodes}
    return [c for c in strongly_connected_components(nodes, edges) if len(c) > 1 or c[0] in edges[c[0]]]


def example_cycle(graph: grimp.ImportGraph, component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module: [m0, m1, ..., m0]."""
    members = set(component)
    start = component[0]
    parents: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.find_modules_directly_imported_by(node) & members):
            if child == start:
                path = [node]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return list(reversed(path)) + [start]
            if child not in parents:
                parents[child] = node
                queue.append(child)
    raise AssertionError(f"{component} is not a cycle")  # pragma: no cover


def format_cycles(graph: grimp.ImportGraph, cycles: list[list[str]]) -> str:
    out = [f"{len(cycles)} import cycle(s):"]
    for component in cycles:
        chain = example_cycle(graph, component)
        out.append(f"- {len(component)} module(s): {', '.join(component)}")
        out.append(f"  e.g. {' -> '.join(chain)}")
        for a, b in itertools.pairwise(chain):
            out.append(f"    {a} -> {b}: {_lines_text(import_lines(graph, a, b))}")
    return "\n".join(out)


def direct_imports_matching(
    graph: grimp.ImportGraph, importers: Iterable[str], is_forbidden: Callable[[str, str], bool]
) -> list[tuple[str, str, list[int]]]:
    """(importer, imported, line numbers) for each direct import with is_forbidden(importer, imported)."""
    found = []
    for importer in sorted(importers):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if is_forbidden(importer, imported):
                found.append((importer, imported, import_lines(graph, importer, imported)))
    return found


def format_violations(violations: list[tuple[str, str, list[int]]]) -> str:
    return "\n".join(f"- {a} imports {b} ({_lines_text(lines)})" for a, b, lines in violations)


def layer_missing_message(graph: grimp.ImportGraph, layer: str) -> str | None:
    if any(is_under(m, layer) for m in graph.modules):
        return None
    path = layer.replace(".", "/")
    return f"layer {layer} does not exist (expected the package {path}/__init__.py); the layer is required"


def core_violations(
    graph: grimp.ImportGraph,
    core: str = CORE_LAYER,
    root: str = ROOT_PACKAGE,
    forbidden_external: Iterable[str] = CORE_FORBIDDEN_EXTERNAL,
) -> list[tuple[str, str, list[int]]]:
    forbidden_external = set(forbidden_external)

    def forbidden(importer: str, imported: str) -> bool:
        if is_under(imported, root):
            return not is_under(imported, core)
        return imported.split(".")[0] in forbidden_external

    core_modules = [m for m in internal_modules(graph, root) if is_under(m, core)]
    return direct_imports_matching(graph, core_modules, forbidden)


def adapter_violations(
    graph: grimp.ImportGraph,
    adapter_layer: str = ADAPTER_LAYER,
    root: str = ROOT_PACKAGE,
    packages: Iterable[str] = ADAPTER_ONLY_PACKAGES,
) -> list[tuple[str, str, list[int]]]:
    packages = set(packages)
    outside = [m for m in internal_modules(graph, root) if not is_under(m, adapter_layer)]
    return direct_imports_matching(graph, outside, lambda _a, b: b.split(".")[0] in packages)


def _imports_any_of(layers: tuple[str, ...]) -> Callable[[str, str], bool]:
    return lambda _importer, imported: any(is_under(imported, layer) for layer in layers)


def layer_order_violations(
    graph: grimp.ImportGraph,
    table: Mapping[str, Iterable[str]] = LAYER_FORBIDDEN_IMPORTS,
    root: str = ROOT_PACKAGE,
) -> list[tuple[str, str, list[int]]]:
    found = []
    for layer, forbidden_layers in table.items():
        members = [m for m in internal_modules(graph, root) if is_under(m, layer)]
        found += direct_imports_matching(graph, members, _imports_any_of(tuple(forbidden_layers)))
    return found


# ---------------------------------------------------------------------------------------
# dvc.yaml helpers
# ---------------------------------------------------------------------------------------


def module_file(module: str, source_root: Path) -> str | None:
    """The module's source file relative to source_root (posix), or None (e.g. a namespace package)."""
    base = source_root.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return (base / "__init__.py").relative_to(source_root).as_posix()
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py").relative_to(source_root).as_posix()
    return None


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _is_type_checking_test(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def script_imports(script: Path, graph: grimp.ImportGraph, root: str = ROOT_PACKAGE) -> tuple[set[str], set[str]]:
    """(root modules the script imports that the graph knows, root modules it imports that do not exist)."""
    tree = ast.parse(script.read_text(), filename=str(script))
    known, unknown = set(), set()

    def add(name: str) -> None:
        (known if name in graph.modules else unknown).add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking_test(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_under(alias.name, root):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and is_under(node.module, root):
            add(node.module)
            for alias in node.names:
                if f"{node.module}.{alias.name}" in graph.modules:  # `from pkg import submodule`
                    known.add(f"{node.module}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return known, unknown


def import_closure(
    graph: grimp.ImportGraph, start: Iterable[str], root: str = ROOT_PACKAGE
) -> dict[str, tuple[str | None, str]]:
    """Every root module run when importing ``start``: module -> (reached from, how).

    Follows every direct import (function-level ones too) and adds each module's ancestor
    packages, whose ``__init__`` Python runs first. ``how`` is "import" or "package";
    the start modules have parent None.
    """
    reached: dict[str, tuple[str | None, str]] = {m: (None, "import") for m in sorted(start)}
    queue = deque(sorted(start))
    while queue:
        module = queue.popleft()
        steps = [(a, "package") for a in ancestors(module)]
        steps += [(m, "import") for m in sorted(graph.find_modules_directly_imported_by(module)) if is_under(m, root)]
        for nxt, how in steps:
            if nxt not in reached:
                reached[nxt] = (module, how)
                queue.append(nxt)
    return reached


def closure_chain(reached: Mapping[str, tuple[str | None, str]], module: str, script: str) -> str:
    steps = []
    node: str | None = module
    while node is not None:
        parent, how = reached[node]
        steps.append(f"{node} [package __init__]" if how == "package" else node)
        node = parent
    return " -> ".join([script] + list(reversed(steps)))


def dvc_stages(dvc_yaml: Path) -> dict[str, dict]:
    """stage name -> {"cmd": [...], "deps": [...]}; foreach stages give their ``do`` body."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage) if "foreach" in stage else stage
        cmd = body.get("cmd") or []
        deps = []
        for dep in body.get("deps") or []:
            deps += list(dep) if isinstance(dep, dict) else [dep]
        out[name] = {"cmd": [cmd] if isinstance(cmd, str) else list(cmd), "deps": [str(d) for d in deps]}
    return out


def code_deps(deps: Iterable[str], prefixes: tuple[str, ...] = CODE_DEP_PREFIXES) -> list[str]:
    """The deps naming code; templated ones (``${...}``) are data deps."""
    return [d.rstrip("/") for d in deps if "${" not in d and d.startswith(prefixes)]


def stage_script(cmds: Iterable[str]) -> str | None:
    """The first ``*.py`` argument of ``python ...`` in the stage's command(s)."""
    for cmd in cmds:
        words = shlex.split(cmd)
        for i, word in enumerate(words):
            if Path(word).name.startswith("python"):
                return next((w for w in words[i + 1 :] if w.endswith(".py")), None)
    return None


def covered(file: str, deps: Iterable[str]) -> bool:
    return any(file == d or file.startswith(d + "/") for d in deps)


def missing_stage_deps(
    graph: grimp.ImportGraph,
    dvc_yaml: Path,
    root: str = ROOT_PACKAGE,
    prefixes: tuple[str, ...] = CODE_DEP_PREFIXES,
) -> dict[str, list[str]]:
    """stage -> problem lines: code the stage's script runs that its deps do not cover."""
    project = dvc_yaml.parent
    problems: dict[str, list[str]] = {}
    for name, stage in dvc_stages(dvc_yaml).items():
        lines = []
        deps = code_deps(stage["deps"], prefixes)
        script = stage_script(stage["cmd"])
        if script is None:
            problems[name] = [f"no `python <script>.py` found in cmd {stage['cmd']!r}"]
            continue
        if not (project / script).is_file():
            problems[name] = [f"script {script} does not exist"]
            continue
        if not covered(script, deps):
            lines.append(f"{script} (the stage's own script)")
        known, unknown = script_imports(project / script, graph, root)
        lines += [f"{script} imports {m}, which is not a {root} module" for m in sorted(unknown)]
        reached = import_closure(graph, known, root)
        for module in sorted(reached, key=lambda m: module_file(m, project) or ""):
            file = module_file(module, project)
            if file is not None and not covered(file, deps):
                lines.append(f"{file}   via {closure_chain(reached, module, script)}")
        if lines:
            problems[name] = lines
    return problems


def stale_stage_deps(dvc_yaml: Path, prefixes: tuple[str, ...] = CODE_DEP_PREFIXES) -> dict[str, list[str]]:
    project = dvc_yaml.parent
    stale = {}
    for name, stage in dvc_stages(dvc_yaml).items():
        gone = [d for d in code_deps(stage["deps"], prefixes) if not (project / d).exists()]
        if gone:
            stale[name] = gone
    return stale


def format_stage_problems(problems: Mapping[str, list[str]]) -> str:
    out = []
    for stage, lines in problems.items():
        out.append(f"stage {stage}:")
        out += [f"  - {line}" for line in lines]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# The rules on radclip
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # the graph must be of this checkout's package: its files are what dvc.yaml names
    spec = importlib.util.find_spec(ROOT_PACKAGE)
    assert spec is not None and spec.origin is not None, f"{ROOT_PACKAGE} is not importable"
    assert Path(spec.origin).resolve().parent == PROJECT_ROOT / ROOT_PACKAGE, (
        f"{ROOT_PACKAGE} is imported from {spec.origin}, not from {PROJECT_ROOT}"
    )
    return build_graph(ROOT_PACKAGE)


def test_radclip_has_no_import_cycles(graph):
    cycles = find_cycles(graph)
    if cycles:
        pytest.fail(format_cycles(graph, cycles), pytrace=False)


def test_core_layer_exists_and_imports_only_core_and_plain_packages(graph):
    missing = layer_missing_message(graph, CORE_LAYER)
    if missing:
        pytest.fail(missing, pytrace=False)
    violations = core_violations(graph)
    if violations:
        pytest.fail(
            f"{CORE_LAYER} may import only {CORE_LAYER}.* among {ROOT_PACKAGE} modules and none of "
            f"{', '.join(CORE_FORBIDDEN_EXTERNAL)}:\n{format_violations(violations)}",
            pytrace=False,
        )


def test_only_io_adapters_import_mlflow_optuna_ray(graph):
    violations = adapter_violations(graph)
    if violations:
        pytest.fail(
            f"only {ADAPTER_LAYER}.* may import {', '.join(ADAPTER_ONLY_PACKAGES)}:\n{format_violations(violations)}",
            pytrace=False,
        )


def test_layers_import_only_downwards(graph):
    violations = layer_order_violations(graph)
    if violations:
        table = "\n".join(f"  {layer} must not import {', '.join(f)}" for layer, f in LAYER_FORBIDDEN_IMPORTS.items())
        pytest.fail(f"layer order broken:\n{table}\n{format_violations(violations)}", pytrace=False)


def test_dvc_stage_deps_cover_every_module_the_stage_runs(graph):
    assert dvc_stages(DVC_YAML), f"no stages in {DVC_YAML}"
    problems = missing_stage_deps(graph, DVC_YAML)
    if problems:
        pytest.fail(
            "dvc.yaml deps miss code the stage runs (the dep must be the file or a folder holding it):\n"
            + format_stage_problems(problems),
            pytrace=False,
        )


def test_dvc_stage_code_deps_exist(graph):
    stale = stale_stage_deps(DVC_YAML)
    if stale:
        pytest.fail("dvc.yaml deps name code that no longer exists:\n" + format_stage_problems(stale), pytrace=False)


# ---------------------------------------------------------------------------------------
# Self-tests: the checks do fail on planted problems
# ---------------------------------------------------------------------------------------

FIXTURE_PACKAGE = "radclip_archcheck_fixture"


def make_package(root: Path, files: Mapping[str, str]) -> None:
    """Write ``{relative path: source}`` under root; every folder of the package gets an __init__.py."""
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
    for rel in files:
        parent = (root / rel).parent
        while parent != root:
            (parent / "__init__.py").touch(exist_ok=True)
            parent = parent.parent


@pytest.fixture
def fixture_graph(tmp_path, monkeypatch):
    def build(files: Mapping[str, str]) -> grimp.ImportGraph:
        make_package(tmp_path, files)
        monkeypatch.syspath_prepend(str(tmp_path))
        return build_graph(FIXTURE_PACKAGE)

    return build


P = FIXTURE_PACKAGE


def test_cycle_finder_reports_exactly_the_planted_cycles(fixture_graph):
    graph = fixture_graph(
        {
            f"{P}/a.py": f"from {P} import b\n",
            f"{P}/b.py": f"def later():\n    import {P}.a\n",  # function-level: still a cycle
            f"{P}/c.py": f"import {P}.a\n",  # imports into the cycle, not part of it
            f"{P}/selfish.py": f"import {P}.selfish\n",
        }
    )
    cycles = find_cycles(graph, P)
    assert cycles == [[f"{P}.a", f"{P}.b"], [f"{P}.selfish"]]
    report = format_cycles(graph, cycles)
    assert f"{P}.a -> {P}.b -> {P}.a" in report
    assert f"{P}.a -> {P}.b: line 1" in report and f"{P}.b -> {P}.a: line 2" in report


def test_cycle_finder_accepts_an_acyclic_package(fixture_graph):
    graph = fixture_graph({f"{P}/a.py": f"from {P} import b\n", f"{P}/b.py": "import json\n"})
    assert find_cycles(graph, P) == []


def test_core_check_reports_exactly_the_planted_violations(fixture_graph):
    graph = fixture_graph(
        {
            f"{P}/config.py": "",
            f"{P}/core/helper.py": "import numpy\n",
            f"{P}/core/plain.py": f"""
            import json
            from mlflow.tracking import MlflowClient
            from {P}.core import helper
            from {P} import config
            """,
        }
    )
    assert layer_missing_message(graph, f"{P}.core") is None
    assert layer_missing_message(graph, f"{P}.nothere") is not None
    assert core_violations(graph, f"{P}.core", P) == [
        (f"{P}.core.plain", "mlflow", [2]),
        (f"{P}.core.plain", f"{P}.config", [4]),
    ]


def test_adapter_check_reports_exactly_the_planted_violation(fixture_graph):
    graph = fixture_graph(
        {
            f"{P}/io/tracking.py": "import mlflow\nimport ray\n",
            f"{P}/jobs/tune.py": "import json\n\ndef run():\n    import optuna.samplers\n",
        }
    )
    assert adapter_violations(graph, f"{P}.io", P) == [(f"{P}.jobs.tune", "optuna", [4])]


def test_layer_order_check_reports_exactly_the_planted_violation(fixture_graph):
    graph = fixture_graph(
        {
            f"{P}/core/x.py": "",
            f"{P}/data/x.py": f"from {P}.core import x\nfrom {P}.jobs import y\n",
            f"{P}/jobs/y.py": f"from {P}.data import x\n",
            f"{P}/other.py": f"from {P}.jobs import y\n",  # in no layer: unconstrained
        }
    )
    table = {f"{P}.core": (f"{P}.data", f"{P}.jobs"), f"{P}.data": (f"{P}.jobs",), f"{P}.jobs": ()}
    assert layer_order_violations(graph, table, P) == [(f"{P}.data.x", f"{P}.jobs.y", [2])]


def test_dvc_dep_checks_report_exactly_the_planted_gaps(fixture_graph, tmp_path):
    graph = fixture_graph(
        {
            f"{P}/__init__.py": f"from {P} import boot\n",
            f"{P}/boot.py": "",
            f"{P}/cli.py": f"def main():\n    from {P}.data.x import f\n",
            f"{P}/data/x.py": "def f():\n    pass\n",
            "pipelines/one.py": f"from {P}.cli import main\n",
            "pipelines/two.py": f"import {P}.data.x\n",
        }
    )
    (tmp_path / "dvc.yaml").write_text(
        textwrap.dedent(f"""
        stages:
          one:
            cmd: python pipelines/one.py --quiet
            deps:
              - pipelines/one.py
              - {P}/cli.py
              - {P}/data
              - {P}/gone.py
              - ${{paths.raw}}
          two:
            foreach:
              a: {{x: 1}}
            do:
              cmd: python pipelines/two.py -- --k ${{key}}
              deps:
                - {P}/
                - ${{paths.models}}/${{item.x}}
        """)
    )
    prefixes = (f"{P}/", "pipelines/")
    problems = missing_stage_deps(graph, tmp_path / "dvc.yaml", P, prefixes)
    assert list(problems) == ["one", "two"]
    assert [line.split()[0] for line in problems["one"]] == [f"{P}/__init__.py", f"{P}/boot.py"]
    assert f"via pipelines/one.py -> {P}.cli -> {P} [package __init__] -> {P}.boot" in problems["one"][1]
    assert problems["two"] == ["pipelines/two.py (the stage's own script)"]
    assert stale_stage_deps(tmp_path / "dvc.yaml", prefixes) == {"one": [f"{P}/gone.py"]}
