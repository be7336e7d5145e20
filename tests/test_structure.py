"""The project's structure: no import cycle between its own modules, validation without torch, launchable YAMLs.

The import graph is read with the standard library's ``ast``, not by importing anything: every ``import`` and
``from ... import`` statement counts, at module level and inside functions alike (a deferred import still closes a
cycle, it only moves the failure from import time to call time). Relative imports are resolved; importing
``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, so those edges count too. Only edges between the
project's own modules are kept. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.structure

ROOT = Path(__file__).resolve().parents[1]


def project_packages(root: Path = ROOT) -> list[str]:
    """The top-level packages pyproject.toml ships (``[tool.setuptools.packages.find] include``)."""
    import tomllib

    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(p.rstrip("*") for p in include)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the project's packages."""
    modules: dict[str, Path] = {}
    for package in project_packages(root):
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool):
    """(dotted name, line) for every import statement in the tree, relative imports resolved."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the `if TYPE_CHECKING:` body never runs
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield target, node.lineno
            for alias in node.names:  # `from pkg import submodule`
                yield f"{target}.{alias.name}", node.lineno
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    modules = project_modules(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in _imported_names(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                target = ".".join(parts[:i])
                if target in modules and target != module and not module.startswith(target + "."):
                    edges.setdefault(target, line)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module (Tarjan, then a BFS)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:  # iterative Tarjan (the graph is deep enough to worry the recursion limit)
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        members, start = set(component), component[0]
        previous: dict[str, str | None] = {start: None}
        queue, found = [start], None
        while queue and found is None:  # BFS inside the component back to its first module: a shortest cycle
            node = queue.pop(0)
            for child in sorted(graph[node]):
                if child == start:
                    found = node
                    break
                if child in members and child not in previous:
                    previous[child] = node
                    queue.append(child)
        path = [found]
        while previous[path[-1]] is not None:
            path.append(previous[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    hops = [f"{a} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(hops + [cycle[-1]])


def test_the_graph_sees_the_project():
    """The walker finds the project's modules and real edges (a broken walker would find no cycle either)."""
    graph = import_graph()
    assert {"runconfig.schema", "client.trainers", "strategies", "server.federation"} <= set(graph)
    assert "runconfig.schema" in graph["runconfig.load"]
    assert "client.trainers.base" in graph["client.trainers"]  # package __init__ -> its submodule
    assert "client.faults" in graph["runconfig.check"]  # imported inside a function


def test_find_cycles_names_a_cycle(tmp_path):
    """The checker itself: a three-module cycle (one import inside a function, one relative) is reported."""
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools.packages.find]\ninclude = ["pkg*"]\n')
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\nimport os\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nimport pkg.c\n")
    cycles = find_cycles(import_graph(tmp_path))
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_no_import_cycle():
    graph = import_graph()
    modules = project_modules()
    cycles = find_cycles(graph)
    assert not cycles, "import cycle(s) between the project's modules:\n" + "\n".join(
        describe(c, graph, modules) for c in cycles)


def test_config_leaf_modules_import_nothing_heavy():
    """ConfigError, the choices, the schema and the plain-dict conversion import nothing of the project beyond each
    other: any module may use them without pulling in validation, strategies or trainers."""
    graph = import_graph()
    leaves = {"runconfig.errors", "runconfig.choices", "runconfig.schema", "runconfig.plain"}
    for module in leaves:
        assert set(graph[module]) <= leaves | {"runconfig"}, (module, graph[module])
    closure, todo = set(), ["runconfig.check"]  # what validation imports, transitively
    while todo:
        for child in graph[todo.pop()]:
            if child not in closure:
                closure.add(child)
                todo.append(child)
    assert not {m for m in closure if m.split(".")[0] in ("strategies", "server", "models", "simulations")}, closure
    assert not {m for m in closure if m.startswith("client.") and m != "client.faults"}, closure
    privacy_to_client = {(m, c) for m in graph if m.split(".")[0] == "privacy" for c in graph[m]
                         if c.split(".")[0] == "client"}
    assert not privacy_to_client, f"privacy/ imports the client: {privacy_to_client}"


NO_TORCH = """
import json, sys
from runconfig.errors import ConfigError
from runconfig.load import compose
from simulations.run import precheck
compose(["+fleet=80dev"])  # the defaults
compose(["+fleet=8dev_test", "method=fedspine", "simulation=fast"])
compose(["+fleet=80dev", "method=dp_dylora", "privacy.target_epsilon=2"])  # valid DP: sigma not calibrated here
refused = []
for overrides in (["aggregation.rule=median"], ["method=dp_dylora", "privacy.delta=0.5"],
                  ["method=dp_dylora", "aggregation.rule=krum"], ["client.trainer=fedspine_prune"]):
    try:
        compose(["+fleet=8dev_test", *overrides])
    except ConfigError as err:
        refused.append(str(err).split("'")[1])
try:
    precheck(["+fleet=8dev_test", "client.device=tpu"])  # what `python -m simulations.run` checks first
except SystemExit as exit:
    refused.append(exit.code)
print(json.dumps({"refused": refused, "loaded": [m for m in ("torch", "transformers", "peft", "opacus")
                                                 if m in sys.modules]}))
"""


def test_validating_a_config_imports_no_torch():
    """Composing and validating settings (and the CLI's check before launching) never imports torch,
    transformers, PEFT or Opacus: a fresh interpreter's sys.modules after good and refused configs, a refused DP
    config included, and a valid DP one (sigma's calibration is the run's privacy plan, at setup: runconfig/check.py)."""
    proc = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["refused"] == ["aggregation.rule", "privacy.delta", "aggregation.rule", "client.trainer", 2], result
    assert result["loaded"] == [], result


def test_registries_agree_with_the_schema_choices():
    """The schema's enums are the only lists of names; the registries that map them to code hold exactly them."""
    from client.device_detect import select_device
    from client.trainers import TRAINERS
    from runconfig.choices import FEDSPINE_METHODS, AggregationRule, MethodName, TrainerName
    from runconfig.load import CONF_DIR
    from strategies import STRATEGIES
    from strategies.robust_aggregation import RULES

    assert set(TRAINERS) == set(TrainerName)
    assert set(STRATEGIES) == set(MethodName)
    assert {m for m, cls in STRATEGIES.items() if cls.__name__ == "FedSpine"} == set(FEDSPINE_METHODS)
    assert set(RULES) == set(AggregationRule)
    assert {p.stem for p in (CONF_DIR / "method").glob("*.yaml")} == set(MethodName)
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        select_device("tpu")


def test_every_yaml_opens_with_its_launch_command():
    """Every YAML under conf/ opens with a comment giving the command that launches it (torchtune's recipes do):
    ``# python -m ...`` (or ``# flwr run ...`` for a fleet of real devices). Hydra reads its ``# @package``
    directive only before any other comment, so that line may come first."""
    missing = []
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        lines = [line for line in path.read_text().splitlines() if not line.startswith("# @")]
        first = lines[0] if lines else ""
        if not first.startswith(("# python -m ", "# flwr run ")):
            missing.append(f"{path.relative_to(ROOT)}: {first[:60]!r}")
    assert not missing, "YAMLs without their launch command on line 1:\n" + "\n".join(missing)
