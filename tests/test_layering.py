"""The architecture, checked: the Sans-I/O core does no I/O, each role imports only the roles
below it, and no modules import each other (in a cycle of any length).

Imports are read from the source with ``ast``, nothing is imported: an import inside a
function or under ``if TYPE_CHECKING:`` counts too (it is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "backend.protocol"
PROTOCOL_DIR = ROOT / "backend" / "protocol"
MODULES = sorted(PROTOCOL_DIR.rglob("*.py"))
TOP_LEVEL = ("backend", "simulator", "haproxy")

# What each role may import of the project (itself always). The roles are the folders; the
# most specific prefix of a module's name decides.
ALLOWED: dict[str, tuple[str, ...]] = {
    "backend.protocol": (),
    "backend.logs": (),
    "backend.lifecycle": (),
    "backend.bus": ("backend.protocol", "backend.devstack.process"),  # exporter: http_get
    "backend.shard": ("backend.protocol", "backend.bus", "backend.logs", "backend.lifecycle"),
    "backend.client": ("backend.protocol",),
    "backend.operator": ("backend.protocol", "backend.bus", "backend.logs", "backend.lifecycle"),
    "backend.devstack": (
        "backend.protocol", "backend.bus", "backend.logs", "backend.lifecycle", "backend.shard",
        "backend.operator", "backend.client", "haproxy",
    ),
    "backend.tools": (
        "backend.protocol", "backend.bus", "backend.logs", "backend.lifecycle", "backend.shard",
        "backend.devstack", "haproxy",
    ),
    "backend.cli": ("backend",),
    "backend": (),  # the package's own __init__
    # Drivers of the core and clients of the backend, never its services' insides:
    "haproxy": ("backend.protocol", "backend.devstack.process"),
    "simulator": (
        "backend.protocol",
        "backend.bus",  # the alert stream's layout (the audit) and device tokens
        "backend.devstack",  # the local stack a run embeds
        "backend.client",  # scenario operators use the API as people do
        "backend.tools.check",  # verdicts are aligned as ``fleet check`` prints them
    ),
}  # fmt: skip


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in TOP_LEVEL:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULE_PATHS = project_modules()

FORBIDDEN_MODULES = frozenset(
    {"asyncio", "gevent", "socket", "selectors", "threading", "time", "trio"}
)
FORBIDDEN_PACKAGES = ("backend.shard", "simulator", "nats")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROTOCOL_DIR.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, absolute, with ``from X import y`` also as ``X.y``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if not is_package:
                    package = package[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
            in {"__import__", "import_module"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def forbidden(names: set[str]) -> set[str]:
    def bad(name: str) -> bool:
        top = name.partition(".")[0]
        return top in FORBIDDEN_MODULES or any(
            name == package or name.startswith(f"{package}.") for package in FORBIDDEN_PACKAGES
        )

    return {name for name in names if bad(name)}


def test_the_package_is_found() -> None:
    names = {path.name for path in MODULES}
    assert {"__init__.py", "envelope.py", "messages.py", "session.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_does_no_io(path: Path) -> None:
    names = imported_names(
        path.read_text(), module_name(path), is_package=path.name == "__init__.py"
    )
    assert forbidden(names) == set()


# The checker itself must see each way of importing.
@pytest.mark.parametrize(
    ("source", "culprit"),
    [
        ("import asyncio", "asyncio"),
        ("import time as clock", "time"),
        ("from time import monotonic", "time"),
        ("import asyncio.events", "asyncio.events"),
        ("from socket import socket", "socket"),
        ("import selectors, threading", "threading"),
        ("import gevent.monkey", "gevent.monkey"),
        ("import trio", "trio"),
        ("import nats", "nats"),
        ("from nats.aio.client import Client", "nats.aio.client"),
        ("from backend.shard import connection", "backend.shard"),
        ("from backend import shard", "backend.shard"),
        ("from backend.shard.server import Shard", "backend.shard.server"),
        ("import simulator.fleet", "simulator.fleet"),
        ("from ..shard import server", "backend.shard"),
        ("from .. import shard", "backend.shard"),
        ("def f():\n    import asyncio", "asyncio"),
        ("if TYPE_CHECKING:\n    from backend.shard import Shard", "backend.shard"),
        ("importlib.import_module('asyncio')", "asyncio"),
        ("__import__('socket')", "socket"),
    ],
)
def test_checker_catches(source: str, culprit: str) -> None:
    assert culprit in forbidden(imported_names(source, "backend.protocol.session"))


@pytest.mark.parametrize(
    "source",
    [
        "import msgpack",
        "from dataclasses import dataclass",
        "from . import envelope",
        "from backend.protocol import messages",
        "import timeit",
        "import socketserver_like",
        "import natsort",
        "from backend import shards_config",
    ],
)
def test_checker_allows(source: str) -> None:
    assert forbidden(imported_names(source, "backend.protocol.session")) == set()


# --- roles -----------------------------------------------------------------------------------


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(f"{prefix}.")


def role_of(module: str) -> str:
    return max((role for role in ALLOWED if within(module, role)), key=len)


def dependencies(module: str) -> set[str]:
    """The project's modules that ``module`` imports (``from X import y``: X.y if it is a
    module, else X)."""
    path = MODULE_PATHS[module]
    names = imported_names(path.read_text(), module, is_package=path.name == "__init__.py")
    found = {name for name in names if name in MODULE_PATHS}
    # "from backend.bus import subjects" names backend.bus and backend.bus.subjects: the
    # package counts only if nothing below it was named.
    return {name for name in found if not any(other.startswith(f"{name}.") for other in found)}


def role_violations(module: str, imports: set[str]) -> set[str]:
    role = role_of(module)
    allowed = (role, *ALLOWED[role])
    return {name for name in imports if not any(within(name, ok) for ok in allowed)}


def test_every_module_has_a_role() -> None:
    assert {"backend.protocol.channel", "backend.shard.server", "simulator.gateway"} <= set(
        MODULE_PATHS
    )
    assert all(role_of(module) for module in MODULE_PATHS)


@pytest.mark.parametrize("module", sorted(MODULE_PATHS))
def test_module_imports_only_the_roles_below_its_own(module: str) -> None:
    assert role_violations(module, dependencies(module)) == set()


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("simulator.gateway", "import backend.shard"),
        ("simulator.gateway", "from backend.shard.config import ShardConfig"),
        ("simulator.user", "from backend.operator import api"),
        ("haproxy.config", "from backend.shard import ShardConfig"),
        ("backend.protocol.session", "from backend.bus import subjects"),
        ("backend.shard.server", "from backend.operator.fleetstate import FleetState"),
        ("backend.operator.api", "from backend.shard.server import Shard"),
    ],
)
def test_role_check_catches(module: str, source: str) -> None:
    names = imported_names(source, module)
    assert role_violations(module, {name for name in names if name in MODULE_PATHS})


# --- cycles ----------------------------------------------------------------------------------


def import_graph() -> dict[str, set[str]]:
    return {module: dependencies(module) - {module} for module in MODULE_PATHS}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            cycle = _cycle_from(start, graph, done)
            if cycle is not None:
                return cycle
    return None


def _cycle_from(start: str, graph: dict[str, set[str]], done: set[str]) -> list[str] | None:
    path: list[str] = []
    on_path: set[str] = set()
    stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
    path.append(start)
    on_path.add(start)
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            path.pop()
            on_path.discard(node)
            done.add(node)
        elif child in on_path:
            return [*path[path.index(child) :], child]
        elif child not in done:
            stack.append((child, iter(sorted(graph.get(child, ())))))
            path.append(child)
            on_path.add(child)
    return None


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) is None


def test_cycle_finder_sees_a_long_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
