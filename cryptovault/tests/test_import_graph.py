"""The apps and the project package import each other without a cycle.

Each app (``accounts``, ``markets``, ``orders``, ``notifications``, ``bots``) is one node,
and so is the project package ``cryptovault``: the plumbing every app imports (errors,
rate limits, metrics, admin base classes). An edge is an import executed when a module
loads: at module level or in a class body, not inside a function. The graph is read from
the source (AST).

The project's wiring imports the apps by design and is imported by no app; each such
module is a node of its own (``WIRING``, with the reason), so it can close no cycle
unless something imports it.

A function-level import that crosses nodes is kept only where a real cycle is documented
next to it (the price tick calling back into orders and notifications, tasks and the
services that enqueue them, the admin's audit trail and the metrics collector calling
back into the apps).
"""

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = tuple(
    app
    for app in ("accounts", "markets", "orders", "notifications", "bots")
    if (ROOT / app).is_dir()
)
PROJECT = "cryptovault"
# Modules of the project package that import apps when they load, and why.
WIRING = {
    "cryptovault.settings": "the tracked coins and venue fees default to markets.catalogue",
    "cryptovault.urls": "the URLconf: every app's routes and the project's pages",
    "cryptovault.routing": "the WebSocket routes of markets and notifications",
    "cryptovault.asgi": "the ASGI entry point: the fast lanes of markets and notifications",
    "cryptovault.dashboard": "the operations dashboard reads every app",
    "cryptovault.health": "GET /health reports the price age",
    "cryptovault.pages": "the landing page shows the price freshness",
}


def _node(module: str) -> str | None:
    """The graph node a dotted module name belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] in APPS:
        return parts[0]
    if parts[0] == PROJECT:
        return ".".join(parts[:2]) if ".".join(parts[:2]) in WIRING else PROJECT
    return None


def _load_time_imports(tree: ast.Module):
    """Imports that run when the module loads: skips function bodies and
    ``if TYPE_CHECKING:`` blocks."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        pending.extend(ast.iter_child_nodes(node))


def _imported_modules(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")[: -node.level]
        base = ".".join([*package, base] if base else package)
    # ``from pkg import mod`` imports the submodule ``pkg.mod`` when there is one.
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, dict[str, str]]:
    """node -> {imported node: "file:line" of the first import making that edge}."""
    graph: dict[str, dict[str, str]] = {}
    for package in (*APPS, PROJECT):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if {"tests", "migrations"} & set(relative.parts):
                continue
            module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
            source = _node(module)
            edges = graph.setdefault(source, {})
            for imp in _load_time_imports(ast.parse(path.read_text(), str(path))):
                for imported in _imported_modules(imp, module):
                    target = _node(imported)
                    if target and target != source and _exists(imported):
                        edges.setdefault(target, f"{relative}:{imp.lineno}")
    return graph


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle as a list of nodes (first == last), or None."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, then "done"
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_between_apps_has_no_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    where = [f"{a} -> {b} ({graph[a][b]})" for a, b in itertools.pairwise(cycle or [])]
    assert cycle is None, "import cycle:\n" + "\n".join(where)


def test_the_check_sees_a_cycle():
    graph = {"orders": {"notifications": "x"}, "notifications": {"orders": "y"}, "markets": {}}
    assert find_cycle(graph) == ["notifications", "orders", "notifications"]
    assert find_cycle({"orders": {"markets": "x"}, "markets": {}}) is None


def test_the_graph_holds_the_known_seams():
    graph = import_graph()
    assert "markets" in graph["orders"]  # orders read prices
    assert "accounts" in graph["notifications"]  # sockets authenticate sessions
    assert "orders" not in graph["notifications"]  # orders hand over their payload
    assert PROJECT in graph["markets"]  # the apps build on the plumbing
    assert "markets" in graph["cryptovault.dashboard"]


def test_the_project_plumbing_imports_no_app_and_nothing_imports_the_wiring():
    graph = import_graph()
    assert not set(graph[PROJECT]) & set(APPS), graph[PROJECT]
    importers = {
        source: sorted(set(targets) & set(WIRING))
        for source, targets in graph.items()
        if set(targets) & set(WIRING) and source not in WIRING
    }
    assert importers == {}


def test_a_cycle_through_the_project_package_is_seen():
    graph = {
        PROJECT: {"accounts": "cryptovault/admin.py:1"},
        "accounts": {PROJECT: "accounts/admin.py:1"},
    }
    assert find_cycle(graph) == ["accounts", PROJECT, "accounts"]
    assert _node("cryptovault.admin") == PROJECT
    assert _node("cryptovault.urls") == "cryptovault.urls"


def test_bots_is_a_leaf():
    """The Binance-compatible API sits on top: it may use accounts, markets, orders and
    the plumbing, and no app depends on it."""
    graph = import_graph()
    assert set(graph.get("bots", {})) <= {"accounts", "markets", "orders", PROJECT}
    assert [app for app, edges in graph.items() if "bots" in edges] == []
