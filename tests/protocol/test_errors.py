"""The project's one exception tree: every exception class defined under backend/, simulator/
and haproxy/ derives from ``FleetError``, no two share a name, and the tree drawn in
``backend.protocol.errors``' docstring is the code's (each class, its module, its parent).

The classes are collected in a child process: importing the simulator patches with gevent
(Locust), which this process must not.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.protocol import errors

REPO = Path(__file__).resolve().parents[2]
# The simulator first: Locust patches with gevent on import, best before the rest is loaded.
PACKAGES = ("simulator", "backend", "haproxy")
DRAWN_LINE = re.compile(r"(?P<indent> *)\* (?P<name>\w+)(?: \((?P<module>[\w.]+)\))?")
INDENT = 4

# Prints, as JSON, every exception class each module of the packages named in argv defines.
COLLECT = """
import importlib, json, pkgutil, sys
from backend.protocol.errors import FleetError

found = []
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    names = [top, *(info.name for info in pkgutil.walk_packages(package.__path__, top + "."))]
    for name in names:
        for value in list(vars(importlib.import_module(name)).values()):
            if not (isinstance(value, type) and issubclass(value, BaseException)):
                continue
            if value.__module__ != name:
                continue  # imported, not defined here
            parents = [base.__name__ for base in value.__bases__ if issubclass(base, FleetError)]
            found.append({
                "name": value.__name__,
                "module": name,
                "fleet_error": issubclass(value, FleetError),
                "parent": parents[0] if parents else None,
            })
print(json.dumps(found))
"""


@dataclass(frozen=True)
class Defined:
    name: str
    module: str
    fleet_error: bool
    parent: str | None
    """Its first base that is a FleetError (None for the root and for strays)."""


@dataclass(frozen=True)
class Drawn:
    module: str
    parent: str | None


@pytest.fixture(scope="module")
def defined() -> list[Defined]:
    result = subprocess.run(
        [sys.executable, "-c", COLLECT, *PACKAGES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [Defined(**found) for found in json.loads(result.stdout)]


def drawn_tree(doc: str) -> dict[str, Drawn]:
    """The tree a docstring draws: ``* Name`` lines indented by depth, ``(module)`` after a
    name when it is not in the module of its parent (the root's: ``backend.protocol.errors``)."""
    tree: dict[str, Drawn] = {}
    ancestors: list[tuple[str, str]] = []  # (name, module) from the root down
    for line in doc.splitlines():
        match = DRAWN_LINE.fullmatch(line.split(", ")[0])
        if match is None:
            continue
        depth, misaligned = divmod(len(match["indent"]), INDENT)
        assert not misaligned, f"misdrawn: {line!r}"
        assert depth <= len(ancestors), f"misdrawn: {line!r}"
        del ancestors[depth:]
        parent, inherited = ancestors[-1] if ancestors else (None, errors.__name__)
        module = match["module"] or inherited
        assert match["name"] not in tree, f"{match['name']} drawn twice"
        tree[match["name"]] = Drawn(module, parent)
        ancestors.append((match["name"], module))
    return tree


@pytest.mark.integration
def test_every_exception_derives_from_the_root(defined: list[Defined]) -> None:
    assert len(defined) > 40  # the collection did find the tree
    strays = [f"{found.module}.{found.name}" for found in defined if not found.fleet_error]
    assert strays == []


@pytest.mark.integration
def test_no_two_exceptions_share_a_name(defined: list[Defined]) -> None:
    counts = Counter(found.name for found in defined)
    assert [name for name, count in counts.items() if count > 1] == []


@pytest.mark.integration
def test_the_root_docstring_draws_the_whole_tree(defined: list[Defined]) -> None:
    assert errors.__doc__ is not None
    tree = drawn_tree(errors.__doc__)
    assert tree == {found.name: Drawn(found.module, found.parent) for found in defined}


def test_the_drawing_is_read_as_drawn() -> None:
    doc = """
        * Root
            * Child (pkg.other)
                * Grandchild
            * Sibling, also a RuntimeError
        - not a line of the tree
    """
    assert drawn_tree(textwrap.dedent(doc)) == {
        "Root": Drawn(errors.__name__, None),
        "Child": Drawn("pkg.other", "Root"),
        "Grandchild": Drawn("pkg.other", "Child"),
        "Sibling": Drawn(errors.__name__, "Root"),
    }
