"""The import rules of docs/ARCHITECTURE.md ("Rooms and what each may import"), checked on the source.

Read with ``ast``, not by importing, so a rule breaks here even if nothing runs the offending
code. Three rules:

1. A pure core does not load trio, sockets, TLS, the network room or the daemon: neither by its
   own imports nor through what those load (packages' ``__init__`` included, as Python runs them).
2. The CLI and the client library do not reach into a daemon's insides: of ``p2pfs.node.daemon``
   only its entry point ``serve`` (what ``p2pfs daemon`` runs), of the replication room only its
   wire messages.
3. No import cycle between modules of ``p2pfs``, nor between its rooms (``p2pfs.membership``,
   ``p2pfs.sim``, ``p2pfs.ring``, ...: a room that imports another may not be imported back by
   it). Module-level imports only: imports inside functions and under ``if TYPE_CHECKING`` do
   not run at import time and are left out.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "p2pfs"

# Modules (fnmatch patterns) that hold protocol logic and must stay sans-IO. Replication's
# pure cores are matched by name, so cores split out of the service later are covered too.
PURE_CORES = (
    "p2pfs.errors",
    "p2pfs.ids",
    "p2pfs.clock",
    "p2pfs.membership.state",
    "p2pfs.membership.view",
    "p2pfs.membership.probes",
    "p2pfs.membership.suspicion",
    "p2pfs.membership.awareness",
    "p2pfs.membership.broadcast",
    "p2pfs.membership.messages",
    "p2pfs.membership.config",
    "p2pfs.membership.records",
    "p2pfs.claims",
    "p2pfs.access",
    "p2pfs.ring",
    "p2pfs.wire",
    "p2pfs.wire.*",
    "p2pfs.storage.chunker",
    "p2pfs.storage.manifest",
    "p2pfs.storage.hlc",
    "p2pfs.storage.naming",
    "p2pfs.replication.placement",
    "p2pfs.replication.fields",
    "p2pfs.replication.healing",
    "p2pfs.replication.*decision*",
    "p2pfs.replication.quorum*",
)
# The stream multiplexer's state machine and its credit windows: pure themselves, though
# their package (net) is not, so only their own imports are checked.
PURE_IN_IMPURE_PACKAGES = ("p2pfs.net.mux", "p2pfs.net.flow")
# What a pure core may not load, directly or not (a name and everything under it).
IMPURE = ("trio", "socket", "ssl", "p2pfs.net", "p2pfs.node")

# The thin shells over the library, and what of the product's insides they may not import.
SHELLS = ("p2pfs.cli", "p2pfs.cli.*", "p2pfs.client", "p2pfs.client.*")
SHELL_ALLOWED_REPLICATION = ("p2pfs.replication", "p2pfs.replication.messages", "p2pfs.replication.client_messages")
SHELL_FORBIDDEN = ("p2pfs.node.daemon", "p2pfs.replication")
# Names a shell may take from a forbidden module: the daemon's one entry point.
SHELL_ENTRY_POINTS = {"p2pfs.node.daemon": frozenset({"serve"})}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


MODULES = find_modules()


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module, *, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements; with ``module_level``, only those run when the module is imported."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not module_level:
                    found.extend(n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                if not module_level:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)  # a class body runs at import time
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    block = getattr(node, field, None)
                    if isinstance(block, list):
                        visit([n for n in block if isinstance(n, ast.stmt)]
                              + [s for h in block if isinstance(h, ast.ExceptHandler) for s in h.body])

    visit(tree.body)
    return found


def imports_of(name: str, *, module_level: bool = True) -> set[str]:
    """Modules ``name`` imports: p2pfs modules resolved exactly (``from pkg import mod`` is
    ``pkg.mod``), others by their top-level name."""
    return {target for target, _ in imported_names(name, module_level=module_level)}


def imported_names(name: str, *, module_level: bool = True) -> set[tuple[str, str]]:
    """``(module, name taken from it)`` for each import of ``name``; ``"*"`` for a whole module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if is_package(name) else name.rpartition(".")[0]
    targets: set[tuple[str, str]] = set()
    for node in _import_nodes(tree, module_level=module_level):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.add((_resolve(alias.name), "*"))
            continue
        if node.level:
            base_parts = package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            targets.add((candidate, "*") if candidate in MODULES else (_resolve(base), alias.name))
    return {(target, what) for target, what in targets if target != name}


def _resolve(dotted: str) -> str:
    """A p2pfs module as named; any other import by its top-level package."""
    if dotted.split(".")[0] != "p2pfs":
        return dotted.split(".")[0]
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted


def parents(name: str) -> list[str]:
    """Packages Python runs before ``name``: ``p2pfs``, ``p2pfs.membership``, ..."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


def loaded_by(name: str) -> dict[str, str]:
    """Everything importing ``name`` loads, each with the module that imports it first found."""
    seen: dict[str, str] = {}
    stack = [name]
    while stack:
        current = stack.pop()
        for target in sorted(imports_of(current) | set(parents(current))):
            if target not in seen and target != name:
                seen[target] = current
                if target in MODULES:
                    stack.append(target)
    return seen


def chain(name: str, target: str, loaded: dict[str, str]) -> str:
    steps = [target]
    while steps[-1] != name and steps[-1] in loaded:
        steps.append(loaded[steps[-1]])
    return " <- ".join(steps)


def matching(patterns: tuple[str, ...]) -> list[str]:
    return sorted(m for m in MODULES if any(fnmatch.fnmatchcase(m, p) for p in patterns))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or with a self-loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(edges) + 100))
    try:
        for v in sorted(edges):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def module_graph() -> dict[str, set[str]]:
    return {name: {t for t in imports_of(name) if t in MODULES} for name in MODULES}


def room_of(name: str) -> str:
    """``p2pfs.membership.state`` -> ``p2pfs.membership``; ``p2pfs.ring`` -> itself."""
    return ".".join(name.split(".")[:2])


def room_graph() -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {}
    for name, targets in module_graph().items():
        if name == "p2pfs":
            continue
        rooms.setdefault(room_of(name), set()).update(
            room_of(t) for t in targets if t != "p2pfs" and room_of(t) != room_of(name)
        )
    return rooms


# -- the rules -------------------------------------------------------------------


@pytest.mark.parametrize("core", matching(PURE_CORES))
def test_a_pure_core_loads_no_io(core):
    loaded = loaded_by(core)
    bad = sorted(chain(core, target, loaded) for target in loaded if under(target, IMPURE))
    assert bad == [], f"{core} loads I/O: " + "; ".join(bad)


@pytest.mark.parametrize("core", PURE_IN_IMPURE_PACKAGES)
def test_the_multiplexer_imports_no_io_itself(core):
    bad = sorted(target for target, _ in imported_names(core) if under(target, ("trio", "socket", "ssl")))
    assert bad == [], f"{core} imports I/O: {bad}"


@pytest.mark.parametrize("shell", matching(SHELLS))
def test_cli_and_client_stay_out_of_the_daemon(shell):
    # Every import in the file counts, inside functions too: reaching in late is still reaching in.
    bad = sorted(
        f"{target}.{what}" if what != "*" else target
        for target, what in imported_names(shell, module_level=False)
        if under(target, SHELL_FORBIDDEN) and target not in SHELL_ALLOWED_REPLICATION
        and what not in SHELL_ENTRY_POINTS.get(target, ())
    )
    assert bad == [], f"{shell} imports the daemon's insides: {bad}"


def test_no_import_cycles_between_modules():
    found = cycles(module_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_cycles_between_rooms():
    found = cycles(room_graph())
    assert found == [], "rooms importing each other: " + "; ".join(" <-> ".join(c) for c in found)


# -- the checker itself: each rule must be able to fail ------------------------------


def test_the_rules_find_what_they_look_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert room_of("p2pfs.membership.state") == "p2pfs.membership"
    assert room_of("p2pfs.ring") == "p2pfs.ring"
    assert "p2pfs.membership" in room_graph()["p2pfs.sim"]
    assert matching(PURE_CORES), "no pure core matched: the patterns are stale"
    assert "p2pfs.membership.state" in matching(PURE_CORES)
    assert matching(SHELLS), "neither the CLI nor the client matched: the patterns are stale"
    # The driver loads trio; its package's lazy names must not pull it into the core.
    assert "trio" in loaded_by("p2pfs.membership.driver")
    assert "p2pfs.membership.driver" not in loaded_by("p2pfs.membership.state")
    # Relative and package imports resolve to modules.
    assert "p2pfs.membership.config" in imports_of("p2pfs.membership.state")
    assert "p2pfs.sim.network" in imports_of("p2pfs.sim.membership")


def test_function_level_and_type_checking_imports_are_not_module_level():
    tree = ast.parse(
        "import a\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import b\n"
        "def f():\n    import c\n"
        "try:\n    import d\nexcept ImportError:\n    import e\n"
    )
    names = {alias.name for node in _import_nodes(tree, module_level=True) for alias in node.names}
    assert names == {"a", "TYPE_CHECKING", "d", "e"}
    names = {alias.name for node in _import_nodes(tree, module_level=False) for alias in node.names}
    assert names == {"a", "TYPE_CHECKING", "b", "c", "d", "e"}
