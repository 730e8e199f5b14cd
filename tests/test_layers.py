"""The architecture as a test: imports point down the layers and never form a cycle.

Layers (docs/ARCHITECTURE.md): 1. the core (``CORE`` below); 2. the building blocks
``dynode.solvers``, ``dynode.models``, ``dynode.stimuli``, which depend on the core (and the
model zoo on the solvers); 3. the workflow (every other module of ``dynode``), on top. The
check reads the source (``ast``), so it also sees imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"dynode": "dynode", "solvers": "dynode.solvers", "models": "dynode.models",
           "stimuli": "dynode.stimuli"}
CORE = {"dynode.errors", "dynode.field", "dynode.brownian", "dynode.events", "dynode.network", "dynode.population", "dynode.plan",
        "dynode.checks", "dynode.activations", "dynode.adapters",
        "dynode.pipeline", "dynode.stimulus", "dynode.history", "dynode.problem", "dynode.integrate",
        "dynode.solution", "dynode.guards", "dynode.solver", "dynode.stats", "dynode.tolerances", "dynode.threads"}
BLOCKS = ("dynode.solvers", "dynode.models", "dynode.stimuli")
# workflow modules that import lazily on purpose (start-up time of the command line), not to
# dodge a cycle
LAZY_OK = {"dynode.cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = f.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((pkg, *parts))] = f
    return out


MODULES = _modules()


def _layer(mod: str) -> int:
    if mod == "dynode":
        return 4  # the package's own namespace: imports everything
    if any(mod == c or mod.startswith(c + ".") for c in CORE):
        return 1
    if any(mod == b or mod.startswith(b + ".") for b in BLOCKS):
        return 2
    return 3


def _imports(mod: str) -> list[tuple[str, bool, int]]:
    """(imported dynode module, deferred?, line) for every import outside ``TYPE_CHECKING``."""
    tree = ast.parse(MODULES[mod].read_text())
    out: list[tuple[str, bool, int]] = []

    def visit(node, deferred: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.startswith("dynode"):
                    for alias in child.names:  # `from pkg import submodule` imports the submodule
                        sub = f"{child.module}.{alias.name}"
                        out.append((sub if sub in MODULES else child.module, inner, child.lineno))
            elif isinstance(child, ast.Import):
                out.extend((a.name, inner, child.lineno) for a in child.names if a.name.startswith("dynode"))
            visit(child, inner)

    visit(tree, False)
    return [(m if m in MODULES else m.rsplit(".", 1)[0], d, line) for m, d, line in out]


def test_every_module_is_seen():
    assert {"dynode.network", "dynode.solvers.fixed", "dynode.models.zoo", "dynode.cli"} <= set(MODULES)


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if _layer(m) < 4))
def test_imports_point_down(mod):
    """A core module imports only the core; a building block the core and building blocks; no
    module inside the package imports the package namespace ``dynode`` itself."""
    bad = [(target, line) for target, _, line in _imports(mod)
           if target != mod and (_layer(target) > _layer(mod) or target == "dynode")]
    assert not bad, f"{mod} imports upward: {bad}"


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m not in LAZY_OK and _layer(m) < 4))
def test_no_deferred_dynode_import(mod):
    """Imports of dynode modules sit at the top of the module: a deferred import would only
    hide a cycle (the command line may import lazily for its start-up time)."""
    deferred = [(t, line) for t, d, line in _imports(mod) if d]
    assert not deferred, f"{mod} imports inside functions: {deferred}"


def test_no_import_cycle():
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES if m != "dynode"}
    # a package's __init__ re-exports its modules; importing one of its modules runs it first, so
    # module -> its own package __init__ is implied and not a cycle by itself
    state: dict[str, int] = {}
    cycle: list[str] = []

    def dfs(m: str, path: list[str]) -> bool:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle.extend(path[path.index(t):] + [t] if t in path else [m, t])
                return True
            if state.get(t) is None and dfs(t, path + [t]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and dfs(m, [m]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_every_subpackage_is_installed():
    """A wheel (``pip install .``, not ``-e``) holds only the packages pyproject lists: a new
    subpackage left out of that list imports in the checkout and is missing once installed."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, f in MODULES.items() if f.name == "__init__.py"}
    assert packages - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - packages == set(), "pyproject.toml lists packages that do not exist"


def _documented_workflow_order() -> list[str]:
    """The workflow modules in the order docs/ARCHITECTURE.md's layer table lists them."""
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| 3. workflow"))
    import re

    return [f"dynode.{name.strip('/')}".replace("/", ".") for name in re.findall(r"`([a-z_/]+)`", row.split("|")[2])]


def test_the_documented_workflow_order_is_the_import_order():
    """docs/ARCHITECTURE.md lists the workflow modules "in this order: each imports only those
    before it and the layers below"; the source must agree, and every workflow module must be
    listed (a package by its folder, e.g. `analysis/`)."""
    order = _documented_workflow_order()
    workflow = sorted(m for m in MODULES if _layer(m) == 3)

    def listed(mod: str) -> str | None:
        return next((o for o in order if mod == o or mod.startswith(o + ".")), None)

    assert [m for m in workflow if listed(m) is None] == [], "list these in docs/ARCHITECTURE.md's workflow row"
    bad = []
    for mod in workflow:
        here = order.index(listed(mod))
        for target, _, line in _imports(mod):
            home = listed(target) if _layer(target) == 3 else None
            if home is not None and home != listed(mod) and order.index(home) > here:
                bad.append(f"{mod}:{line} imports {target}, listed after it")
    assert not bad, "\n".join(bad)


def test_the_experiment_registry_is_the_one_list_of_kinds():
    """docs/ARCHITECTURE.md: adding an experiment is one record in dynode.stimuli.EXPERIMENTS
    (plus its analysis); the configs, the runner and the analysis tables derive from it."""
    import typing

    from dynode import config, experiments, stimuli
    from dynode.analysis import summary

    kinds = tuple(stimuli.EXPERIMENTS)
    assert typing.get_args(config.ExperimentKind) == kinds
    assert tuple(experiments.GROEN_KINDS) == kinds
    assert tuple(summary.KINDS) == kinds and set(summary.NEEDS) == set(kinds)
