"""The Sans-I/O core stays Sans-I/O: no event loop, sockets, threads, clocks or drivers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "backend.protocol"
PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "backend" / "protocol"
MODULES = sorted(PROTOCOL_DIR.rglob("*.py"))

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
