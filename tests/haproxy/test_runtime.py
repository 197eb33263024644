"""HAProxy's runtime API against a real HAProxy (its shards need not run: server states are
HAProxy's own)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy import runtime
from haproxy.config import HaproxyConfig
from tests.support import make_config, running_haproxy

pytestmark = pytest.mark.integration  # every test here runs real servers

SOURCES = ["127.0.0.2", "127.0.0.3"]


@pytest.fixture
def config(tmp_path: Path) -> Iterator[HaproxyConfig]:
    config = make_config(tmp_path, shard_count=2, source_addresses=SOURCES)
    with running_haproxy(config, tmp_path):
        yield config


def admin_states(config: HaproxyConfig) -> dict[str, int]:
    """srv_admin_state per server (0: ready; 8: drain, set from the runtime API)."""
    answer = runtime.command(config.admin_socket, "show servers state shards")
    rows = [line.split() for line in answer.splitlines()[2:] if line]
    return {row[3]: int(row[6]) for row in rows}


def test_server_names_lists_every_line(config: HaproxyConfig) -> None:
    assert runtime.server_names(config.admin_socket) == [
        "shard-a_1", "shard-a_2", "shard-b_1", "shard-b_2",
    ]  # fmt: skip


def test_draining_a_shard_sets_all_its_lines_and_only_those(config: HaproxyConfig) -> None:
    assert runtime.set_shard_state(config.admin_socket, "shard-a", "drain") == 2
    assert admin_states(config) == {"shard-a_1": 8, "shard-a_2": 8, "shard-b_1": 0, "shard-b_2": 0}
    runtime.set_shard_state(config.admin_socket, "shard-a", "ready")
    assert set(admin_states(config).values()) == {0}


def test_an_unknown_shard_is_refused(config: HaproxyConfig) -> None:
    with pytest.raises(runtime.RuntimeApiError, match="no server line for 'shard-z'"):
        runtime.set_shard_state(config.admin_socket, "shard-z", "drain")


def test_an_unknown_backend_is_refused(config: HaproxyConfig) -> None:
    with pytest.raises(runtime.RuntimeApiError, match="has no backend 'nope'"):
        runtime.server_names(config.admin_socket, "nope")


def test_an_unknown_state_is_refused_before_asking(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="state must be one of ready, drain, maint, not 'off'"):
        runtime.set_shard_state(tmp_path / "no.sock", "shard-a", "off")


def test_a_missing_socket_names_it(tmp_path: Path) -> None:
    with pytest.raises(runtime.RuntimeApiError, match=re.escape(str(tmp_path / "no.sock"))):
        runtime.command(tmp_path / "no.sock", "show info")


@pytest.mark.parametrize(
    ("shard", "lines"),
    [
        ("shard-a", ["shard-a", "shard-a_1", "shard-a_12"]),
        ("shard-a_1", ["shard-a_1", "shard-a_1_1"]),  # a shard named with an underscore
        ("shard", []),
    ],
)
def test_lines_of_matches_whole_names(shard: str, lines: list[str]) -> None:
    names = ["shard-a", "shard-a_1", "shard-a_12", "shard-ab_1", "shard-b_1", "shard-a_1_1"]
    assert runtime.lines_of(shard, names) == lines
