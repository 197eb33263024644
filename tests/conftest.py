"""Shared fixtures: a real nats-server per test, in-process shards on port 0."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nats
import pytest
import uvloop
from nats.aio.client import Client as NATS

from backend.devstack.natsserver import NatsCluster, NatsServer
from backend.operator.api import OperatorApi
from backend.operator.config import FleetConfig
from backend.operator.fleetstate import FleetState
from backend.shard import Shard, ShardConfig
from tests.operator.support import OPERATOR_TOKENS, ApiFactory, FleetStateFactory
from tests.support import JWT_SECRET, ShardFactory

C = TypeVar("C")
S = TypeVar("S")


# Fixtures that start real servers; a test using one (or one built on it) is an integration
# test. Tests that start servers themselves are marked in their modules.
PROCESS_FIXTURES = frozenset({"nats_server", "nats_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Async tests run on uvloop, as the shard does in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP (and WebSocket) client, as an operator uses."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed nodes with JetStream (for replicated streams and losing a node)."""
    with NatsCluster(tmp_path / "nats-cluster") as cluster:
        yield cluster


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def service_factory(service: Callable[[C], S], config: C) -> Callable[..., S]:
    """The one way tests make a service: ``async with start(**overrides) as it:`` runs
    ``service`` on ``config`` with ``overrides`` replaced, started and always stopped."""

    def start(**overrides: Any) -> S:
        return service(dataclasses.replace(config, **overrides))

    return start


@pytest.fixture
def start_shard(nats_server: NatsServer) -> ShardFactory:
    """``async with start_shard(shard_id="a", ping_interval=1) as shard:`` on a free port."""
    config = ShardConfig(
        port=0, nats_urls=(nats_server.url,), jwt_secret=JWT_SECRET, drain_timeout=5.0
    )
    return service_factory(Shard, config)


@pytest.fixture
def fleet_config(nats_server: NatsServer) -> FleetConfig:
    """Operator side settings for tests: short fetches so that stops are quick."""
    return FleetConfig(
        port=0,
        nats_urls=(nats_server.url,),
        operator_tokens=OPERATOR_TOKENS,
        fetch_timeout=0.5,
        drain_timeout=5.0,
    )


@pytest.fixture
def start_fleet_state(fleet_config: FleetConfig) -> FleetStateFactory:
    """``async with start_fleet_state() as state:`` a fleet state instance."""
    return service_factory(FleetState, fleet_config)


@pytest.fixture
def start_api(fleet_config: FleetConfig) -> ApiFactory:
    """``async with start_api() as api:`` the operator API (with a fleet state) on a free port."""
    return service_factory(OperatorApi, fleet_config)
